"""Reading videos with PyAV: probe, cut into keyframe-aligned segments, stream a segment's frames.

A video is handled segment by segment: `probe` reads the packets' timestamps (decoding only the
first frame), `segments` cuts the frames into keyframe-aligned ranges, `frames` decodes exactly
one range from its keyframe; video_write.py encodes and joins them. No step holds more than one
batch of frames. Every failure a file can cause is a `VideoError` with a one-line reason.
No torch here.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from pipeline.errors import ImageError, VideoError, describe
from pipeline.imaging.codec import MAX_PIXELS, SEGMENT_SECONDS, check_pixels

# FFmpeg demuxers taken as video containers: FFmpeg also opens images, playlists and raw streams,
# which are not videos to stylize (and a playlist would read other files).
CONTAINERS = frozenset({"mov", "mp4", "matroska", "webm", "avi"})

Source = str | os.PathLike | bytes | io.BufferedIOBase  # a path, the file's bytes, or a seekable file

# Video streams that are pictures, not the video: cover art (MP4's covr, MKV's image attachments) and thumbnail tracks.
STILLS = av.stream.Disposition.attached_pic | av.stream.Disposition.timed_thumbnails


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
def open_input(source: Source, max_pixels: int = MAX_PIXELS) -> Iterator[av.container.InputContainer]:
    """An input container, or VideoError. Bytes are read through BytesIO, and a file object (`storage.streams.
    open_seekable`) from its start: PyAV needs a seekable file. FFmpeg decodes a first frame while opening,
    to learn the stream's format: one over `max_pixels` is left undecoded (the stream keeps its header's size)."""
    if _size(source) == 0:
        raise VideoError("empty file (0 bytes)")
    if isinstance(source, io.IOBase):
        source.seek(0)
    try:
        if isinstance(source, bytes | bytearray):
            source = io.BytesIO(source)
        options = {"max_pixels": str(max_pixels)}  # the decoders' limit, for the frames they decode in opening
        container = av.open(source if isinstance(source, io.IOBase) else os.fspath(source), options=options)
    except Exception as exc:
        raise VideoError(f"not a video FFmpeg can read ({_why(exc)})") from None
    try:
        if not CONTAINERS.intersection(container.format.name.split(",")):
            raise VideoError(f"not a video container ({container.format.name}): expected mp4, mov, mkv, webm or avi")
        yield container
    finally:
        container.close()


def _size(source: Source) -> int | None:
    """The file's size in bytes (None: unknown, for av.open to say why)."""
    if isinstance(source, bytes | bytearray):
        return len(source)
    if isinstance(source, io.IOBase):
        return source.seek(0, io.SEEK_END)
    try:
        return os.path.getsize(source)
    except OSError:
        return None


def best_video_stream(streams: Sequence[av.VideoStream]) -> av.VideoStream | None:
    """The stream that is the video: never a still (`STILLS`); of the rest the highest `_claim`, the first
    of equals. FFmpeg's av_find_best_stream (TorchCodec's choice) ranks in this order, counting the frames
    it reads on opening where this reads the header's count. None: no video."""
    return max((s for s in streams if not s.disposition & STILLS), key=_claim, default=None)


def _claim(stream: av.VideoStream) -> tuple[bool, int, int]:
    """How strongly a stream claims to be the video: marked default, then its frames (0 where the
    container does not say), then its pixels (0 where FFmpeg has no decoder to say)."""
    pixels = stream.width * stream.height if stream.codec_context is not None else 0
    return bool(stream.disposition & av.stream.Disposition.default), stream.frames, pixels


def video_stream(container: av.container.InputContainer) -> av.VideoStream:
    """The container's video stream (`best_video_stream`), or VideoError."""
    stream = best_video_stream(container.streams.video)
    if stream is None:
        stills = " (only a still picture: cover art or a thumbnail)" if container.streams.video else ""
        raise VideoError(f"no video stream in this file{stills}")
    return stream


def _video_stream(container: av.container.InputContainer) -> av.VideoStream:
    """The video stream, set up for decoding. Each frame says its own size, whatever the stream's header
    says: FFmpeg is told to allocate none much larger than the stream's, which --max-pixels checked."""
    stream = video_stream(container)
    if stream.codec_context is None:
        raise VideoError("unsupported video codec: FFmpeg has no decoder for it")
    stream.thread_type = "AUTO"  # frame and slice threads: decoding keeps up with the model
    stream.codec_context.options = {"max_pixels": str(_decoder_limit(stream.width, stream.height))}
    return stream


def _decoder_limit(width: int, height: int) -> int:
    """FFmpeg's `max_pixels` for a width x height stream: what its decoders check is more than the frame (rows
    aligned to 64 pixels, coded sizes, and MPEG-4's scratch buffers: 53,760 pixels at 64 x 48, some 285 a column)."""
    return 2 * (width + 64) * (height + 64) + (1 << 20)


def _decoding_error(exc: Exception, size: tuple[int, int]) -> str:
    """' (FFmpeg's words)' of a frame that did not decode; EINVAL is also what FFmpeg says of a frame its
    size limit (`_video_stream`) refuses."""
    larger = f", or a frame larger than the video's {size[0]}x{size[1]}" if isinstance(exc, av.ArgumentError) else ""
    return f"{larger} ({_why(exc)})"


def _check_size(frame: av.VideoFrame, size: tuple[int, int], index: int) -> None:
    """Refuse a frame of another size than the stream's: --max-pixels checked the stream's."""
    if (frame.width, frame.height) != size:
        raise VideoError(
            f"frame {index} is {frame.width}x{frame.height}, the video {size[0]}x{size[1]}: "
            "videos whose frames change size are not supported"
        )


def probe(source: Source, max_pixels: int = MAX_PIXELS) -> VideoInfo:
    """Read a video's packets (not its frames) and decode its first frame; VideoError if it is not usable."""
    with open_input(source, max_pixels) as container:
        stream = _video_stream(container)
        size = stream.width, stream.height  # before decoding, which may change them
        try:
            check_pixels(*size, max_pixels)
        except ImageError as exc:
            raise VideoError(str(exc)) from None
        packets = _timestamps(container, stream)
        if not packets:
            raise VideoError("the video stream has no frames")
        rotation = _first_frame_rotation(container, stream, size)
        audio = len(container.streams.audio)
        codec = stream.codec_context.name
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


def _first_frame_rotation(container: av.container.InputContainer, stream: av.VideoStream, size: tuple[int, int]) -> int:
    """Decode the first frame (the codec works, the data is there, the size is the stream's) and read its
    display rotation."""
    try:
        container.seek(0, stream=stream)
        frame = next(container.decode(stream), None)
    except Exception as exc:
        codec = stream.codec_context.name
        raise VideoError(f"corrupt or undecodable {codec} video{_decoding_error(exc, size)}") from None
    if frame is None:
        raise VideoError(f"undecodable {stream.codec_context.name} video: no frame decodes")
    _check_size(frame, size, 0)
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


def lead_in(info: VideoInfo, segment: Segment, count: int) -> Segment | None:
    """The `count` frames before `segment` (fewer at the video's start, None at frame 0), decodable from the
    keyframe at or before them: what a segment stylized on its own warms its temporal smoothing up on,
    so that segments stylized apart join as if stylized in one run."""
    start = max(0, segment.start - count)
    if start == segment.start:
        return None
    before = [i for i, k in enumerate(info.keyframes) if k <= start]
    seek = info.seeks[before[-1]] if before else min(info.seeks)
    pts = info.pts[start : segment.start]
    return Segment(segment.index, start, segment.start, seek, pts[0], info.pts[segment.start], pts)


def frames(source: Source, segment: Segment, max_pixels: int = MAX_PIXELS) -> Iterator[np.ndarray]:
    """The segment's frames as (H, W, 3) uint8 RGB, decoded from its keyframe; VideoError if any is missing
    or not the stream's size."""
    with open_input(source, max_pixels) as container:
        stream = _video_stream(container)
        size = stream.width, stream.height
        count = 0
        try:
            for frame in _decode_from(container, stream, segment):
                _check_size(frame, size, segment.start + count)
                yield frame.to_ndarray(format="rgb24")
                count += 1
                if count == segment.frames:
                    return
        except VideoError:
            raise
        except Exception as exc:
            raise VideoError(f"corrupt video at frame {segment.start + count}{_decoding_error(exc, size)}") from None
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
