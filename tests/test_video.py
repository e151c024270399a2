"""Videos end to end on real clips made with PyAV: probing, segments, frame order, timing, audio, rotation,
a bad-video corpus, temporal smoothing, and `adain transfer` on a video, locally and on the S3 server.

Frame order is read back from the index each clip draws into its frames (tests/videos.py); where the
model stylizes (and so erases the index) the tests check counts, timing, audio and rotation instead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.errors import VideoError
from pipeline.imaging import video, video_write
from pipeline.model.functional import adain, adain_with, flicker, mean_std, smoothed_stats
from pipeline.model.loader import load_model
from tests import images, videos
from tests.conftest import S3Server, WeightFiles

SEGMENT = 0.5  # seconds: the long clip spans several segments

CLIPS: dict[str, dict] = {
    "audio": {"frames": 24, "audio": True},
    "rotated": {"frames": 12, "rotation": 90},
    "variable": {"frames": 16, "variable": True, "audio": True},
    "long": {"frames": 40, "gop": 6, "audio": True},
    "webm": {"frames": 12, "codec": "libvpx-vp9"},
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    suffix = {"webm": "webm"}
    return {name: videos.make_clip(root / f"{name}.{suffix.get(name, 'mp4')}", **kw) for name, kw in CLIPS.items()}


def invert(frames: list[np.ndarray]) -> list[np.ndarray]:
    """A "style" that keeps the drawn indices readable: 255 - pixels."""
    return [255 - f for f in frames]


def indices(path: Path, undo: Callable[[np.ndarray], np.ndarray] = lambda f: f) -> list[int]:
    return [videos.read_index(undo(f)) for f in videos.decoded(path)[0]]


# ---------------------------------------------------------------------------- probe, segments, frames


def test_probe_reads_timing_rotation_audio_and_keyframes(clips: dict[str, Path]) -> None:
    info = video.probe(clips["long"])
    assert (info.width, info.height, info.frames, info.fps) == (64, 48, 40, 24)
    assert info.duration == pytest.approx(40 / 24)
    assert (info.rotation, info.codec, info.has_audio) == (0, "h264", True)
    assert info.keyframes[0] == 0 and info.keyframe_times[1] == pytest.approx(0.25)
    assert video.probe(clips["rotated"].read_bytes()).rotation == 90
    variable = video.probe(clips["variable"])
    assert variable.frames == 16 and variable.duration == pytest.approx(24 / 24)  # ticks of 1, 2, 1, 2, ...


def test_segments_are_keyframe_aligned_and_cover_every_frame_once(clips: dict[str, Path]) -> None:
    source = clips["long"].read_bytes()
    info = video.probe(source)
    parts = video.segments(info, SEGMENT)
    assert len(parts) >= 3
    assert [p.start for p in parts] == [0, *[p.end for p in parts[:-1]]] and parts[-1].end == info.frames
    assert all(p.start in info.keyframes for p in parts)
    # Each segment decodes on its own (a fresh container, seeking to its keyframe) to exactly its frames.
    decoded = [[videos.read_index(f) for f in video.frames(source, p)] for p in parts]
    assert decoded == [list(range(p.start, p.end)) for p in parts]
    assert len(video.segments(info, 100.0)) == 1


# ---------------------------------------------------------------------------- stylize_video


@pytest.mark.parametrize("name", list(CLIPS))
def test_stylized_video_keeps_frames_timing_audio_rotation(clips: dict[str, Path], tmp_path: Path, name: str) -> None:
    source = clips[name]
    out = tmp_path / "out.mp4"
    row = video_write.stylize_video(source.read_bytes(), out, invert, quality=18, segment_seconds=SEGMENT, batch=5)
    src, dst = video.probe(source), video.probe(out)
    frame = 1 / float(src.fps)
    assert indices(out, lambda f: 255 - f) == list(range(src.frames))  # every frame once, in order
    assert dst.frames == src.frames == row["frames"]
    assert abs(dst.duration - src.duration) < frame and abs(row["duration"] - src.duration) < frame
    assert abs(float(dst.fps) - float(src.fps)) * src.duration < 1  # within one frame over the clip
    source_times, times = videos.decoded(source)[1], videos.decoded(out)[1]
    assert np.abs(np.array(times) - np.array(source_times)).max() < frame / 2
    assert dst.rotation == src.rotation
    assert videos.packets(out) == videos.packets(source)  # audio copied packet for packet (or none)
    assert (row["width"], row["height"]) == (64, 48) and row["segments"] == len(video.segments(src, SEGMENT))
    assert row["flicker"] == pytest.approx(1.0, abs=0.05)  # inverting changes frames exactly as much


def test_the_video_is_its_moving_stream_not_a_still_before_it(tmp_path: Path) -> None:
    """A one-frame 16 x 16 stream before the 12-frame clip (as a thumbnail track is): the clip is probed,
    decoded and stylized; a file whose only video stream is cover art has no video."""
    clip = videos.make_clip(tmp_path / "thumbnailed.mkv", frames=12, thumbnail=True)
    with av.open(str(clip)) as container:
        assert [(s.index, s.width) for s in container.streams.video] == [(0, 16), (1, 64)]
    info = video.probe(clip)
    assert (info.width, info.height, info.frames) == (64, 48, 12)
    row = video_write.stylize_video(clip, tmp_path / "out.mp4", invert, segment_seconds=SEGMENT)
    assert row["frames"] == 12 and indices(tmp_path / "out.mp4", lambda f: 255 - f) == list(range(12))
    with pytest.raises(VideoError, match=r"no video stream in this file \(only a still picture"):
        video.probe(videos.audio_only(tmp_path / "covered.mp4", cover=True))


def test_odd_sized_outputs_lose_their_last_row_and_column(clips: dict[str, Path], tmp_path: Path) -> None:
    row = video_write.stylize_video(clips["rotated"], tmp_path / "out.mp4", lambda fs: [f[:47, :63] for f in fs])
    assert (row["width"], row["height"]) == (62, 46) and video.probe(tmp_path / "out.mp4").width == 62


def test_bad_videos_are_one_line_errors(tmp_path: Path) -> None:
    for name, data in videos.bad_videos(tmp_path).items():
        out = tmp_path / f"{name}.mp4"
        with pytest.raises(VideoError) as caught:
            video_write.stylize_video(data, out, invert, segment_seconds=SEGMENT)
        assert videos.BAD_VIDEO_ERRORS[name] in str(caught.value) and "\n" not in str(caught.value), name
        assert not out.exists() and not list(tmp_path.glob(".adain-video-*")), name
    with pytest.raises(VideoError, match="over the limit of 1,000"):
        video.probe(tmp_path / "clip.mp4", max_pixels=1000)
    with pytest.raises(VideoError, match="CRF"):
        video_write.SegmentWriter(tmp_path / "x.mp4", video.probe(tmp_path / "clip.mp4"), quality=60)


def test_no_frame_is_decoded_larger_than_the_stream_says(tmp_path: Path) -> None:
    """Each PNG frame says its own size: a 2000 x 2000 first frame behind a 64 x 48 header is refused before
    FFmpeg allocates it (in opening, and in decoding), not decoded and then found over --max-pixels."""
    first = videos.png_frames(tmp_path / "first.mov", [images.zeros_png(2000, 2000), images.encoded(64, 48, "PNG")])
    with pytest.raises(VideoError, match="png video, or a frame larger than the video's 64x48"):
        video.probe(first, max_pixels=1_000_000)


# ---------------------------------------------------------------------------- temporal smoothing


def test_smoothed_stats_is_an_ema_and_off_at_zero() -> None:
    mean, std = torch.arange(4.0).view(4, 1, 1, 1), torch.ones(4, 1, 1, 1)
    assert smoothed_stats(mean, std, None, 0.0)[0] is mean
    smooth, _ = smoothed_stats(mean, std, None, 0.5)
    assert smooth.flatten().tolist() == [0.0, 0.5, 1.25, 2.125]
    carried, _ = smoothed_stats(mean[2:], std[2:], (smooth[1:2], std[:1]), 0.5)  # two batches = one
    assert carried.flatten().tolist() == smooth[2:].flatten().tolist()
    feat = torch.randn(2, 8, 5, 5)
    assert torch.equal(adain_with(feat, mean_std(feat), torch.zeros(1, 8, 1, 1), torch.ones(1, 8, 1, 1)),
                       adain(feat, torch.zeros(1, 8, 1, 1), torch.ones(1, 8, 1, 1)))  # fmt: skip
    frames = torch.rand(5, 3, 4, 4)
    assert flicker(frames, frames) == pytest.approx(1.0) and flicker(frames, frames / 2) == pytest.approx(0.5)


def blinking(frames: int = 12, seed: int = 0) -> torch.Tensor:
    """A still texture with small blocks switching on and off at random: each switch is a local change
    of the content that moves the whole frame's feature statistics, the cause of AdaIN's flicker."""
    rng = np.random.default_rng(seed)
    base = rng.random((96, 128, 3)).astype(np.float32) * 0.5 + 0.25
    clip = []
    for _ in range(frames):
        frame = base.copy()
        for k in range(6):
            if rng.random() < 0.5:
                frame[8 + 14 * k : 16 + 14 * k, 8 + 18 * k : 16 + 18 * k] = 1.0
        clip.append(frame)
    return torch.from_numpy(np.stack(clip)).permute(0, 3, 1, 2)


def test_temporal_smoothing_lowers_flicker(weights: WeightFiles) -> None:
    model = load_model(str(weights.vgg), str(weights.decoder), "cpu")
    style = model.style_stats(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    clip = blinking()
    figures = {}
    for s in (0.0, 0.5):
        previous, outputs = None, []
        for start in range(0, len(clip), 8):  # batch by batch, the statistics carried over
            out, previous = model.stylize_frames(clip[start : start + 8], style, smoothing=s, previous=previous)
            outputs.append(out)
        figures[s] = flicker(clip, torch.cat(outputs))
    assert figures[0.5] < figures[0.0]


def test_segments_stylized_apart_join_smoothly_after_a_lead_in(clips: dict[str, Path], weights: WeightFiles) -> None:
    """A segment stylized on its own, its smoothing warmed up on the frames before it (`lead_in`),
    gives the frames one continuous run gives: exponential smoothing forgets all but s ** lead-in."""
    model = load_model(str(weights.vgg), str(weights.decoder), "cpu")
    style = model.style_stats(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    source = clips["long"].read_bytes()
    info = video.probe(source)
    parts = video.segments(info, SEGMENT)

    def tensor(frames: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255

    whole, _ = model.stylize_frames(tensor(list(video.frames(source, video.segments(info, 100.0)[0]))), style, 1.0, 0.5)
    part = parts[1]
    lead = video.lead_in(info, part, 8)
    assert lead is not None and (lead.start, lead.end) == (part.start - 8, part.start)
    assert [videos.read_index(f) for f in video.frames(source, lead)] == list(range(lead.start, lead.end))
    previous = model.warm_up(tensor(list(video.frames(source, lead))), 0.5)
    apart, _ = model.stylize_frames(tensor(list(video.frames(source, part))), style, 1.0, 0.5, previous)
    cold, _ = model.stylize_frames(tensor(list(video.frames(source, part))), style, 1.0, 0.5)
    joined_error = (apart - whole[part.start : part.end]).abs().max()
    assert joined_error < 1e-3 < (cold - whole[part.start : part.end]).abs().max()
    assert video.lead_in(info, parts[0], 8) is None


# ---------------------------------------------------------------------------- adain transfer


def _transfer(weights: WeightFiles, *args: object) -> int:
    flags = ["--encoder", str(weights.vgg), "--decoder", str(weights.decoder), "--device", "cpu"]
    return main(["transfer", *map(str, args), *flags, "--content-size", "32", "--style-size", "32"])


def test_transfer_stylizes_a_video(clips: dict[str, Path], weights: WeightFiles, tmp_path: Path, capsys) -> None:
    style = images.write(tmp_path / "style.png", images.encoded(32, 32, "PNG", seed=3))
    out = tmp_path / "out.mp4"
    flags = ["--temporal-smoothing", "0.5", "--video-quality", "28", "--preserve-color", "luminance"]
    assert _transfer(weights, clips["long"], style, "-o", out, *flags) == 0
    src, dst = video.probe(clips["long"]), video.probe(out)
    assert (dst.frames, dst.fps, dst.width, dst.height) == (src.frames, src.fps, 42, 32)  # shorter side to 32
    assert abs(dst.duration - src.duration) < 1 / 24 and videos.packets(out) == videos.packets(clips["long"])
    assert "40 frames, 1 segment, flicker" in capsys.readouterr().out


def test_transfer_mixes_images_and_videos_and_reports_bad_videos(
    clips: dict[str, Path], weights: WeightFiles, tmp_path: Path, capsys
) -> None:
    content = tmp_path / "in"
    images.write(content / "photo.jpg", images.encoded())
    (content / "clips").mkdir()
    (content / "clips" / "turned.mov").write_bytes(clips["rotated"].read_bytes())
    (content / "broken.mp4").write_bytes(clips["audio"].read_bytes()[:2000])
    style = images.write(tmp_path / "style.png", images.encoded(32, 32, "PNG", seed=3))
    assert _transfer(weights, content, style, "-o", tmp_path / "out") == 3  # finished, with one failure
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.mp4: not a video FFmpeg can read" in err[0]
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.*"))
    assert written == ["clips/turned_stylized_style.mp4", "photo_stylized_style.jpg"]
    assert video.probe(tmp_path / "out/clips/turned_stylized_style.mp4").rotation == 90
    assert _transfer(weights, clips["audio"], style, "-o", tmp_path / "x.jpg") == 2
    assert _transfer(weights, clips["audio"], style, "-o", tmp_path / "x.mp4", "--temporal-smoothing", "1") == 2
    err = capsys.readouterr().err
    assert "a video is written as .mp4" in err and "--temporal-smoothing 1.0: must be at least 0 and below 1" in err


def test_transfer_refuses_a_fifo_named_as_a_video(weights: WeightFiles, tmp_path: Path, capsys) -> None:
    """PyAV opens a local video itself, and opening a FIFO waits for a writer: it is refused unopened, as
    the jobs refuse it, and named for what it is (it was "empty file (0 bytes)", its size to stat)."""
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    style = images.write(tmp_path / "style.png", images.encoded(32, 32, "PNG", seed=3))
    codes: list[int] = []
    run = threading.Thread(target=lambda: codes.append(_transfer(weights, fifo, style, "-o", tmp_path / "o.mp4")))
    run.start()
    run.join(60)
    if run.is_alive():  # a writer that closes at once: the reader sees the end, and the thread ends
        with open(fifo, "wb"):
            pass
        run.join()
    assert codes == [3], "transfer waited on the FIFO"  # never, so far: the thread is a guard
    assert "pipe.mp4: not a regular file" in capsys.readouterr().err


def test_transfer_reads_and_writes_videos_on_s3(
    clips: dict[str, Path], weights: WeightFiles, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    s3 = s3_server.client()
    s3.put_object(Bucket=bucket, Key="in/clip.mp4", Body=clips["long"].read_bytes())
    style = images.write(tmp_path / "style.png", images.encoded(32, 32, "PNG", seed=3))
    assert _transfer(weights, f"s3://{bucket}/in/clip.mp4", style, "-o", f"s3://{bucket}/out/clip.mp4") == 0
    data = s3.get_object(Bucket=bucket, Key="out/clip.mp4")["Body"].read()
    info = video.probe(data)
    assert info.frames == 40 and info.fps == 24 and videos.packets(data) == videos.packets(clips["long"])
