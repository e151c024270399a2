"""Writing videos with PyAV: encode stylized frames to H.264 segments, join them with the source's audio.

`SegmentWriter` encodes one segment's frames at the source's own timestamps, `join` remuxes the
segments in order with the source's audio packets copied (not re-encoded), and `stylize_video`
runs the two with video.py's reading on one machine. No torch here.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import av
import numpy as np

from pipeline.errors import VideoError
from pipeline.imaging.codec import MAX_PIXELS
from pipeline.imaging.codec import VIDEO_QUALITY as DEFAULT_QUALITY
from pipeline.imaging.video import (
    SEGMENT_SECONDS,
    Source,
    VideoInfo,
    frames,
    open_input,
    probe,
    segments,
    video_stream,
)


class SegmentWriter:
    """Encode RGB frames to H.264 yuv420p at CRF `quality`, each at its source timestamp, rotation kept.

    No B-frames: every packet's decoding timestamp is then its presentation timestamp, so segments
    joined end to end keep timestamps increasing."""

    def __init__(self, path: str | os.PathLike, info: VideoInfo, quality: int = DEFAULT_QUALITY) -> None:
        if not 0 <= quality <= 51:
            raise VideoError(f"video quality {quality}: x264's CRF goes from 0 (lossless) to 51")
        self.info, self.quality = info, quality
        self.container = av.open(os.fspath(path), "w", format="mp4")
        self.stream: av.VideoStream | None = None

    def _open_stream(self, width: int, height: int) -> av.VideoStream:
        stream = self.container.add_stream("libx264", rate=self.info.fps, options={"crf": str(self.quality)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = self.info.time_base
        stream.codec_context.max_b_frames = 0
        if self.info.rotation:
            stream.set_display_rotation(self.info.rotation)
        return stream

    def write(self, image: np.ndarray, pts: int) -> None:
        # 4:2:0 chroma needs even sides: an odd last row or column is dropped.
        image = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]
        if self.stream is None:
            self.stream = self._open_stream(image.shape[1], image.shape[0])
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts, frame.time_base = pts, self.info.time_base
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        if self.stream is not None:
            self.container.mux(self.stream.encode())
        self.container.close()

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _video_packets(paths: Sequence[str | os.PathLike], out: av.VideoStream) -> Iterator[tuple[float, av.Packet]]:
    """The segments' video packets in order, as (time, packet) to merge with the audio by time."""
    for path in paths:
        with av.open(os.fspath(path)) as container:
            stream = video_stream(container)
            for packet in container.demux(stream):
                if packet.size:
                    time = float(packet.dts * stream.time_base)
                    packet.stream = out
                    yield time, packet


def _audio_packets(container: av.container.InputContainer, streams: dict) -> Iterator[tuple[float, av.Packet]]:
    for packet in container.demux(list(streams)):
        if packet.size and packet.dts is not None:
            time = float(packet.dts * packet.stream.time_base)
            packet.stream = streams[packet.stream]
            yield time, packet


def join(paths: Sequence[str | os.PathLike], source: Source, dest: str | os.PathLike) -> None:
    """Remux the segment files in order into the mp4 `dest`, with the source's audio streams copied as
    packets (not re-encoded), interleaved by time."""
    if not paths:
        raise VideoError("no segments to join")
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(av.open(os.fspath(dest), "w", format="mp4", options={"movflags": "+faststart"}))
        with av.open(os.fspath(paths[0])) as first:
            video = out.add_stream_from_template(video_stream(first))
        source_container = stack.enter_context(open_input(source))
        audio = {}
        for stream in source_container.streams.audio:
            try:
                audio[stream] = out.add_stream_from_template(stream)
            except ValueError as exc:
                raise VideoError(f"audio stream {stream.index} cannot be copied into an mp4 ({exc})") from None
        packets = _video_packets(paths, video)
        if audio:
            packets = heapq.merge(packets, _audio_packets(source_container, audio), key=lambda row: row[0])
        for _, packet in packets:
            out.mux(packet)


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Flicker:
    """`model.functional.flicker` streamed: mean absolute frame-to-frame change of the outputs over the
    inputs', summed batch by batch, the change across batch boundaries included. Numpy: no torch here."""

    def __init__(self) -> None:
        self.sums = [0.0, 0.0]  # inputs, outputs
        self.last: list[np.ndarray | None] = [None, None]

    def add(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> None:
        for side, batch in enumerate((inputs, outputs)):
            stack = np.stack([f.astype(np.float32) for f in batch])
            if self.last[side] is not None:
                stack = np.concatenate([self.last[side][None], stack])
            self.sums[side] += float(np.abs(np.diff(stack, axis=0)).mean(axis=(1, 2, 3)).sum())
            self.last[side] = stack[-1]

    @property
    def value(self) -> float | None:
        return self.sums[1] / self.sums[0] if self.sums[0] > 0 else None


def stylize_video(
    source: Source,
    dest: str | os.PathLike,
    stylize_frames: Callable[[list[np.ndarray]], list[np.ndarray]],
    quality: int = DEFAULT_QUALITY,
    segment_seconds: float = SEGMENT_SECONDS,
    batch: int = 8,
    max_pixels: int = MAX_PIXELS,
) -> dict:
    """The single-process path: every segment's frames through `stylize_frames` in batches, in order,
    encoded and joined into the mp4 `dest`, which appears only when complete. Returns the manifest fields."""
    info = probe(source, max_pixels)
    parts = segments(info, segment_seconds)
    flicker = Flicker()
    size = (0, 0)
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix=".adain-video-", dir=dest.parent) as tmp:
        files = [Path(tmp, f"segment-{s.index:05d}.mp4") for s in parts]
        for segment, path in zip(parts, files, strict=True):
            with SegmentWriter(path, info, quality) as writer:
                pts = iter(segment.pts)
                for inputs in batched(frames(source, segment, max_pixels), batch):
                    outputs = stylize_frames(inputs)
                    if len(outputs) != len(inputs):
                        raise ValueError(f"stylize_frames gave {len(outputs)} frames for {len(inputs)}")
                    for image in outputs:
                        writer.write(image, next(pts))
                    flicker.add(inputs, outputs)
                    size = outputs[0].shape[1] // 2 * 2, outputs[0].shape[0] // 2 * 2
        joined = Path(tmp, "joined.mp4")
        join(files, source, joined)
        os.replace(joined, dest)
    return {
        "frames": info.frames,
        "fps": float(info.fps),
        "duration": info.duration,
        "width": size[0],
        "height": size[1],
        "segments": len(parts),
        "flicker": flicker.value,
    }
