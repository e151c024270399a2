"""Videos in the batch job (`adain stylize`) on the session's Ray: images and videos in one run, a long
clip cut into segments stylized apart and joined, a bad-video corpus, re-runs that skip, parts a failed
run left reused, and the same on the S3 server.

The model (random test weights) erases the frame indices the clips draw, so frame order is checked
against `adain transfer`, which stylizes the same clip in one pass: each output frame is closest to the
reference frame of its own index, and with smoothing warmed up on each segment's lead-in the segments
join as the one pass does.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.cli import main
from pipeline.config import VideoSpec
from pipeline.imaging import video
from pipeline.imaging.video_device import DeviceDecodeUnavailable, device_frames
from pipeline.storage.streams import open_seekable
from tests import images, videos
from tests.conftest import S3Server, WeightFiles
from tests.faults import FaultProxy

SMOOTHING = "0.5"
FLAGS = ["--content-size", "32", "--style-size", "32", "--device", "cpu", "--segment-seconds", "0.5"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("job-clips")
    return {
        "long": videos.make_clip(root / "long.mp4", frames=40, gop=6, audio=True),  # 3 segments of 0.5 s
        "turned": videos.make_clip(root / "turned.mov", frames=12, rotation=90),
        "variable": videos.make_clip(root / "variable.mkv", frames=16, variable=True),  # 1, 2, 1, ... ticks apart
    }


@pytest.fixture
def style(tmp_path: Path) -> Path:
    return images.write(tmp_path / "styles" / "wave.png", images.encoded(32, 32, "PNG", seed=3))


def stylize(weights: WeightFiles, input: str, style: Path, output: str, *extra: str) -> int:
    weight_flags = ["--encoder", str(weights.vgg), "--decoder", str(weights.decoder)]
    return main(["stylize", "--input", input, "--style", str(style), "--output", output, *weight_flags, *FLAGS, *extra])


def manifest(out: Path) -> list[dict[str, Any]]:
    """The latest run's manifest rows."""
    parts = sorted((out / "_manifest").glob("*.parquet"))
    rows = pa.concat_tables([pq.read_table(p) for p in parts]).to_pylist()
    latest = max(r["run_id"] for r in rows)
    return [r for r in rows if r["run_id"] == latest]


def reference(weights: WeightFiles, clip: Path, style: Path, out: Path) -> list[np.ndarray]:
    """The clip stylized by `adain transfer`, in one pass: its frames."""
    weight_flags = ["--encoder", str(weights.vgg), "--decoder", str(weights.decoder), "--device", "cpu"]
    sizes = ["--content-size", "32", "--style-size", "32", "--temporal-smoothing", SMOOTHING]
    assert main(["transfer", str(clip), str(style), "-o", str(out), *weight_flags, *sizes]) == 0
    return videos.decoded(out)[0]


def check_video(output: Path | bytes, source: Path, like: list[np.ndarray] | None = None) -> None:
    """Every frame once, in order, at the source's timing, with its audio packets and rotation."""
    data = output if isinstance(output, bytes) else output.read_bytes()
    src, dst = video.probe(source), video.probe(data)
    frame = 1 / float(src.fps)
    assert dst.frames == src.frames and abs(dst.duration - src.duration) < frame
    assert abs(float(dst.fps) - float(src.fps)) * src.duration < 1 and dst.rotation == src.rotation
    assert videos.packets(data) == videos.packets(source)  # audio copied packet for packet (or none)
    if like is not None:
        assert isinstance(output, Path)
        frames = videos.decoded(output)[0]
        distance = np.array([[np.abs(a.astype(float) - b).mean() for b in like] for a in frames])
        assert list(distance.argmin(axis=1)) == list(range(src.frames))  # each frame is its own index's
        assert distance.diagonal().max() < 3  # and the segments join as one pass


def seconds(path: Path) -> list[float]:
    """Each frame's presentation time, from the first frame's."""
    info = video.probe(path)
    return [float((pts - info.pts[0]) * info.time_base) for pts in info.pts]


def test_images_videos_and_bad_videos_in_one_run(
    ray_cluster: str, weights: WeightFiles, clips: dict[str, Path], style: Path, tmp_path: Path
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    images.write(src / "a.jpg", images.encoded(48, 40, seed=1))
    images.write(src / "b.png", images.encoded(40, 48, "PNG", seed=2))
    images.write(src / "clips" / "long.mp4", clips["long"].read_bytes())
    images.write(src / "turned.mov", clips["turned"].read_bytes())
    images.write(src / "variable.mkv", clips["variable"].read_bytes())
    (tmp_path / "bad").mkdir()
    for name, data in videos.bad_videos(tmp_path / "bad").items():
        images.write(src / "bad" / f"{name.replace(' ', '-')}.mp4", data)
    assert stylize(weights, str(src), style, str(out), "--temporal-smoothing", SMOOTHING, "--format", "png") == 3

    rows = {r["rel_path"]: r for r in manifest(out)}
    assert len(rows) == 5 + len(videos.BAD_VIDEO_ERRORS)
    for name, words in videos.BAD_VIDEO_ERRORS.items():
        row = rows[f"bad/{name.replace(' ', '-')}.mp4"]
        assert row["status"] == "error" and words in row["error"] and "\n" not in row["error"], (name, row)
    for name in ("a.jpg", "b.png"):
        assert rows[name]["status"] == "ok" and rows[name]["frames"] is None
        assert Path(rows[name]["output_uri"]) == out / "wave" / f"{name[0]}.png"
    long, turned = rows["clips/long.mp4"], rows["turned.mov"]
    assert long["output_uri"] == str(out / "wave" / "clips" / "long.mp4") and long["status"] == "ok"
    segments = len(video.segments(video.probe(clips["long"]), 0.5))
    assert segments >= 3 and (long["frames"], long["fps"], long["segments"]) == (40, 24, segments)
    assert (long["width"], long["height"]) == (42, 32)
    assert long["duration"] == pytest.approx(40 / 24) and 0 < long["flicker"] < 10
    assert (turned["status"], turned["frames"], turned["segments"]) == ("ok", 12, 1)
    one_pass = reference(weights, clips["long"], style, tmp_path / "ref.mp4")
    check_video(out / "wave" / "clips" / "long.mp4", clips["long"], one_pass)
    check_video(out / "wave" / "turned.mp4", clips["turned"])
    assert (rows["variable.mkv"]["status"], rows["variable.mkv"]["frames"]) == ("ok", 16)
    # A variable rate: the nominal rate is the container's say, the frames' own times are what is kept.
    made, source = video.probe(out / "wave" / "variable.mp4"), video.probe(clips["variable"])
    assert made.frames == source.frames and abs(made.duration - source.duration) < 1 / 24
    assert np.allclose(seconds(out / "wave" / "variable.mp4"), seconds(clips["variable"]), atol=1e-3)  # each frame's
    assert not [p for p in (out / "_parts").rglob("*") if p.is_file()]  # joined parts are deleted


def test_a_list_files_videos_take_the_videos_pipeline(
    ray_cluster: str, weights: WeightFiles, clips: dict[str, Path], style: Path, tmp_path: Path
) -> None:
    """A list file naming an image, a video twice and a video whose stem meets the image's: the
    image through the images' pipeline, each video once through the videos' (not an error row)."""
    src, out, listing = tmp_path / "in", tmp_path / "out", tmp_path / "inputs.txt"
    images.write(src / "a.png", images.encoded(40, 32, "PNG", seed=1))
    images.write(src / "clip.mov", clips["turned"].read_bytes())
    images.write(src / "a.mkv", clips["variable"].read_bytes())
    listing.write_text("\n".join(str(src / name) for name in ("a.png", "clip.mov", "a.mkv", "clip.mov")))
    assert stylize(weights, str(listing), style, str(out), "--input-root", str(src)) == 0
    rows = {Path(row["input_uri"]).name: row for row in manifest(out)}
    assert sorted(rows) == ["a.mkv", "a.png", "clip.mov"] and {r["status"] for r in rows.values()} == {"ok"}
    outputs = {name: Path(row["output_uri"]) for name, row in rows.items()}
    suffixes = {name: path.suffix for name, path in outputs.items()}
    assert suffixes == {"a.png": ".jpg", "clip.mov": ".mp4", "a.mkv": ".mp4"}
    assert outputs["a.png"].stem != outputs["a.mkv"].stem  # the stems met: named apart, as the whole list names them
    check_video(outputs["clip.mov"], clips["turned"])
    assert video.probe(outputs["a.mkv"]).frames == video.probe(clips["variable"]).frames


def test_parts_of_an_unfinished_video_are_reused_unless_the_video_changed(
    ray_cluster: str, weights: WeightFiles, clips: dict[str, Path], style: Path, tmp_path: Path
) -> None:
    """A run whose join could not write the output (here: a folder in its place; a run killed before the
    join leaves the same) leaves its parts; the next run joins them without stylizing a frame again,
    unless another video was saved under the name meanwhile, however alike (the same frames, keyframes
    and timing): that one is stylized anew. The run after skips both."""
    src, out = tmp_path / "in", tmp_path / "out"
    before = videos.make_clip(tmp_path / "before.mp4", frames=24, gop=6)
    after = videos.make_clip(tmp_path / "after.mp4", frames=24, gop=6, first=100)
    images.write(src / "long.mp4", clips["long"].read_bytes())
    images.write(src / "clip.mp4", before.read_bytes())
    targets = [out / "wave" / name for name in ("long.mp4", "clip.mp4")]
    for target in targets:
        target.mkdir(parents=True)
    assert stylize(weights, str(src), style, str(out)) == 3
    rows = {Path(r["input_uri"]).name: r for r in manifest(out)}
    assert all(r["status"] == "error" and "joining the segments" in r["error"] for r in rows.values()), rows
    cut = video.segments(video.probe(clips["long"]), 0.5)
    parts = sorted(p.name for p in (out / "_parts" / "wave" / "long.mp4").iterdir())
    assert parts == sorted(f"{s.index:05d}-{s.start}-{s.end}.mp4{e}" for s in cut for e in ("", ".json"))

    for target in targets:
        target.rmdir()
    images.write(src / "clip.mp4", after.read_bytes())
    assert stylize(weights, str(src), style, str(out)) == 0
    rows = {Path(r["input_uri"]).name: r for r in manifest(out)}
    assert rows["long.mp4"]["status"] == "ok" and rows["long.mp4"]["model_ms"] == 0  # every part reused
    assert rows["clip.mp4"]["status"] == "ok" and rows["clip.mp4"]["model_ms"] > 0  # not joined from the old parts
    check_video(out / "wave" / "long.mp4", clips["long"])
    check_video(out / "wave" / "clip.mp4", after, reference(weights, after, style, tmp_path / "ref.mp4"))
    assert not list((out / "_parts").rglob("*.mp4"))

    made = [target.stat().st_mtime_ns for target in targets]
    assert stylize(weights, str(src), style, str(out)) == 0
    assert {(r["status"], r["output_uri"]) for r in manifest(out)} == {("skipped", str(t)) for t in targets}
    assert [target.stat().st_mtime_ns for target in targets] == made


def test_videos_on_s3(
    ray_cluster: str, weights: WeightFiles, clips: dict[str, Path], style: Path, s3_server: S3Server, bucket: str
) -> None:
    s3 = s3_server.client()
    s3.put_object(Bucket=bucket, Key="in/clips/long.mp4", Body=clips["long"].read_bytes())
    # Decoding on the device where TorchCodec can (with FFmpeg's libraries), else with PyAV: the same video.
    flags = ("--temporal-smoothing", SMOOTHING, "--video-decoder", "device")
    assert stylize(weights, f"s3://{bucket}/in", style, f"s3://{bucket}/out", *flags) == 0
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/").get("Contents", [])}
    assert "out/wave/clips/long.mp4" in keys
    assert not [k for k in keys if k.startswith("out/_parts/")]
    data = s3.get_object(Bucket=bucket, Key="out/wave/clips/long.mp4")["Body"].read()
    check_video(data, clips["long"])
    listing = s3.list_objects_v2(Bucket=bucket, Prefix="out/_manifest/")["Contents"]
    parts = [io.BytesIO(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()) for o in listing]
    rows = pa.concat_tables([pq.read_table(part) for part in parts]).to_pylist()
    video_row = next(r for r in rows if r["rel_path"] == "clips/long.mp4")
    assert (video_row["status"], video_row["frames"], video_row["segments"]) == ("ok", 40, 3)


def test_video_flags_are_checked_at_the_edge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["stylize", "--input", str(tmp_path), "--style", str(tmp_path), "--output", str(tmp_path / "out")]
    for flags, words in (
        (["--temporal-smoothing", "1"], "--temporal-smoothing 1.0: must be at least 0 and below 1"),
        (["--video-quality", "52"], "--video-quality 52: x264's CRF"),
        (["--segment-seconds", "0"], "--segment-seconds 0.0: must be positive"),
    ):
        assert main([*base, *flags]) == 2
        assert words in capsys.readouterr().err
    assert VideoSpec(0.9).lead_in == 66 and VideoSpec(0.0).lead_in == 0 and VideoSpec(0.999).lead_in == 300


def test_s3_videos_are_read_in_blocks_not_whole(
    clips: dict[str, Path], s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyAV reads through `open_seekable`: a ranged GET per block of the file as it seeks (here the small
    clip fits one block: a GET per container opened), never a GET per PyAV read, nor the file in memory."""
    s3_server.client().put_object(Bucket=bucket, Key="v.mp4", Body=clips["long"].read_bytes())
    with FaultProxy(s3_server.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        with open_seekable(f"s3://{bucket}/v.mp4") as reader:
            info = video.probe(reader)
            segment = video.segments(info, 0.5)[1]
            frames = [videos.read_index(f) for f in video.frames(reader, segment)]
        gets = proxy.count("GET", f"/{bucket}/v.mp4")
    assert frames == list(range(segment.start, segment.end)) and info.frames == 40
    assert gets <= 4, proxy.seen("GET")


def test_device_decoding_gives_the_segments_frames_or_says_why_not(clips: dict[str, Path]) -> None:
    """TorchCodec's frames of a segment are PyAV's (the drawn indices); where it cannot decode (no FFmpeg
    libraries, as on the CI machines), it says so before any frame, for the job to decode with PyAV."""
    segment = video.segments(video.probe(clips["long"]), 0.5)[1]
    try:
        batches = list(device_frames(str(clips["long"]), segment, torch.device("cpu"), 4))
    except DeviceDecodeUnavailable as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    frames = [f.permute(1, 2, 0).numpy() for batch in batches for f in batch]
    assert [videos.read_index(f) for f in frames] == list(range(segment.start, segment.end))
