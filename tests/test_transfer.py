"""`adain transfer` end to end on real files: every image mode, broken inputs, naming, controls.

Everything runs through the real command (`main([...])`, and a real subprocess where a
traceback could escape) with random weights in pytorch-AdaIN's layouts; results are read
back from disk with Pillow, the way a user would look at them.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.cli import _OneLineMessages, main
from pipeline.errors import one_line
from pipeline.imaging.codec import prepare
from pipeline.imaging.tensors import to_image, to_tensor
from pipeline.model.functional import blend_stats
from pipeline.model.loader import load_model
from tests import images
from tests.conftest import S3Server, WeightFiles

SIZE = 32  # --content-size / --style-size for every run
WIDE = (64, 48)  # content as stored: width x height
WIDE_OUT = (42, 32)  # WIDE with the shorter side scaled to SIZE: int(32 * 64 / 48) = 42


# ---------------------------------------------------------------------------- helpers


def model_flags(weights: WeightFiles) -> list[str]:
    return ["--encoder", str(weights.vgg), "--decoder", str(weights.decoder), "--device", "cpu"]


def transfer(weights: WeightFiles, *args: object, size: int = SIZE) -> int:
    """Run `adain transfer ARGS` in-process with the test weights; returns the exit code."""
    argv = ["transfer", *map(str, args), *model_flags(weights)]
    if "--content-size" not in argv:
        argv += ["--content-size", str(size)]
    if "--style-size" not in argv:
        argv += ["--style-size", str(SIZE)]
    return main(argv)


def pixels(path: Path) -> np.ndarray:
    """A written output as (H, W, 3) int32, so that differences do not wrap around."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).astype(np.int32)


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.load()  # decodes: a half-written file fails here
        return img.size


def assert_same(a: Path, b: Path) -> None:
    """Two PNG outputs agree within one 8-bit level everywhere."""
    diff = np.abs(pixels(a) - pixels(b))
    assert diff.shape[:2] == pixels(a).shape[:2] == pixels(b).shape[:2]
    assert diff.max() <= 1, f"{a.name} and {b.name} differ by up to {diff.max()} levels"


def assert_differ(a: Path, b: Path, levels: float = 1.0) -> None:
    """Two outputs differ visibly (mean absolute difference above `levels` of 255)."""
    mean = np.abs(pixels(a) - pixels(b)).mean()
    assert mean > levels, f"{a.name} and {b.name} are nearly identical (mean diff {mean:.3f})"


def error_lines(err: str) -> list[str]:
    """The stderr lines a user sees, after checking that none of it is a traceback."""
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()]


def assert_one_error(err: str, *needles: str) -> str:
    """stderr is exactly one `adain: error:` line containing every needle."""
    lines = error_lines(err)
    assert len(lines) == 1, f"expected one error line, got: {lines}"
    line = lines[0]
    assert line.startswith("adain: error:"), line
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
    return line


def png(array: np.ndarray, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, "PNG")
    return buffer.getvalue()


def ycbcr_chroma(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) 0..255 RGB -> (H, W, 2) Cb, Cr, full-range BT.601 (JPEG), centred on 0."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([cb, cr], -1)


@pytest.fixture
def content(tmp_path: Path) -> Path:
    return images.write(tmp_path / "in" / "content.png", images.encoded(*WIDE, "PNG", seed=0))


@pytest.fixture
def styles(tmp_path: Path) -> tuple[Path, Path]:
    """Two clearly different styles: a colourful gradient and a dark, blue, noisy image."""
    first = images.write(tmp_path / "in" / "sunset.png", images.encoded(48, 48, "PNG", seed=1))
    rng = np.random.default_rng(7)
    dark = np.zeros((40, 56, 3), np.uint8)
    dark[..., 2] = rng.integers(100, 255, (40, 56))
    dark[..., 1] = rng.integers(0, 40, (40, 56))
    dark[..., 0] = rng.integers(0, 60, (40, 56))
    second = images.write(tmp_path / "in" / "night.png", png(dark))
    return first, second


# ------------------------------------------------------------ odd but valid image modes


def _p_with_transparency() -> bytes:
    img = Image.fromarray(images.gradient(*WIDE), "RGB").convert("P", palette=Image.ADAPTIVE, colors=16)
    buffer = io.BytesIO()
    img.save(buffer, "PNG", transparency=0)
    return buffer.getvalue()


def _gray(seed: int = 0) -> np.ndarray:
    return np.asarray(Image.fromarray(images.gradient(*WIDE, seed), "RGB").convert("L"))


def _sixteen_bit_png(seed: int = 0) -> bytes:
    """A 16-bit grayscale PNG holding v * 257 for the 8-bit gray v (full 16-bit range)."""
    img = Image.fromarray(_gray(seed).astype(np.uint16) * 257)
    assert img.mode == "I;16"
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


MODES = {
    "L": lambda: images.encoded(*WIDE, "PNG", mode="L"),
    "LA": lambda: images.encoded(*WIDE, "PNG", mode="LA"),
    "P": lambda: images.encoded(*WIDE, "PNG", mode="P"),
    "P-transparency": _p_with_transparency,
    "RGBA": lambda: images.encoded(*WIDE, "PNG", mode="RGBA"),
    "CMYK-jpeg": lambda: images.encoded(*WIDE, "JPEG", mode="CMYK"),
    "I16-png": _sixteen_bit_png,
    "RGB-png": lambda: images.encoded(*WIDE, "PNG"),
    "RGB-webp": lambda: images.encoded(*WIDE, "WEBP"),
    "RGB-jpeg": lambda: images.encoded(*WIDE, "JPEG"),
}


@pytest.mark.parametrize("kind", list(MODES))
def test_every_image_mode_is_stylized_at_the_requested_size(
    kind: str, weights: WeightFiles, styles: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real-world files come in every mode; each must give a normal RGB output, aspect kept."""
    data = MODES[kind]()
    with Image.open(io.BytesIO(data)) as probe:
        ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[probe.format]
    source = images.write(tmp_path / f"photo.{ext}", data)
    out = tmp_path / "out.png"
    assert transfer(weights, source, styles[0], "-o", out) == 0
    assert capsys.readouterr().err == ""
    assert size_of(out) == WIDE_OUT
    with Image.open(out) as img:
        assert (img.format, img.mode) == ("PNG", "RGB")


def test_exif_rotated_jpeg_comes_out_upright(weights: WeightFiles, styles: tuple[Path, Path], tmp_path: Path) -> None:
    """A phone photo stored sideways with EXIF orientation 6 must be stylized as it is displayed:
    the output equals the output for the same pixels already rotated 90 degrees clockwise, and
    not the output for the other way round."""
    data = images.exif_rotated_jpeg(*WIDE)
    rotated = images.write(tmp_path / "phone.jpg", data)
    with Image.open(io.BytesIO(data)) as stored:
        assert stored.size == WIDE  # the stored pixels are landscape
        raw = stored.convert("RGB")
    clockwise = images.write(tmp_path / "cw.png", png(np.asarray(raw.transpose(Image.Transpose.ROTATE_270))))
    counter = images.write(tmp_path / "ccw.png", png(np.asarray(raw.transpose(Image.Transpose.ROTATE_90))))

    for source, name in ((rotated, "exif"), (clockwise, "cw"), (counter, "ccw")):
        assert transfer(weights, source, styles[0], "-o", tmp_path / f"{name}.out.png") == 0
    assert size_of(tmp_path / "exif.out.png") == WIDE_OUT[::-1]  # portrait: width and height swapped
    assert_same(tmp_path / "exif.out.png", tmp_path / "cw.out.png")
    assert_differ(tmp_path / "exif.out.png", tmp_path / "ccw.out.png")


def _half_transparent(mode: str, background: int = 255) -> tuple[bytes, np.ndarray]:
    """An image whose left half is fully transparent, and the RGB it looks like on `background`."""
    rgb = images.gradient(*WIDE, seed=4)
    left = np.zeros(rgb.shape[:2], bool)
    left[:, : WIDE[0] // 2] = True
    if mode == "P":
        img = Image.fromarray(rgb, "RGB").convert("P", palette=Image.ADAPTIVE, colors=16)
        index = np.asarray(img).copy()
        index[left] = 0
        img = Image.fromarray(index, "P")
        img.putpalette(Image.fromarray(rgb, "RGB").convert("P", palette=Image.ADAPTIVE, colors=16).getpalette())
        expected = np.asarray(img.convert("RGB")).copy()
        buffer = io.BytesIO()
        img.save(buffer, "PNG", transparency=0)
        expected[index == 0] = background
        return buffer.getvalue(), expected
    alpha = np.where(left, 0, 255).astype(np.uint8)
    if mode == "LA":
        gray = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
        data = png(np.stack([gray, alpha], -1), "LA")
        expected = np.repeat(np.where(left, background, gray)[..., None], 3, -1).astype(np.uint8)
        return data, expected
    data = png(np.concatenate([rgb, alpha[..., None]], -1), "RGBA")
    expected = np.where(left[..., None], background, rgb).astype(np.uint8)
    return data, expected


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_are_stylized_as_white(
    mode: str, weights: WeightFiles, styles: tuple[Path, Path], tmp_path: Path
) -> None:
    """Transparency is composited on white (not black, not dropped): a logo with a transparent
    background gives the same result as the logo on a white background."""
    data, on_white = _half_transparent(mode)
    transparent = images.write(tmp_path / "logo.png", data)
    white = images.write(tmp_path / "white.png", png(on_white))
    black = images.write(tmp_path / "black.png", png(_half_transparent(mode, background=0)[1]))
    for source, name in ((transparent, "a"), (white, "w"), (black, "b")):
        assert transfer(weights, source, styles[0], "-o", tmp_path / f"{name}.out.png", "--content-size", 0) == 0
    assert_same(tmp_path / "a.out.png", tmp_path / "w.out.png")
    assert_differ(tmp_path / "a.out.png", tmp_path / "b.out.png")


def test_16_bit_png_is_scaled_not_clipped(weights: WeightFiles, styles: tuple[Path, Path], tmp_path: Path) -> None:
    """A 16-bit grayscale PNG (v * 257) must look exactly like its 8-bit version (v), not white."""
    deep = images.write(tmp_path / "deep.png", _sixteen_bit_png())
    with Image.open(deep) as opened:
        assert opened.mode.startswith("I")  # really stored as 16 bits per sample
    gray = images.write(tmp_path / "gray.png", png(_gray(), "L"))
    white = images.write(tmp_path / "white.png", png(np.full(WIDE[::-1], 255, np.uint8), "L"))
    for source, name in ((deep, "a"), (gray, "g"), (white, "w")):
        assert transfer(weights, source, styles[0], "-o", tmp_path / f"{name}.out.png") == 0
    assert_same(tmp_path / "a.out.png", tmp_path / "g.out.png")
    assert_differ(tmp_path / "a.out.png", tmp_path / "w.out.png")


# -------------------------------------------------------------------- broken inputs

BROKEN = {
    "truncated.jpg": (images.truncated_jpeg, "truncated"),
    "empty.jpg": (lambda: b"", "empty"),
    "notes.jpg": (lambda: b"this is a text file, not a JPEG\n" * 4, "not an image"),
    "bomb.png": (images.huge_header_png, "over the limit"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_content_fails_with_one_line(
    name: str, weights: WeightFiles, styles: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad input ends the run non-zero with one line naming the file and the reason."""
    make, reason = BROKEN[name]
    bad = images.write(tmp_path / name, make())
    out = tmp_path / "out.png"
    assert transfer(weights, bad, styles[0], "-o", out) != 0
    assert_one_error(capsys.readouterr().err, name, reason)
    assert not out.exists()


@pytest.mark.parametrize("name", ["truncated.jpg", "bomb.png"])
def test_broken_style_fails_with_one_line(
    name: str, weights: WeightFiles, content: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad style image is reported the same way as a bad content image, and nothing is written."""
    make, reason = BROKEN[name]
    bad = images.write(tmp_path / name, make())
    assert transfer(weights, content, bad, "-o", tmp_path / "out.png") != 0
    assert_one_error(capsys.readouterr().err, name, reason)
    assert not (tmp_path / "out.png").exists()


def test_broken_files_in_a_real_process_print_no_traceback(
    weights: WeightFiles, styles: tuple[Path, Path], tmp_path: Path
) -> None:
    """What the user's terminal shows for each kind of broken file: one line each naming the
    file and the reason, no traceback, exit status 3 (finished, with failures); the good file is still written."""
    src = tmp_path / "photos"
    for name, (make, _) in BROKEN.items():
        images.write(src / name, make())
    images.write(src / "good.png", images.encoded(*WIDE, "PNG"))
    out = tmp_path / "out"
    argv = ["transfer", str(src), str(styles[0]), "-o", str(out), "--format", "png", *model_flags(weights)]
    argv += ["--content-size", str(SIZE), "--style-size", str(SIZE)]
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 3, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == len(BROKEN), lines
    for name, (_, reason) in BROKEN.items():
        (line,) = [line for line in lines if f"{name}:" in line]
        assert line.startswith("adain: error:") and reason.lower() in line.lower(), line
    assert [p.name for p in out.iterdir()] == ["good_stylized_sunset.png"]
    assert size_of(out / "good_stylized_sunset.png") == WIDE_OUT


def test_missing_input_is_a_one_line_error(
    weights: WeightFiles, styles: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in a path is a one-line 'not found', not a traceback."""
    assert transfer(weights, tmp_path / "nope.jpg", styles[0], "-o", tmp_path / "o.png") != 0
    assert_one_error(capsys.readouterr().err, "nope.jpg", "not found")


def test_directory_with_broken_files_writes_the_good_ones(
    weights: WeightFiles, styles: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One bad file in a batch must not stop the batch: the rest are written, the run exits 3,
    and each bad file gets its own error line."""
    src = tmp_path / "photos"
    images.write(src / "a.png", images.encoded(*WIDE, "PNG", seed=1))
    images.write(src / "b.jpg", images.encoded(48, 64, "JPEG", seed=2))
    images.write(src / "trip" / "c.webp", images.encoded(*WIDE, "WEBP", seed=3))
    images.write(src / "broken.jpg", images.truncated_jpeg())
    images.write(src / "trip" / "empty.png", b"")
    out = tmp_path / "out"

    assert transfer(weights, src, styles[0], "-o", out, "--format", "png") == 3
    captured = capsys.readouterr()
    lines = error_lines(captured.err)
    assert len(lines) == 2, lines
    assert all(line.startswith("adain: error:") for line in lines)
    assert any("broken.jpg" in line and "truncated" in line for line in lines), lines
    assert any("empty.png" in line and "empty" in line for line in lines), lines
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a_stylized_sunset.png", "b_stylized_sunset.png", "trip/c_stylized_sunset.png"]
    assert size_of(out / "b_stylized_sunset.png") == (32, 42)
    for name in written:
        assert f"wrote {out / name}" in captured.out


# --------------------------------------------------------------- outputs and naming


@pytest.mark.parametrize(
    ("name", "pil_format"), [("o.jpg", "JPEG"), ("o.jpeg", "JPEG"), ("o.png", "PNG"), ("o.WEBP", "WEBP")]
)
def test_output_format_follows_the_extension(
    name: str, pil_format: str, weights: WeightFiles, content: Path, styles: tuple[Path, Path], tmp_path: Path
) -> None:
    """`-o x.png` must write a real PNG (not a JPEG named .png), and so on for each format."""
    out = tmp_path / name
    assert transfer(weights, content, styles[0], "-o", out) == 0
    with Image.open(out) as img:
        assert img.format == pil_format
        assert img.size == WIDE_OUT


@pytest.mark.parametrize("fmt", ["png", "webp", "jpg"])
def test_format_flag_sets_the_format_in_a_directory(
    fmt: str, weights: WeightFiles, content: Path, styles: tuple[Path, Path], tmp_path: Path
) -> None:
    """Outputs into a directory take --format, in both their extension and their content."""
    out = tmp_path / "out"
    assert transfer(weights, content, styles[0], "-o", out, "--format", fmt) == 0
    target = out / f"content_stylized_sunset.{fmt}"
    with Image.open(target) as img:
        assert img.format == {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}[fmt]


def test_jpeg_quality_flag_is_applied(
    weights: WeightFiles, content: Path, styles: tuple[Path, Path], tmp_path: Path
) -> None:
    """--quality trades size for fidelity: a low quality must give a smaller file."""
    assert transfer(weights, content, styles[0], "-o", tmp_path / "lo.jpg", "--quality", 5, size=64) == 0
    assert transfer(weights, content, styles[0], "-o", tmp_path / "hi.jpg", "--quality", 95, size=64) == 0
    assert (tmp_path / "lo.jpg").stat().st_size < (tmp_path / "hi.jpg").stat().st_size


@pytest.mark.parametrize("name", ["out.gif", "out.tiff", "out.txt"])
def test_unknown_output_extension_is_a_clear_error(
    name: str,
    weights: WeightFiles,
    content: Path,
    styles: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An output name that says no supported format is refused before any work, nothing written."""
    assert transfer(weights, content, styles[0], "-o", tmp_path / name) != 0
    assert_one_error(capsys.readouterr().err, name, ".png")
    assert list(tmp_path.glob("out*")) == []


def test_several_outputs_to_one_file_is_a_clear_error(
    weights: WeightFiles,
    content: Path,
    styles: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two styles without weights give two images; they cannot both go to one file name."""
    out = tmp_path / "out.png"
    assert transfer(weights, content, *styles, "-o", out) != 0
    assert_one_error(capsys.readouterr().err, "2 outputs", "directory")
    assert not out.exists()


def test_directory_of_contents_times_directory_of_styles(
    weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every (content, style) pair is written once, with the documented name, keeping the
    content's subfolders so that same-named photos in different folders do not collide."""
    contents, style_dir = tmp_path / "photos", tmp_path / "styles"
    images.write(contents / "beach.jpg", images.encoded(*WIDE, "JPEG", seed=1))
    images.write(contents / "2023" / "beach.png", images.encoded(*WIDE, "PNG", seed=2))
    images.write(contents / "2023" / "june" / "cat.webp", images.encoded(48, 40, "WEBP", seed=3))
    (contents / "notes.txt").write_text("not an image, ignored")
    images.write(style_dir / "monet.png", images.encoded(40, 40, "PNG", seed=5))
    images.write(style_dir / "ink.jpg", images.encoded(40, 48, "JPEG", mode="L", seed=6))
    out = tmp_path / "out"

    assert transfer(weights, contents, style_dir, "-o", out, "--format", "png") == 0
    assert capsys.readouterr().err == ""
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [
        "2023/beach_stylized_ink.png",
        "2023/beach_stylized_monet.png",
        "2023/june/cat_stylized_ink.png",
        "2023/june/cat_stylized_monet.png",
        "beach_stylized_ink.png",
        "beach_stylized_monet.png",
    ]
    assert size_of(out / "2023/june/cat_stylized_ink.png") == (38, 32)
    # Each pair really used its own style.
    assert_differ(out / "beach_stylized_ink.png", out / "beach_stylized_monet.png")


def test_relative_directories_keep_subfolders(
    weights: WeightFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users type relative paths (`adain transfer photos styles -o out`): nested content
    folders must be kept exactly as with absolute paths."""
    monkeypatch.chdir(tmp_path)
    images.write(tmp_path / "photos" / "a" / "x.png", images.encoded(*WIDE, "PNG", seed=1))
    images.write(tmp_path / "photos" / "b" / "x.png", images.encoded(*WIDE, "PNG", seed=2))
    images.write(tmp_path / "style.png", images.encoded(40, 40, "PNG", seed=5))

    assert transfer(weights, "photos", "style.png", "-o", "out", "--format", "png") == 0
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == ["a/x_stylized_style.png", "b/x_stylized_style.png"]


def test_object_keys_that_meet_once_made_safe_are_written_apart(
    weights: WeightFiles, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    """Distinct S3 keys whose paths are one once '.', '..' and empty segments are dropped each
    get an output of their own, and none is written outside the output prefix."""
    s3 = s3_server.client()
    keys = ["in/a.png", "in//a.png", "in/./a.png", "in/d/../a.png", "in/d/a.png"]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=images.encoded(40, 32, "PNG", seed=i))
    style = images.write(tmp_path / "style.png", images.encoded(40, 40, "PNG", seed=9))

    assert transfer(weights, f"s3://{bucket}/in", style, "-o", f"s3://{bucket}/out/", "--format", "png") == 0
    written = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]]
    assert len(written) == len(keys) and len({k.lower() for k in written}) == len(keys), written
    assert all(k.startswith("out/") and "/../" not in k and "//" not in k for k in written), written


def test_single_pair_into_a_directory_uses_the_pair_name(
    weights: WeightFiles, content: Path, styles: tuple[Path, Path], tmp_path: Path
) -> None:
    """`-o dir/` (trailing slash, or an existing directory) writes a named file inside it."""
    out = tmp_path / "results"
    assert transfer(weights, content, styles[1], "-o", f"{out}/") == 0
    assert [p.name for p in out.iterdir()] == ["content_stylized_night.jpg"]
    with Image.open(out / "content_stylized_night.jpg") as img:
        assert img.format == "JPEG"


# ------------------------------------------------------------------- interpolation


def test_style_weights_one_zero_equals_the_first_style(
    weights: WeightFiles, content: Path, styles: tuple[Path, Path], tmp_path: Path
) -> None:
    """Interpolation is a weighted mix of the styles: all the weight on one style is that style."""
    out = tmp_path / "out"
    assert transfer(weights, content, *styles, "-o", out, "--style-weights", "1,0", "--format", "png") == 0
    assert [p.name for p in out.iterdir()] == ["content_interpolation.png"]
    assert transfer(weights, content, styles[0], "-o", tmp_path / "first.png") == 0
    assert_same(out / "content_interpolation.png", tmp_path / "first.png")


def test_style_weights_match_the_python_api(
    weights: WeightFiles, content: Path, styles: tuple[Path, Path], tmp_path: Path
) -> None:
    """The CLI's interpolation is the documented API recipe: blend the styles' statistics with
    the weights, then stylize once; and it differs from either style alone."""
    out = tmp_path / "mix.png"
    assert transfer(weights, content, *styles, "-o", out, "--style-weights", "1,3") == 0

    model = load_model(str(weights.vgg), str(weights.decoder), "cpu")
    style_tensors = [to_tensor(prepare(p.read_bytes(), SIZE)) for p in styles]
    stats = [model.style_stats(s[None]) for s in style_tensors]
    mean, std = blend_stats(torch.cat([m for m, _ in stats]), torch.cat([s for _, s in stats]), torch.tensor([1.0, 3]))
    image = to_tensor(prepare(content.read_bytes(), SIZE))
    expected = to_image(model.stylize(image[None], (mean, std))[0])
    expected.save(tmp_path / "api.png")
    assert_same(out, tmp_path / "api.png")

    for i, style in enumerate(styles):
        assert transfer(weights, content, style, "-o", tmp_path / f"only{i}.png") == 0
        assert_differ(out, tmp_path / f"only{i}.png", levels=0.2)


def test_style_weights_give_one_output_per_content(
    weights: WeightFiles, styles: tuple[Path, Path], tmp_path: Path
) -> None:
    """With weights, N contents x S styles make N images, not N x S."""
    src = tmp_path / "photos"
    images.write(src / "a.png", images.encoded(*WIDE, "PNG", seed=1))
    images.write(src / "sub" / "b.jpg", images.encoded(*WIDE, "JPEG", seed=2))
    out = tmp_path / "out"
    assert transfer(weights, src, *styles, "-o", out, "--style-weights", "2,1") == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a_interpolation.jpg", "sub/b_interpolation.jpg"]


@pytest.mark.parametrize(
    ("flag", "needle"), [("1,2,3", "3 weights for 2 styles"), ("0,0", "not all zero"), ("1,-1", "non-negative")]
)
def test_bad_style_weights_are_clear_errors(
    flag: str,
    needle: str,
    weights: WeightFiles,
    content: Path,
    styles: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Weights that do not fit the styles are refused with a reason, before any output."""
    assert transfer(weights, content, *styles, "-o", tmp_path / "o.png", f"--style-weights={flag}") != 0
    assert_one_error(capsys.readouterr().err, needle)
    assert not (tmp_path / "o.png").exists()


# ---------------------------------------------------------------------------- mask


def test_mask_paints_foreground_and_background(
    weights: WeightFiles, content: Path, styles: tuple[Path, Path], tmp_path: Path
) -> None:
    """White mask = first style everywhere, black mask = second style everywhere, and a
    half-and-half mask differs from both; output named `{stem}_masked`."""
    white = images.write(tmp_path / "white.png", png(np.full((16, 20), 255, np.uint8), "L"))
    black = images.write(tmp_path / "black.png", png(np.zeros((16, 20), np.uint8), "L"))
    half = np.zeros((48, 64), np.uint8)
    half[:, 32:] = 255
    split = images.write(tmp_path / "half.png", png(half, "L"))

    for mask, name in ((white, "white"), (black, "black"), (split, "half")):
        out = tmp_path / name
        assert transfer(weights, content, *styles, "-o", out, "--mask", mask, "--format", "png") == 0
        assert [p.name for p in out.iterdir()] == ["content_masked.png"]
    for i, style in enumerate(styles):
        assert transfer(weights, content, style, "-o", tmp_path / f"plain{i}.png") == 0

    assert_same(tmp_path / "white" / "content_masked.png", tmp_path / "plain0.png")
    assert_same(tmp_path / "black" / "content_masked.png", tmp_path / "plain1.png")
    assert_differ(tmp_path / "half" / "content_masked.png", tmp_path / "plain0.png", levels=0.2)
    assert_differ(tmp_path / "half" / "content_masked.png", tmp_path / "plain1.png", levels=0.2)


@pytest.mark.parametrize("n_styles", [1, 3])
def test_mask_needs_exactly_two_styles(
    n_styles: int,
    weights: WeightFiles,
    content: Path,
    styles: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Foreground and background: a mask with any other number of styles is refused."""
    mask = images.write(tmp_path / "mask.png", png(np.full((8, 8), 255, np.uint8), "L"))
    chosen = [styles[0], styles[1], styles[0]][:n_styles]
    assert transfer(weights, content, *chosen, "-o", tmp_path / "out", "--mask", mask) != 0
    assert_one_error(capsys.readouterr().err, "--mask", "two styles", f"got {n_styles}")
    assert not (tmp_path / "out").exists()


def test_broken_mask_is_a_one_line_error(
    weights: WeightFiles, content: Path, styles: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mask that is not an image names the mask file."""
    mask = images.write(tmp_path / "mask.png", b"")
    assert transfer(weights, content, *styles, "-o", tmp_path / "out", "--mask", mask) != 0
    assert_one_error(capsys.readouterr().err, "mask.png", "empty")


# -------------------------------------------------------------------------- controls


def test_alpha_zero_ignores_the_style(
    weights: WeightFiles, content: Path, styles: tuple[Path, Path], tmp_path: Path
) -> None:
    """alpha 0 keeps the content's own features (the style has no effect); alpha 1 does not."""
    for i, style in enumerate(styles):
        assert transfer(weights, content, style, "-o", tmp_path / f"a0_{i}.png", "--alpha", 0) == 0
    assert transfer(weights, content, styles[0], "-o", tmp_path / "a1.png", "--alpha", 1) == 0
    assert transfer(weights, content, styles[0], "-o", tmp_path / "a05.png", "--alpha", 0.5) == 0
    assert_same(tmp_path / "a0_0.png", tmp_path / "a0_1.png")
    assert_differ(tmp_path / "a0_0.png", tmp_path / "a1.png")
    assert_differ(tmp_path / "a05.png", tmp_path / "a1.png", levels=0.2)
    assert_differ(tmp_path / "a05.png", tmp_path / "a0_0.png", levels=0.2)


@pytest.mark.parametrize("alpha", ["1.5", "-0.1"])  # nan: test_cli's non-finite numbers
def test_alpha_out_of_range_is_a_clear_error(
    alpha: str,
    weights: WeightFiles,
    content: Path,
    styles: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """alpha is a 0..1 trade-off; anything else is refused with the allowed range."""
    assert transfer(weights, content, styles[0], "-o", tmp_path / "o.png", f"--alpha={alpha}") != 0
    assert_one_error(capsys.readouterr().err, "--alpha", "between 0 and 1")


def test_preserve_color_changes_the_output(
    weights: WeightFiles, content: Path, styles: tuple[Path, Path], tmp_path: Path
) -> None:
    """Both colour-preservation methods run and do something."""
    night = styles[1]
    assert transfer(weights, content, night, "-o", tmp_path / "none.png") == 0
    for method in ("coral", "luminance"):
        out = tmp_path / f"{method}.png"
        assert transfer(weights, content, night, "-o", out, "--preserve-color", method) == 0
        assert size_of(out) == WIDE_OUT
        assert_differ(out, tmp_path / "none.png")
    assert_differ(tmp_path / "coral.png", tmp_path / "luminance.png")


@pytest.mark.parametrize("flat", ["style", "content"])
def test_preserve_color_coral_handles_a_flat_colour_channel(
    flat: str, weights: WeightFiles, content: Path, styles: tuple[Path, Path], tmp_path: Path
) -> None:
    """A channel with no variation (a red-and-black poster, a flat-colour graphic) is an
    ordinary image: coral must still stylize it, not crash on a zero standard deviation."""
    rgb = images.gradient(48, 40, seed=11)
    rgb[..., 1] = 0  # no green at all
    flat_image = images.write(tmp_path / "flat.png", png(rgb))
    pair = (content, flat_image) if flat == "style" else (flat_image, styles[0])
    out = tmp_path / "o.png"
    assert transfer(weights, *pair, "-o", out, "--preserve-color", "coral") == 0
    assert size_of(out) == (WIDE_OUT if flat == "style" else (38, 32))


def test_preserve_color_luminance_keeps_the_content_chroma(
    weights: WeightFiles, styles: tuple[Path, Path], tmp_path: Path
) -> None:
    """Luminance transfer keeps the content's colours: the output's Cb/Cr (BT.601 full range)
    follow the content's, far closer than without it."""
    rgb = images.gradient(56, 40, seed=9)
    source = images.write(tmp_path / "content.png", png(rgb))
    flags = ("--content-size", 0)
    assert transfer(weights, source, styles[1], "-o", tmp_path / "none.png", *flags) == 0
    keep = ("--preserve-color", "luminance")
    assert transfer(weights, source, styles[1], "-o", tmp_path / "lum.png", *keep, *flags) == 0
    want = ycbcr_chroma(rgb)
    kept = np.abs(ycbcr_chroma(pixels(tmp_path / "lum.png")) - want)
    free = np.abs(ycbcr_chroma(pixels(tmp_path / "none.png")) - want)
    assert np.median(kept) <= 0.5, np.median(kept)
    assert kept.mean() < 1.5, kept.mean()  # rounding, and clipping where a colour leaves the gamut
    assert free.mean() > 10 * kept.mean(), (kept.mean(), free.mean())


# ----------------------------------------------------------------------------- sizes


def test_crop_gives_a_square(weights: WeightFiles, content: Path, styles: tuple[Path, Path], tmp_path: Path) -> None:
    """--crop: scale the shorter side to N, then the centre N x N."""
    out = tmp_path / "o.png"
    assert transfer(weights, content, styles[0], "-o", out, "--crop") == 0
    assert size_of(out) == (SIZE, SIZE)


def test_content_size_zero_keeps_the_original_size(
    weights: WeightFiles, content: Path, styles: tuple[Path, Path], tmp_path: Path
) -> None:
    """--content-size 0 stylizes at the file's own resolution."""
    out = tmp_path / "o.png"
    assert transfer(weights, content, styles[0], "-o", out, "--content-size", 0) == 0
    assert size_of(out) == WIDE


@pytest.mark.parametrize(("stored", "size", "expected"), [((37, 45), 0, (37, 45)), ((50, 61), 37, (37, 45))])
def test_odd_sizes_come_out_exactly(
    stored: tuple[int, int],
    size: int,
    expected: tuple[int, int],
    weights: WeightFiles,
    styles: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """Sizes that are not multiples of 8 survive the encoder/decoder round trip exactly."""
    source = images.write(tmp_path / "odd.png", images.encoded(*stored, "PNG"))
    out = tmp_path / "o.png"
    assert transfer(weights, source, styles[0], "-o", out, "--content-size", size) == 0
    assert size_of(out) == expected


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--content-size", "-1"], "--content-size"),
        (["--crop", "--content-size", "0"], "--crop"),
        (["--quality", "0"], "--quality"),
        (["--max-pixels", "0"], "--max-pixels"),
    ],
)
def test_bad_size_and_quality_values_are_clear_errors(
    flags: list[str],
    needle: str,
    weights: WeightFiles,
    content: Path,
    styles: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Values argparse accepts but that make no sense are one-line errors naming the flag."""
    assert transfer(weights, content, styles[0], "-o", tmp_path / "o.png", *flags) != 0
    assert_one_error(capsys.readouterr().err, needle)


def test_max_pixels_flag_is_enforced(
    weights: WeightFiles, content: Path, styles: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--max-pixels lowers the decompression-bomb limit for real images too."""
    # The styles (48x48 = 2304 and 56x40 = 2240 px) fit; the 64x48 = 3072 px content does not.
    assert transfer(weights, content, styles[0], "-o", tmp_path / "o.png", "--max-pixels", 2500) != 0
    assert_one_error(capsys.readouterr().err, "content.png", "--max-pixels")


# ------------------------------------------------------------------------- bad flags


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--precision", "fp8"], "invalid choice"),
        (["--style-weights", "1,x"], "comma-separated numbers"),
        (["--preserve-color", "histogram"], "invalid choice"),
        (["--format", "gif"], "invalid choice"),
        (["--alpha", "high"], "invalid float"),
    ],
)
def test_bad_flags_are_argparse_errors(
    flags: list[str],
    needle: str,
    weights: WeightFiles,
    content: Path,
    styles: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Malformed flags stop at parsing with a reason and where the help is (exit 2), no traceback."""
    with pytest.raises(SystemExit) as exited:
        transfer(weights, content, styles[0], "-o", tmp_path / "o.png", *flags)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert lines[0].startswith("adain transfer: error:") and needle in lines[0], lines
    assert lines[1:] == ["see: adain transfer --help"], lines
    assert not (tmp_path / "o.png").exists()


def test_bad_flag_in_a_real_process(weights: WeightFiles, content: Path, tmp_path: Path) -> None:
    """The installed command exits 2 on a bad flag with argparse's message, no traceback."""
    argv = ["transfer", str(content), str(content), "-o", str(tmp_path / "o.png"), "--precision", "fp8"]
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *argv, *model_flags(weights)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert "invalid choice: 'fp8'" in lines[0] and lines[1:] == ["see: adain transfer --help"], lines


@pytest.mark.parametrize(
    ("where", "words"),
    [
        ("photos", "inside the input directory"),  # the content directory itself
        ("photos/sub/", "inside the input directory"),
        ("alias/", "inside the input directory"),  # a link to it
        ("photos/a.png", "is one of the inputs"),  # a content file
        ("alias/a.png", "is one of the inputs"),  # the same file through the link
        ("styles/wave.png", "is one of the inputs"),  # the style
        ("styles", "inside the input directory"),  # the style directory
    ],
)
def test_outputs_never_overwrite_inputs_or_land_among_them(
    weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, words: str
) -> None:
    """`-o` at an input, or in an input directory (where the next run would stylize the outputs
    again): refused in one line before anything is written; every input byte for byte as it was."""
    photos = tmp_path / "photos"
    images.write(photos / "a.png", images.encoded(40, 32, "PNG", seed=1))
    images.write(photos / "a_stylized_wave.png", images.encoded(40, 32, "PNG", seed=2))  # the user's own file
    style = images.write(tmp_path / "styles" / "wave.png", images.encoded(32, 32, "PNG", seed=3))
    (tmp_path / "alias").symlink_to(photos, target_is_directory=True)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.png") if not p.is_symlink()}
    content = photos if where.endswith("/") or "." not in where else photos / "a.png"
    style_arg = tmp_path / "styles" if where == "styles" else style
    assert transfer(weights, content, style_arg, "-o", tmp_path / where) != 0
    assert_one_error(capsys.readouterr().err, words)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.png") if not p.is_symlink()} == before


BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}  # overrides and isolates


def plain(c: str) -> bool:
    """A character a terminal shows as itself, on its line: no control (C0, DEL, C1), no line or
    paragraph separator, no bidirectional override."""
    return unicodedata.category(c) not in ("Cc", "Zl", "Zp") and c not in BIDI


@settings(max_examples=200, deadline=None)
@given(st.text() | st.lists(st.sampled_from(["a", "\x85", "\x9b", "\u2028", "\u202e", "\n", "\x1b"])).map("".join))
def test_messages_are_one_line_of_plain_characters(text: str) -> None:
    line = one_line(text)
    assert all(plain(c) for c in line)
    assert one_line(line) == line  # nothing left to escape
    assert (line == text) == all(plain(c) for c in text)  # the rest kept as it is
    record = logging.LogRecord("pipeline", logging.WARNING, __file__, 1, "%s: left out", (text,), None)
    assert _OneLineMessages("adain: %(message)s").format(record) == f"adain: {line}: left out"


def test_names_with_newlines_and_escapes_print_as_one_line_each(
    weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file name may hold a newline or a terminal escape sequence: each line about it stays one
    line, and no escape reaches the terminal."""
    folder = tmp_path / "in"
    images.write(folder / "two\nlines.png", images.encoded(40, 32, "PNG", seed=1))
    images.write(folder / "clear\x1b[2J.png", b"not an image")
    style = images.write(tmp_path / "wave.png", images.encoded(32, 32, "PNG", seed=2))
    assert transfer(weights, folder, style, "-o", tmp_path / "out") == 3
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"wrote {tmp_path}/out/two\\nlines_stylized_wave.jpg"]
    assert "\x1b" not in captured.err
    assert_one_error(captured.err, "clear\\x1b[2J.png: not an image")
