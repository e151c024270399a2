"""JPEGs decoded, resized and encoded on the model's device (--jpeg-codec model).

On a GPU this is TorchCodec's nvJPEG; here, on the CPU, the same code runs on TorchCodec's
libjpeg-turbo, which is what these tests check: the same sizes and (to within a grey level or two) the same
pixels as the Pillow path, the same errors for broken files, and the Pillow path for every
JPEG a plain decoder would get wrong (EXIF-rotated, CMYK, grayscale, truncated).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import OutputSpec, Scale, Sizing
from pipeline.data.cluster import jpeg_on_model
from pipeline.data.decode import decode_one
from pipeline.data.model_actor import ModelIO
from pipeline.data.stylize import run_stylize
from pipeline.errors import ConfigError, ImageError
from pipeline.imaging import device_codec
from pipeline.imaging.codec import decode, encode, output_size, plain_jpeg_size, prepare
from pipeline.imaging.device_codec import decode_jpegs, encode_jpegs, prepare_on_device
from pipeline.imaging.tensors import batch_to_pixels, to_tensor
from tests import fuzz, images
from tests.conftest import WeightFiles
from tests.test_stylize_job import local_manifest, make_config

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]
BROKEN_JPEG = b"\xff\xd8" + b"\x00not a jpeg stream" * 8 + b"\xff\xd9"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def test_plain_jpegs_only_go_to_the_device() -> None:
    assert plain_jpeg_size(images.encoded(64, 48)) == (64, 48)
    for data in (
        images.exif_rotated_jpeg(),  # a plain decoder would not turn it upright
        images.encoded(64, 48, "JPEG", "CMYK"),
        images.encoded(64, 48, "JPEG", "L"),
        images.truncated_jpeg(),
        images.encoded(64, 48, "PNG"),
        b"",
        b"\xff\xd8 text that starts like a JPEG",
    ):
        assert plain_jpeg_size(data) is None
    assert plain_jpeg_size(images.encoded(64, 48), max_pixels=64 * 48 - 1) is None


def test_jpegs_of_too_many_scans_are_refused_on_either_path(tmp_path: Path) -> None:
    """A progressive JPEG with one scan there 300 times (13 KB; each scan a pass over the whole image) is refused
    before decoding, and never goes to the device; the scans of a JPEG inside a marker segment (a thumbnail
    in APP1) are not counted."""
    bomb = images.scan_bomb_jpeg(copies=300)
    assert plain_jpeg_size(bomb) is None
    with pytest.raises(ImageError, match="a JPEG of more than 256 scans"):
        decode(bomb)
    row = decode_one(str(images.write(tmp_path / "bomb.jpg", bomb)), Sizing(content_size=32), jpeg_to_model=True)
    assert "a JPEG of more than 256 scans" in row["error"] and "pixels" not in row
    thumbnailed = images.with_app1(images.encoded(64, 48), b"thumb\0" + images.scan_bomb_jpeg(32, 32, copies=300))
    assert plain_jpeg_size(thumbnailed) == (64, 48) and decode(thumbnailed).size == (64, 48)


@pytest.mark.parametrize(
    "sizing",
    [
        Sizing(content_size=32),  # shrink the shorter side
        Sizing(content_size=48, crop=True),  # shrink, then centre-crop
        Sizing(content_size=64, max_side=80),  # shrink, then cap the longer side
        Sizing(content_size=128),  # enlarge
        Sizing(content_size=0),  # keep
    ],
    ids=["shorter", "crop", "max-side", "enlarge", "keep"],
)
def test_device_resize_matches_pillow(sizing: Sizing) -> None:
    data = images.encoded(96, 72, seed=5)
    (decoded,) = decode_jpegs([data], CPU)
    ours = prepare_on_device(decoded, sizing.content_plan(96, 72))
    pillow = to_tensor(prepare(data, sizing.content_size, sizing.crop, sizing.max_pixels, sizing.max_side))
    assert ours.shape == pillow.shape
    assert (ours.shape[2], ours.shape[1]) == output_size(96, 72, sizing.content_size, sizing.crop, sizing.max_side)
    assert psnr(batch_to_pixels(ours[None]), batch_to_pixels(pillow[None])) > 45
    assert float((ours - pillow).abs().max()) <= 3 / 255


@pytest.mark.parametrize(
    "options",
    [{"subsampling": 0}, {"subsampling": 1}, {"subsampling": 2}, {"progressive": True}, {"optimize": True}],
    ids=["444", "422", "420", "progressive", "optimized"],
)
def test_device_decoding_matches_pillow(options: dict) -> None:
    """The decoded pixels themselves, before any resizing: Pillow's libjpeg-turbo and TorchCodec's
    may differ in upsampling chroma, by a grey level or two at most."""
    buffer = io.BytesIO()
    Image.fromarray(images.gradient(53, 37, seed=9)).save(buffer, "JPEG", quality=88, **options)
    data = buffer.getvalue()
    (decoded,) = decode_jpegs([data], CPU)
    assert decoded.dtype == torch.uint8 and tuple(decoded.shape) == (3, 37, 53)
    pillow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)
    diff = np.abs(decoded.permute(1, 2, 0).numpy().astype(np.int16) - pillow)
    assert diff.max() <= 2 and diff.mean() < 0.5


def test_fuzzed_jpegs_decode_or_give_none() -> None:
    """Mutated files of every format (bits flipped, cut short, headers and sizes rewritten) give a
    tensor or None, never an exception; one that `plain_jpeg_size` lets through decodes at its
    header's size or not at all; the batched call gives what one call per file gives."""
    corpus = [data for _, data in fuzz.corpus(180, seed=11)] + [b"", b"\xff\xd8", b"\xff\xd8\xff\xd9"]
    alone = [decode_jpegs([data], CPU)[0] for data in corpus]
    for data, image in zip(corpus, alone, strict=True):
        assert image is None or (image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3)
        size = plain_jpeg_size(data)
        if size is not None and image is not None:
            assert (image.shape[2], image.shape[1]) == size
    assert any(image is None for image in alone) and any(image is not None for image in alone)
    batched = decode_jpegs(corpus, CPU)
    assert len(batched) == len(corpus)
    for one, many in zip(alone, batched, strict=True):
        assert (one is None) == (many is None) and (one is None or torch.equal(one, many))


def test_a_broken_file_in_a_batch_costs_only_itself() -> None:
    good = [images.encoded(40, 32, seed=s) for s in range(3)]
    decoded = decode_jpegs([good[0], BROKEN_JPEG, good[1], good[2]], CPU)
    assert decoded[1] is None
    assert [tuple(d.shape) for d in decoded if d is not None] == [(3, 32, 40)] * 3


def test_device_encoding_round_trips() -> None:
    pixels = np.stack([images.gradient(40, 32, seed=s) for s in range(2)])
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    files = encode_jpegs(batch, quality=90)
    assert len(files) == 2
    for data, original in zip(files, pixels, strict=True):
        with Image.open(io.BytesIO(data)) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (40, 32))
            ours = psnr(np.asarray(img), original)
        pillow = Image.open(io.BytesIO(encode(Image.fromarray(original), "jpg", 90)))
        assert ours > psnr(np.asarray(pillow), original) - 1.0  # as faithful as Pillow's encoder at that quality


def test_model_io_keeps_raw_and_jpeg_rows_apart_and_reports_errors() -> None:
    """One same-shape chunk: a raw row, a JPEG file, and a file no decoder can read."""
    sizing = Sizing(content_size=32)
    jpeg = images.encoded(48, 40, seed=7)
    raw = prepare(images.encoded(48, 40, "PNG", seed=8), 32)
    rows = [
        {"pixels": raw.tobytes(), "jpeg": False, "error": None},
        {"pixels": jpeg, "jpeg": True, "error": None},
        {"pixels": BROKEN_JPEG, "jpeg": True, "error": None},
    ]
    batch, kept = ModelIO(CPU, sizing).batch(rows, [0, 1, 2], 32, 38)
    assert kept == [0, 1] and "not an image" in rows[2]["error"]
    assert batch.shape == (2, 3, 32, 38)
    assert torch.equal(batch[0], to_tensor(raw))
    assert float((batch[1] - to_tensor(prepare(jpeg, 32))).abs().max()) <= 3 / 255
    files = ModelIO(CPU, sizing, jpeg_quality=90).outputs(batch)
    assert all(f.startswith(b"\xff\xd8") for f in files)
    files = ModelIO(CPU, sizing).outputs(batch)
    assert not any(f.startswith(b"\xff\xd8") for f in files) and [len(f) for f in files] == [32 * 38 * 3] * 2


def test_where_jpegs_are_coded() -> None:
    gpu, cpu = {"num_gpus": 1.0}, {"num_cpus": 2.0}
    jpg, png = OutputSpec("/tmp/o", "jpg", 85), OutputSpec("/tmp/o", "png")
    assert jpeg_on_model(Scale(), gpu, jpg) == (True, 85)
    assert jpeg_on_model(Scale(), cpu, jpg) == (False, None)
    assert jpeg_on_model(Scale(), gpu, png) == (True, None)  # PNG outputs are encoded in the tasks
    assert jpeg_on_model(Scale(jpeg_codec="model"), cpu, jpg) == (True, 85)
    assert jpeg_on_model(Scale(jpeg_codec="tasks"), gpu, jpg) == (False, None)
    with pytest.raises(ConfigError, match="--jpeg-codec gpu"):
        Scale(jpeg_codec="gpu")
    # Where TorchCodec cannot load (its CUDA build beside a CPU-only torch): auto keeps JPEGs in the
    # tasks, and asking for the model's device is refused in one line.
    assert device_codec.unavailable() is None  # here it loads
    error = "Could not load this library: libtorchcodec_image.so: libnvrtc.so.13: cannot open shared object file"
    assert jpeg_on_model(Scale(), gpu, jpg, error) == (False, None)
    assert jpeg_on_model(Scale(jpeg_codec="tasks"), gpu, jpg, error) == (False, None)
    with pytest.raises(ConfigError, match=r"TorchCodec cannot run here .*libnvrtc.* or use --jpeg-codec tasks"):
        jpeg_on_model(Scale(jpeg_codec="model"), cpu, jpg, error)


def test_job_outputs_match_the_pillow_path(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    """The same inputs through both codecs: the same rows and sizes, and outputs within a few
    grey levels (the decoders' and resize filters' rounding, then JPEG encoding)."""
    src = tmp_path / "in"
    for i, (w, h) in enumerate([(48, 40), (40, 48), (64, 64)]):
        images.write(src / f"photo{i}.jpg", images.encoded(w, h, seed=20 + i))
    images.write(src / "drawing.png", images.encoded(48, 40, "PNG", seed=30))
    images.write(src / "broken.jpg", BROKEN_JPEG)
    style = images.write(tmp_path / "styles" / "wave.png", images.encoded(32, 32, "PNG", seed=31))
    outputs = {}
    for codec in ("tasks", "model"):
        out = tmp_path / codec
        cfg = make_config(weights, str(src), (str(style),), str(out), fmt="jpg", scale=Scale(jpeg_codec=codec))
        summary = run_stylize(cfg)
        assert (summary["ok"], summary["error"]) == (4, 1)
        rows = {r["rel_path"]: r for r in local_manifest(out)}
        assert rows["broken.jpg"]["status"] == "error" and "not an image" in rows["broken.jpg"]["error"]
        ok = [name for name, row in rows.items() if row["status"] == "ok"]
        outputs[codec] = {name: np.asarray(Image.open(out / "wave" / f"{Path(name).stem}.jpg")) for name in ok}
    for name, pixels in outputs["tasks"].items():
        assert outputs["model"][name].shape == pixels.shape, name
        assert psnr(outputs["model"][name], pixels) > 30, name


@pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU: test_gpu_job_matches_the_cpu_job runs instead")
def test_gpu_actor_pool_on_a_fake_gpu_matches_the_cpu_job(weights: WeightFiles, tmp_path: Path) -> None:
    """On a Ray advertising a GPU (`tests.fake_gpu`, a process of its own) with the model on the
    CPU: the GPU actor pool (two calls at once on threads, JPEGs coded on the model's device, as by
    default on GPUs) gives exactly the outputs of the CPU pool coding JPEGs there too."""
    src = tmp_path / "in"
    for i, (w, h) in enumerate([(48, 40), (40, 48), (64, 64), (48, 40), (56, 40)]):
        images.write(src / f"photo{i}.jpg", images.encoded(w, h, seed=60 + i))
    images.write(src / "drawing.png", images.encoded(48, 40, "PNG", seed=70))
    images.write(src / "broken.jpg", BROKEN_JPEG)
    style = images.write(tmp_path / "wave.png", images.encoded(32, 32, "PNG", seed=71))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    args = [str(weights.vgg), str(weights.decoder), str(src), str(style), str(tmp_path / "out")]
    done = subprocess.run(
        [sys.executable, "-m", "tests.fake_gpu", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["cpu"]["num_gpus"] is None and report["gpu-pool"]["num_gpus"] == 1.0
    assert report["gpu-pool"]["calls_per_actor"] == 2
    assert report["cpu"]["jpeg_on_model"] == report["gpu-pool"]["jpeg_on_model"] == [True, 90]
    assert all((run["ok"], run["error"]) == (6, 1) for run in report.values()), report
    outputs = {
        run: {p.name: np.asarray(Image.open(p)) for p in (tmp_path / "out" / run / "wave").iterdir()} for run in report
    }
    assert outputs["gpu-pool"].keys() == outputs["cpu"].keys() and len(outputs["cpu"]) == 6
    for name, pixels in outputs["cpu"].items():
        assert np.array_equal(outputs["gpu-pool"][name], pixels), name


# ---------------------------------------------------------------------------------------------
# on a GPU (skipped where there is none, as on CI): nvJPEG and the GPU actors


def needs_cuda(test):
    """A CUDA test: marked `cuda` (benchmarks/gpu.sh runs `pytest -m cuda`), skipped without a GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


@needs_cuda
def test_nvjpeg_matches_the_cpu_codec() -> None:
    gpu = torch.device("cuda")
    data = [images.encoded(96, 72, seed=s) for s in range(4)] + [BROKEN_JPEG]
    on_gpu, on_cpu = decode_jpegs(data, gpu), decode_jpegs(data, CPU)
    assert on_gpu[-1] is None and on_cpu[-1] is None
    sizing = Sizing(content_size=64, crop=True)
    for g, c in zip(on_gpu[:-1], on_cpu[:-1], strict=True):
        assert g.is_cuda and g.shape == c.shape
        plan = sizing.content_plan(96, 72)
        ours, reference = prepare_on_device(g, plan).cpu(), prepare_on_device(c, plan)
        assert psnr(batch_to_pixels(ours[None]), batch_to_pixels(reference[None])) > 40
    batch = torch.stack([prepare_on_device(g, sizing.content_plan(96, 72)) for g in on_gpu[:-1]])
    for data, image in zip(encode_jpegs(batch, 90), batch_to_pixels(batch.cpu()), strict=True):
        with Image.open(io.BytesIO(data)) as img:
            assert img.size == (64, 64) and psnr(np.asarray(img), image) > 25


@needs_cuda
def test_gpu_job_matches_the_cpu_job(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    """GPU actors (two calls at once, nvJPEG in and out) give the CPU job's outputs."""
    src = tmp_path / "in"
    for i in range(6):
        images.write(src / f"p{i}.jpg", images.encoded(64, 48, seed=40 + i))
    images.write(src / "drawing.png", images.encoded(48, 64, "PNG", seed=50))
    style = images.write(tmp_path / "wave.png", images.encoded(32, 32, "PNG", seed=51))
    outputs = {}
    for device in ("cpu", "cuda"):
        cfg = make_config(weights, str(src), (str(style),), str(tmp_path / device), fmt="jpg")
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, device=device))
        assert run_stylize(cfg)["ok"] == 7
        outputs[device] = {p.name: np.asarray(Image.open(p)) for p in (tmp_path / device / "wave").iterdir()}
    assert outputs["cuda"].keys() == outputs["cpu"].keys()
    for name, pixels in outputs["cpu"].items():
        assert psnr(outputs["cuda"][name], pixels) > 30, name
