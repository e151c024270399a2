"""Real video clips for the tests, made with PyAV: moving patterns with each frame's index drawn in.

The index is a bar code of BITS blocks along the top of the frame, black for 0 and white for 1,
each block large enough to survive lossy coding (and an identity or inverting "style"), so a test
reads back which source frame every output frame is. Clips are tiny (64 x 48, a few dozen frames).
"""

from __future__ import annotations

import io
import random
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests import images

WIDTH, HEIGHT = 64, 48
BITS = 8  # indices up to 255
BLOCK = WIDTH // BITS  # each bit a BLOCK x BLOCK square
SAMPLE_RATE = 8000
AUDIO_FRAME = 1024  # AAC's samples per frame


def frame_image(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """(H, W, 3) uint8: a diagonal gradient moving with `index`, the index as a bar code on top."""
    y, x = np.mgrid[0:height, 0:width]
    pattern = ((x + y + 3 * index) * 4 % 256).astype(np.uint8)
    img = np.stack([pattern, 255 - pattern, np.full_like(pattern, 96)], axis=-1)
    for bit in range(BITS):
        img[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 255 if index >> bit & 1 else 0
    return img


def read_index(img: np.ndarray) -> int:
    """The index drawn by `frame_image`, read from the centres of the blocks."""
    half = BLOCK // 2
    centres = img[half - 1 : half + 2, :, :].mean(axis=(0, 2))
    return sum(1 << bit for bit in range(BITS) if centres[bit * BLOCK + half] > 128)


def make_clip(
    path: Path,
    frames: int = 12,
    fps: int = 24,
    audio: bool = False,
    rotation: int = 0,
    variable: bool = False,
    gop: int = 12,
    size: tuple[int, int] = (WIDTH, HEIGHT),
    faststart: bool = False,
    codec: str = "libx264",
    first: int = 0,
    thumbnail: bool = False,
) -> Path:
    """Write a clip of `frames` frames (H.264 unless `codec` says otherwise, the container from the
    path's suffix); `variable` spaces the frames 1, 2, 1, 2, ... ticks of 1/fps apart (a variable
    frame rate); `audio` adds an AAC track as long as the video; `rotation` sets the display rotation
    (counter-clockwise degrees); `gop` frames between keyframes; `first` the first frame's drawn index
    (another picture, the same frames and timing); `thumbnail` puts a one-frame 16 x 16 video stream before
    the clip's, as a thumbnail track is."""
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        still = _still_stream(out, codec) if thumbnail else None
        video = out.add_stream(codec, rate=fps, options={"g": str(gop), "keyint_min": str(gop)})
        video.width, video.height, video.pix_fmt = *size, "yuv420p"
        video.codec_context.time_base = Fraction(1, fps * 2 if variable else fps)
        if rotation:
            video.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if audio else None
        if still is not None:
            _write_still(out, still)
        pts = 0
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_image(first + i, *size), format="rgb24")
            frame.pts = pts
            pts += (1 + i % 2) * 2 if variable else 1  # in 1/(2 fps): ticks of 1/fps, 2/fps, ...
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if sound is not None:
            seconds = pts * video.codec_context.time_base
            _write_tone(out, sound, int(seconds * SAMPLE_RATE))
    return path


def _write_tone(out: av.container.OutputContainer, stream: av.AudioStream, samples: int) -> None:
    t = np.arange(samples) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for start in range(0, samples, AUDIO_FRAME):
        chunk = tone[None, start : start + AUDIO_FRAME]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, start
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


def _still_stream(out: av.container.OutputContainer, codec: str) -> av.VideoStream:
    """A 16 x 16 video stream for one still frame (`_write_still`); added, as every stream, before any is written."""
    stream = out.add_stream(codec, rate=24)
    stream.width = stream.height = 16
    stream.pix_fmt = "rgb24" if codec == "png" else "yuv420p"
    return stream


def _write_still(out: av.container.OutputContainer, stream: av.VideoStream) -> None:
    frame = av.VideoFrame.from_ndarray(np.full((stream.height, stream.width, 3), 128, np.uint8), format="rgb24")
    frame.pts = 0
    out.mux(stream.encode(frame))
    out.mux(stream.encode())


def audio_only(path: Path, cover: bool = False) -> Path:
    """An .mp4 with an AAC track and no video stream; `cover` adds cover art (a PNG, which FFmpeg reads
    as a one-frame video stream marked attached_pic)."""
    with av.open(str(path), "w") as out:
        picture = _still_stream(out, "png") if cover else None
        sound = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        if picture is not None:
            picture.disposition = av.stream.Disposition.attached_pic
            _write_still(out, picture)
        _write_tone(out, sound, SAMPLE_RATE // 2)
    return path


def no_frames(path: Path) -> Path:
    """An .mkv with a video stream that has no frames at all, and an audio track that has some."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        _write_tone(out, out.add_stream("aac", rate=SAMPLE_RATE, layout="mono"), SAMPLE_RATE // 2)
    return path


def packets(path: Path | bytes, kind: str = "audio") -> list[tuple[int | None, bytes]]:
    """(pts, payload) of every packet of the streams of `kind`, in file order."""
    source = io.BytesIO(path) if isinstance(path, bytes) else str(path)
    with av.open(source) as container:
        streams = [s for s in container.streams if s.type == kind]
        if not streams:  # demux([]) would give every stream's packets
            return []
        return [(p.pts, bytes(p)) for p in container.demux(streams) if p.size]


def decoded(path: Path) -> tuple[list[np.ndarray], list[float]]:
    """Every frame of the video stream as RGB, and its time in seconds."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in frames], [float(f.time) for f in frames]


def png_frames(path: Path, frames: list[bytes], size: tuple[int, int] = (WIDTH, HEIGHT)) -> Path:
    """A MOV of PNG files as its frames, one a second, its header saying `size`: each frame has a size of its own."""
    with av.open(str(path), "w", format="mov") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = *size, "rgb24"
        stream.time_base = Fraction(1, 1000)
        for i, data in enumerate(frames):
            packet = av.Packet(data)
            packet.stream, packet.time_base, packet.is_keyframe = stream, stream.time_base, True
            packet.pts = packet.dts = i * 1000
            packet.duration = 1000
            out.mux(packet)
    return path


BAD_VIDEO_ERRORS = {  # bad_videos' names -> words of the one-line error each gives
    "truncated": "not a video FFmpeg can read",
    "truncated-indexed": "truncated or corrupt video",
    "no video stream": "no video stream",
    "only cover art": "no video stream",
    "zero frames": "no frames",
    "unsupported codec": "unsupported video codec",
    "corrupt mid-file": "corrupt",
    "not a video": "not a video container (jpeg_pipe)",
    "empty": "empty file",
    "a larger frame": "corrupt video at frame 1, or a frame larger than the video's 64x48",
    "a smaller frame": "frame 1 is 32x24, the video 64x48: videos whose frames change size are not supported",
}


def bad_videos(root: Path) -> dict[str, bytes]:
    """Files with a video's name that are not usable videos, by what is wrong with them (made in `root`)."""
    clip = make_clip(root / "clip.mp4", frames=24, gop=6).read_bytes()
    fast = make_clip(root / "fast.mp4", frames=24, gop=6, faststart=True).read_bytes()
    corrupt = bytearray(fast)
    corrupt[len(fast) // 2 : len(fast) // 2 + 400] = random.Random(1).randbytes(400)
    frame = images.encoded(WIDTH, HEIGHT, "PNG")
    return {
        "truncated": clip[: len(clip) // 2],  # the index (moov) is at the end: gone
        "truncated-indexed": fast[: len(fast) * 2 // 3],  # index first: frames missing
        "no video stream": audio_only(root / "audio.mp4").read_bytes(),
        "only cover art": audio_only(root / "covered.mp4", cover=True).read_bytes(),
        "zero frames": no_frames(root / "empty.mkv").read_bytes(),
        "unsupported codec": clip.replace(b"avc1", b"xv99"),  # a sample entry FFmpeg has no decoder for
        "corrupt mid-file": bytes(corrupt),
        "not a video": images.encoded(),
        "empty": b"",
        "a larger frame": png_frames(root / "larger.mov", [frame, images.zeros_png(2000, 2000), frame]).read_bytes(),
        "a smaller frame": png_frames(root / "smaller.mov", [frame, images.encoded(32, 24, "PNG"), frame]).read_bytes(),
    }
