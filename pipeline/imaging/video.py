"""Video files with PyAV: probe, cut into keyframe-aligned segments, stream frames, encode, join.

A video is handled segment by segment: `probe` reads the packets' timestamps (decoding only the
first frame), `segments` cuts the frames into keyframe-aligned ranges, `frames` decodes exactly
one range from its keyframe, `SegmentWriter` encodes stylized frames to H.264 at the source's own
timestamps, and `join` remuxes the segments in order with the source's audio packets copied.
No step holds more than one batch of frames. Every failure a file can cause is a `VideoError`
with a one-line reason. No torch here.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.errors import ImageError, VideoError, describe
from pipeline.imaging.codec import MAX_PIXELS, VIDEO_EXTENSIONS, check_pixels
from pipeline.imaging.codec import VIDEO_QUALITY as DEFAULT_QUALITY

SEGMENT_SECONDS = 10.0
# FFmpeg demuxers taken as video containers: FFmpeg also opens images, playlists and raw streams,
# which are not videos to stylize (and a playlist would read other files).
CONTAINERS = frozenset({"mov", "mp4", "matroska", "webm", "avi"})

Source = str | os.PathLike | bytes


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


@dataclass(frozen=True)
class VideoInfo:
    """What a video is, from its packets: frames in presentation order, their timestamps, keyframes."""

    width: int
    height: int
    fps: Fraction  # the stream's average rate, or frames / duration
    frames: int
    duration: float  # seconds, first frame's start to last frame's end
    rotation: int  # display rotation, counter-clockwise degrees, from FFmpeg's display matrix
    codec: str
    audio_streams: int
    time_base: Fraction
    pts: tuple[int, ...]  # every frame's timestamp in time_base, presentation order
    keyframes: tuple[int, ...]  # indices of the frames a decoder can start at
    seeks: tuple[int, ...]  # per keyframe: the timestamp to seek to (its decoding timestamp)

    @property
    def has_audio(self) -> bool:
        return self.audio_streams > 0

    @property
    def keyframe_times(self) -> tuple[float, ...]:
        return tuple(float((self.pts[k] - self.pts[0]) * self.time_base) for k in self.keyframes)


@dataclass(frozen=True)
class Segment:
    """Frames [start, end) of a video, decodable on their own from the keyframe at `seek`."""

    index: int
    start: int
    end: int
    seek: int  # decoding timestamp of the segment's keyframe (stream time base)
    first_pts: int  # presentation timestamp of frame `start`
    end_pts: int | None  # of frame `end`, None for the last segment
    pts: tuple[int, ...]  # the segment's frames' timestamps, for the encoder

    @property
    def frames(self) -> int:
        return self.end - self.start


def _why(exc: BaseException) -> str:
    """FFmpeg's own words for a failure ("Invalid data found when processing input"), without its errno."""
    return exc.strerror if isinstance(exc, av.FFmpegError) and exc.strerror else describe(exc)


@contextlib.contextmanager
def _opened(source: Source) -> Iterator[av.container.InputContainer]:
    """An input container (bytes from S3 through BytesIO: PyAV needs a seekable file), or VideoError."""
    if isinstance(source, bytes | bytearray) and not source:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(io.BytesIO(source) if isinstance(source, bytes | bytearray) else os.fspath(source))
    except Exception as exc:
        raise VideoError(f"not a video FFmpeg can read ({_why(exc)})") from None
    try:
        if not CONTAINERS.intersection(container.format.name.split(",")):
            raise VideoError(f"not a video container ({container.format.name}): expected mp4, mov, mkv, webm or avi")
        yield container
    finally:
        container.close()


def _video_stream(container: av.container.InputContainer) -> av.VideoStream:
    if not container.streams.video:
        raise VideoError("no video stream in this file")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise VideoError("unsupported video codec: FFmpeg has no decoder for it")
    stream.thread_type = "AUTO"  # frame and slice threads: decoding keeps up with the model
    return stream


def probe(source: Source, max_pixels: int = MAX_PIXELS) -> VideoInfo:
    """Read a video's packets (not its frames) and decode its first frame; VideoError if it is not usable."""
    with _opened(source) as container:
        stream = _video_stream(container)
        try:
            check_pixels(stream.width, stream.height, max_pixels)
        except ImageError as exc:
            raise VideoError(str(exc)) from None
        packets = _timestamps(container, stream)
        if not packets:
            raise VideoError("the video stream has no frames")
        rotation = _first_frame_rotation(container, stream)
        audio = len(container.streams.audio)
        codec, size = stream.codec_context.name, (stream.width, stream.height)
        time_base, rate = stream.time_base, stream.average_rate
    order = sorted(range(len(packets)), key=lambda i: packets[i][0])
    pts = tuple(packets[i][0] for i in order)
    if len(set(pts)) != len(pts):
        raise VideoError("frames with the same timestamp: the file's timing is broken")
    keyframes = tuple(n for n, i in enumerate(order) if packets[i][2])
    if not keyframes:
        raise VideoError("no keyframe in the video stream: nothing can be decoded")
    seeks = tuple(packets[order[k]][3] for k in keyframes)
    end = max(p + d for p, d, _, _ in packets)
    duration = float((end - pts[0]) * time_base)
    fps = Fraction(rate) if rate else Fraction(len(pts)) / ((end - pts[0]) * time_base)
    return VideoInfo(*size, fps, len(pts), duration, rotation, codec, audio, time_base, pts, keyframes, seeks)


def _timestamps(container: av.container.InputContainer, stream: av.VideoStream) -> list[tuple[int, int, bool, int]]:
    """(pts, duration, keyframe, dts) of every frame's packet, in file order."""
    rows = []
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:  # the demuxer's flush packet; frames an edit list drops
                continue
            pts = packet.pts if packet.pts is not None else packet.dts
            if pts is None:
                raise VideoError("video packets without timestamps: remux the file (e.g. to mp4)")
            dts = packet.dts if packet.dts is not None else pts
            rows.append((pts, packet.duration or 1, packet.is_keyframe, dts))
    except av.FFmpegError as exc:
        raise VideoError(f"corrupt or truncated video ({_why(exc)})") from None
    return rows


def _first_frame_rotation(container: av.container.InputContainer, stream: av.VideoStream) -> int:
    """Decode the first frame (the codec works, the data is there) and read its display rotation."""
    try:
        container.seek(0, stream=stream)
        frame = next(container.decode(stream), None)
    except Exception as exc:
        raise VideoError(f"corrupt or undecodable {stream.codec_context.name} video ({_why(exc)})") from None
    if frame is None:
        raise VideoError(f"undecodable {stream.codec_context.name} video: no frame decodes")
    return round(frame.rotation) % 360


def segments(info: VideoInfo, seconds: float = SEGMENT_SECONDS) -> list[Segment]:
    """Keyframe-aligned ranges of about `seconds` each (at least one keyframe interval) covering every frame once."""
    starts = [0]
    for k in info.keyframes:
        if k > 0 and (info.pts[k] - info.pts[starts[-1]]) * info.time_base >= seconds:
            starts.append(k)
    seek_of = dict(zip(info.keyframes, info.seeks, strict=True))
    first_seek = min(info.seeks)  # a first frame that is not a keyframe decodes from the file's start
    parts = []
    for n, (start, end) in enumerate(zip(starts, [*starts[1:], info.frames], strict=True)):
        end_pts = info.pts[end] if end < info.frames else None
        seek = seek_of.get(start, first_seek)
        parts.append(Segment(n, start, end, seek, info.pts[start], end_pts, info.pts[start:end]))
    return parts


def frames(source: Source, segment: Segment) -> Iterator[np.ndarray]:
    """The segment's frames as (H, W, 3) uint8 RGB, decoded from its keyframe; VideoError if any is missing."""
    with _opened(source) as container:
        stream = _video_stream(container)
        count = 0
        try:
            for frame in _decode_from(container, stream, segment):
                yield frame.to_ndarray(format="rgb24")
                count += 1
                if count == segment.frames:
                    return
        except VideoError:
            raise
        except Exception as exc:
            raise VideoError(f"corrupt video at frame {segment.start + count} ({_why(exc)})") from None
    raise VideoError(
        f"truncated or corrupt video: frames {segment.start + count}-{segment.end - 1} "
        f"(segment {segment.index}) do not decode"
    )


def _in_segment(frames: Iterable[av.VideoFrame], segment: Segment) -> Iterator[av.VideoFrame]:
    """Frames with pts in [first_pts, end_pts): earlier ones (before the keyframe, or an open GOP's
    leading frames) belong to the segment before."""
    for frame in frames:
        if frame.pts is None or frame.pts < segment.first_pts:
            continue
        if segment.end_pts is not None and frame.pts >= segment.end_pts:
            return
        yield frame


def _decode_from(container: av.container.InputContainer, stream: av.VideoStream, segment: Segment) -> Iterator:
    container.seek(segment.seek, stream=stream, backward=True)
    decoded = container.decode(stream)
    first = next(decoded, None)
    if first is not None and first.pts is not None and first.pts > segment.first_pts:
        # The demuxer's index landed past the keyframe: decode from the file's start instead.
        container.seek(0, stream=stream, backward=True)
        yield from _in_segment(container.decode(stream), segment)
        return
    if first is not None:
        yield from _in_segment([first], segment)
    yield from _in_segment(decoded, segment)


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
            stream = container.streams.video[0]
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
            video = out.add_stream_from_template(first.streams.video[0])
        source_container = stack.enter_context(_opened(source))
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
                for inputs in batched(frames(source, segment), batch):
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
