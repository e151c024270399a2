"""Acceptance tests of the style bank (`adain styles index`, `adain stylize --style BANK.parquet`).

What a user relies on: a bank built once is used without reading the style images again
(they are deleted here after indexing) and gives the very outputs the images give; adding,
changing or removing styles re-indexes only those; a bank never mixes encoders, and using
one with another encoder, or with coral colour preservation, is a clear one-line error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from pipeline.cli import main
from pipeline.config import Controls, ModelConfig, OutputSpec, Scale, Sizing, StylizeConfig
from pipeline.data.bank import BANK_SCHEMA, index_styles, is_bank, load_bank, read_bank_table, reusable_rows
from pipeline.data.stylize import run_stylize
from pipeline.errors import ConfigError
from pipeline.imaging.codec import prepare
from pipeline.model.checkpoint import load_encoder
from tests import images, reference
from tests.banks import bank_row, write_bank
from tests.conftest import S3Server, WeightFiles

SIZING = Sizing(content_size=32, style_size=32)
SCALE = Scale(actors=1, batch_size=2)
FEATURES = 512


# ---------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def other_vgg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second encoder: random VGG weights from another seed, in the same layout."""
    path = tmp_path_factory.mktemp("other-weights") / "vgg_seed7.pth"
    torch.save(reference.random_vgg_state(seed=7), path)
    return path


def model(weights: WeightFiles, encoder: Path | None = None) -> ModelConfig:
    """CPU model config with the test weights (or another encoder)."""
    return ModelConfig(str(encoder or weights.vgg), str(weights.decoder), "cpu")


def index(weights: WeightFiles, styles: str | Path, bank: str | Path, **kw: Any) -> dict[str, Any]:
    """Build or update a bank at 32 px with one actor."""
    return index_styles(str(styles), str(bank), kw.pop("model", model(weights)), kw.pop("sizing", SIZING), SCALE)


def write_styles(root: Path) -> dict[str, Path]:
    """Three style images, one in a subfolder: style id -> file."""
    return {
        "a": images.write(root / "a.jpg", images.encoded(40, 32, seed=10)),
        "c": images.write(root / "c.webp", images.encoded(36, 36, "WEBP", seed=12)),
        "sub_b": images.write(root / "sub" / "b.png", images.encoded(32, 48, "PNG", seed=11)),
    }


def write_contents(root: Path) -> None:
    images.write(root / "x.jpg", images.encoded(48, 40, seed=20))
    images.write(root / "deep" / "y.png", images.encoded(40, 44, "PNG", seed=21))


def stylize_config(weights: WeightFiles, input: str, styles: tuple[str, ...], output: str, **kw: Any) -> StylizeConfig:
    """A small CPU job writing PNG (lossless, so outputs compare pixel for pixel)."""
    return StylizeConfig(
        input=input,
        styles=styles,
        output=OutputSpec(output, "png"),
        model=kw.pop("model", model(weights)),
        sizing=SIZING,
        scale=SCALE,
        **kw,
    )


def rows(bank: Path | str) -> dict[str, dict[str, Any]]:
    """The bank's rows by style id (local banks)."""
    return {row["style_id"]: row for row in pq.read_table(bank).to_pylist()}


def reference_stats(state: dict[str, torch.Tensor], data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """float64 relu4_1 mean/std of a style image prepared as the product prepares it (32 px)."""
    pixels = np.asarray(prepare(data, 32), dtype=np.float64) / 255.0
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    mean, std = reference.mean_std(reference.vgg_features(state, x)["relu4_1"].numpy())
    return mean.ravel(), std.ravel()


def assert_close(actual: Any, expected: np.ndarray) -> None:
    """Within 1e-4 relative (elementwise, with a floor for channels near zero)."""
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def pngs(root: Path) -> dict[str, np.ndarray]:
    """Every PNG under root (not the manifest) as pixels, by relative path."""
    return {str(p.relative_to(root)): np.asarray(Image.open(p)) for p in sorted(root.rglob("*.png"))}


def stylize_argv(weights: WeightFiles, contents: Path, style: Path, output: Path, *extra: str) -> list[str]:
    """`adain stylize` flags for a small CPU job; later flags (`extra`) override earlier ones."""
    return [
        *("stylize", "--input", str(contents), "--style", str(style), "--output", str(output)),
        *("--encoder", str(weights.vgg), "--decoder", str(weights.decoder), "--device", "cpu"),
        *("--content-size", "32", "--style-size", "32", "--format", "png", "--actors", "1", "--batch-size", "2"),
        *extra,
    ]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The CLI's stderr: exactly one line, 'adain: error: ...', and no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("adain: error:"), err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# indexing


def test_index_local_directory(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    files = write_styles(tmp_path / "styles")
    bank = tmp_path / "banks" / "styles.parquet"
    result = index(weights, tmp_path / "styles", bank)
    assert (result["styles"], result["encoded"], result["unchanged"], result["removed"]) == (3, 3, 0, 0)
    assert result["errors"] == [] and result["bank"] == str(bank)
    encoder_sha = load_encoder(str(weights.vgg)).sha256
    assert result["encoder_sha256"] == encoder_sha

    table = pq.read_table(bank)
    assert table.column_names == ["style_id", "source_uri", "size", "mtime_ns", "content_sha256", "mean", "std"]
    assert table.schema.field("mean").type == pa.list_(pa.float32(), FEATURES)
    assert table.schema.field("std").type == pa.list_(pa.float32(), FEATURES)
    meta = table.schema.metadata
    assert meta[b"adain.encoder_sha256"].decode() == encoder_sha
    assert meta[b"adain.style_size"] == b"32"

    by_id = rows(bank)
    assert sorted(by_id) == ["a", "c", "sub_b"]
    for style_id, path in files.items():
        row, data = by_id[style_id], path.read_bytes()
        assert row["source_uri"] == str(path)
        assert (row["size"], row["mtime_ns"]) == (len(data), os.stat(path).st_mtime_ns)
        assert row["content_sha256"] == hashlib.sha256(data).hexdigest()
        assert len(row["mean"]) == len(row["std"]) == FEATURES
        mean, std = reference_stats(weights.vgg_state, data)
        assert_close(row["mean"], mean)
        assert_close(row["std"], std)

    loaded = load_bank(str(bank), encoder_sha)
    assert loaded.ids == ["a", "c", "sub_b"] and loaded.style_size == 32 and loaded.encoder_sha256 == encoder_sha
    assert loaded.mean.shape == loaded.std.shape == (3, FEATURES, 1, 1)
    mean, std = loaded.stats("sub_b")
    assert mean.shape == (1, FEATURES, 1, 1)
    assert torch.equal(mean.flatten(), torch.tensor(by_id["sub_b"]["mean"]))
    assert torch.equal(std.flatten(), torch.tensor(by_id["sub_b"]["std"]))
    assert is_bank(str(bank)) and is_bank("s3://b/BANK.PARQUET") and not is_bank(str(files["a"]))


def test_stylize_with_bank_after_deleting_styles(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    styles, contents = tmp_path / "styles", tmp_path / "in"
    write_styles(styles)
    write_contents(contents)
    from_images = run_stylize(stylize_config(weights, str(contents), (str(styles),), str(tmp_path / "out-images")))
    assert from_images["ok"] == 6

    bank = tmp_path / "bank.parquet"
    index(weights, styles, bank)
    shutil.rmtree(styles)  # the bank alone must do

    summary = run_stylize(stylize_config(weights, str(contents), (str(bank),), str(tmp_path / "out-bank")))
    assert (summary["ok"], summary["error"], summary["total"]) == (6, 0, 6)
    assert sorted(summary["styles"]) == ["a", "c", "sub_b"]
    expected = pngs(tmp_path / "out-images")
    actual = pngs(tmp_path / "out-bank")
    assert sorted(actual) == [f"{s}/{k}.png" for s in ("a", "c", "sub_b") for k in ("deep/y", "x")]
    assert sorted(actual) == sorted(expected)
    for key, pixels in expected.items():
        assert np.array_equal(actual[key], pixels), key


def test_incremental_index(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    styles, bank = tmp_path / "styles", tmp_path / "bank.parquet"
    files = write_styles(styles)
    assert index(weights, styles, bank)["encoded"] == 3
    first = rows(bank)

    again = index(weights, styles, bank)
    assert (again["styles"], again["encoded"], again["unchanged"], again["removed"]) == (3, 0, 3, 0)
    assert rows(bank) == first

    images.write(styles / "more" / "d.jpg", images.encoded(33, 44, seed=13))
    added = index(weights, styles, bank)
    assert (added["styles"], added["encoded"], added["unchanged"], added["removed"]) == (4, 1, 3, 0)
    after_add = rows(bank)
    assert sorted(after_add) == ["a", "c", "more_d", "sub_b"]
    assert {k: after_add[k] for k in first} == first
    mean, _ = reference_stats(weights.vgg_state, (styles / "more" / "d.jpg").read_bytes())
    assert_close(after_add["more_d"]["mean"], mean)

    changed = images.encoded(48, 32, "PNG", seed=99)  # other content, other size
    assert len(changed) != files["sub_b"].stat().st_size
    files["sub_b"].write_bytes(changed)
    redone = index(weights, styles, bank)
    assert (redone["styles"], redone["encoded"], redone["unchanged"], redone["removed"]) == (4, 1, 3, 0)
    after_change = rows(bank)
    assert after_change["sub_b"]["content_sha256"] == hashlib.sha256(changed).hexdigest()
    assert after_change["sub_b"]["size"] == len(changed)
    assert after_change["sub_b"]["mean"] != first["sub_b"]["mean"]
    mean, std = reference_stats(weights.vgg_state, changed)
    assert_close(after_change["sub_b"]["mean"], mean)
    assert_close(after_change["sub_b"]["std"], std)
    assert {k: after_change[k] for k in ("a", "c", "more_d")} == {k: after_add[k] for k in ("a", "c", "more_d")}

    files["c"].unlink()
    removed = index(weights, styles, bank)
    assert (removed["styles"], removed["encoded"], removed["unchanged"], removed["removed"]) == (3, 0, 3, 1)
    assert sorted(rows(bank)) == ["a", "more_d", "sub_b"]

    # Unchanged means unread: garbage of the same size and mtime keeps the old row, no error.
    stat = files["a"].stat()
    files["a"].write_bytes(b"\0" * stat.st_size)
    os.utime(files["a"], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    untouched = index(weights, styles, bank)
    assert (untouched["encoded"], untouched["unchanged"], untouched["errors"]) == (0, 3, [])
    assert rows(bank)["a"] == first["a"]


def test_index_single_image_by_relative_path(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One image is a listing too; its URI is stored absolute, as listed directories are
    (Ray workers may run in another directory), so indexing its folder later changes nothing."""
    files = write_styles(tmp_path / "styles")
    monkeypatch.chdir(tmp_path)
    bank = tmp_path / "bank.parquet"
    result = index(weights, "styles/a.jpg", bank)
    assert (result["styles"], result["encoded"], result["errors"]) == (1, 1, [])
    assert rows(bank)["a"]["source_uri"] == str(files["a"])
    folder = index(weights, "styles", bank)
    assert (folder["styles"], folder["encoded"], folder["unchanged"], folder["removed"]) == (3, 2, 1, 0)


def test_unreadable_style_is_reported_not_fatal(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    styles, bank = tmp_path / "styles", tmp_path / "bank.parquet"
    images.write(styles / "good.jpg", images.encoded(40, 32, seed=3))
    images.write(styles / "broken.jpg", images.truncated_jpeg())
    images.write(styles / "empty.png", b"")
    images.write(styles / "text.png", b"this is not an image")
    result = index(weights, styles, bank)
    assert (result["styles"], result["encoded"]) == (1, 1)
    bad = [str(styles / name) for name in ("broken.jpg", "empty.png", "text.png")]
    assert sorted(e["uri"] for e in result["errors"]) == bad
    assert all(e["error"] for e in result["errors"])
    assert sorted(rows(bank)) == ["good"]
    assert load_bank(str(bank)).ids == ["good"]


# ---------------------------------------------------------------------------------------------
# refusals


def test_bank_from_another_encoder_is_refused(
    ray_cluster: str, weights: WeightFiles, other_vgg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    styles, bank, contents = tmp_path / "styles", tmp_path / "bank.parquet", tmp_path / "in"
    write_styles(styles)
    write_contents(contents)
    index(weights, styles, bank)
    before = bank.read_bytes()
    other_sha = load_encoder(str(other_vgg)).sha256
    assert other_sha != load_encoder(str(weights.vgg)).sha256

    with pytest.raises(ConfigError, match="encoder"):
        index(weights, styles, bank, model=model(weights, other_vgg))
    with pytest.raises(ConfigError, match="style-size"):
        index(weights, styles, bank, sizing=Sizing(content_size=32, style_size=48))
    assert bank.read_bytes() == before  # a refused update leaves the bank as it was
    with pytest.raises(ConfigError, match="encoder"):
        load_bank(str(bank), other_sha)

    code = main(stylize_argv(weights, contents, bank, tmp_path / "out", "--encoder", str(other_vgg)))
    assert code == 2  # the user's configuration: bank and encoder do not go together
    line = one_error_line(capsys)
    assert "encoder" in line and str(bank) in line
    assert not (tmp_path / "out").exists()


def test_parquet_that_is_not_a_bank(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    styles, contents = tmp_path / "styles", tmp_path / "in"
    write_styles(styles)
    write_contents(contents)
    other = tmp_path / "list.parquet"
    pq.write_table(pa.table({"uri": [str(styles / "a.jpg")]}), other)
    before = other.read_bytes()

    with pytest.raises(ConfigError, match="not an adain-ray style bank"):
        load_bank(str(other))
    with pytest.raises(ConfigError, match="not an adain-ray style bank"):
        index(weights, styles, other)
    assert other.read_bytes() == before
    with pytest.raises(ConfigError, match=r"\.parquet"):
        index(weights, styles, tmp_path / "bank.csv")

    code = main(stylize_argv(weights, contents, other, tmp_path / "out"))
    assert code == 2
    assert "not an adain-ray style bank" in one_error_line(capsys)


def test_bank_excludes_coral_weights_and_other_styles(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    styles, bank, contents = tmp_path / "styles", tmp_path / "bank.parquet", tmp_path / "in"
    write_styles(styles)
    write_contents(contents)
    index(weights, styles, bank)

    code = main(stylize_argv(weights, contents, bank, tmp_path / "out", "--preserve-color", "coral"))
    assert code == 2
    assert "coral" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()

    out = str(tmp_path / "out")
    with pytest.raises(ConfigError, match="style-weights"):
        run_stylize(stylize_config(weights, str(contents), (str(bank),), out, controls=Controls(style_weights=(1.0,))))
    with pytest.raises(ConfigError, match="only --style"):
        run_stylize(stylize_config(weights, str(contents), (str(bank), str(styles / "a.jpg")), out))


# ---------------------------------------------------------------------------------------------
# object storage and the CLI


def test_bank_on_s3(ray_cluster: str, weights: WeightFiles, s3_server: S3Server, bucket: str) -> None:
    s3 = s3_server.client()
    s3.put_object(Bucket=bucket, Key="styles/one.png", Body=images.encoded(32, 40, "PNG", seed=4))
    s3.put_object(Bucket=bucket, Key="styles/sub/two.jpg", Body=images.encoded(44, 32, seed=5))
    s3.put_object(Bucket=bucket, Key="photos/x.jpg", Body=images.encoded(40, 40, seed=6))
    s3.put_object(Bucket=bucket, Key="photos/nested/y.png", Body=images.encoded(36, 44, "PNG", seed=7))
    bank = f"s3://{bucket}/banks/bank.parquet"

    result = index(weights, f"s3://{bucket}/styles/", bank)
    assert (result["styles"], result["encoded"], result["errors"]) == (2, 2, [])
    again = index(weights, f"s3://{bucket}/styles/", bank)
    assert (again["encoded"], again["unchanged"]) == (0, 2)
    loaded = load_bank(bank, load_encoder(str(weights.vgg)).sha256)
    assert loaded.ids == ["one", "sub_two"]

    s3.delete_object(Bucket=bucket, Key="styles/one.png")
    s3.delete_object(Bucket=bucket, Key="styles/sub/two.jpg")
    summary = run_stylize(stylize_config(weights, f"s3://{bucket}/photos", (bank,), f"s3://{bucket}/out"))
    assert (summary["ok"], summary["error"], summary["total"]) == (4, 0, 4)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]}
    assert {"out/one/x.png", "out/one/nested/y.png", "out/sub_two/x.png", "out/sub_two/nested/y.png"} <= keys


def test_cli_index_and_config(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    styles, bank = tmp_path / "styles", tmp_path / "bank.parquet"
    write_styles(styles)
    images.write(styles / "bad.png", b"not an image")
    code = main(
        [
            *("styles", "index", "--styles", str(styles), "--output", str(bank), "--encoder", str(weights.vgg)),
            *("--style-size", "32", "--device", "cpu", "--actors", "1", "--batch-size", "2"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"bank {bank}: 3 styles (3 encoded, 0 unchanged, 0 removed, 1 unreadable)" in captured.out
    assert f"adain: skipped style {styles / 'bad.png'}:" in captured.err
    assert sorted(rows(bank)) == ["a", "c", "sub_b"]
    assert pq.read_table(bank).schema.metadata[b"adain.style_size"] == b"32"

    images.write(styles / "new.jpg", images.encoded(32, 32, seed=14))
    options = {
        "styles": str(styles),
        "output": str(bank),
        "encoder": str(weights.vgg),
        "style_size": 32,
        "device": "cpu",
        "actors": 1,
        "batch_size": 2,
    }
    config = tmp_path / "index.yaml"
    config.write_text(yaml.safe_dump(options))
    code = main(["styles", "index", "--config", str(config)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"bank {bank}: 4 styles (1 encoded, 3 unchanged, 0 removed, 1 unreadable)" in captured.out
    assert sorted(rows(bank)) == ["a", "c", "new", "sub_b"]


def hand_written_bank(path: Path, encoder: Path, columns: dict[str, pa.Array]) -> None:
    """A bank as people write one with pandas: the columns stylize needs (and `columns`), and the metadata."""
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "style_id": ["a", "old"],
            "mean": [rng.random(FEATURES).astype("f4") for _ in range(2)],
            "std": [(rng.random(FEATURES) + 0.5).astype("f4") for _ in range(2)],
            **columns,
        }
    )
    meta = {
        b"adain.format": b"adain-ray.style-bank/1",
        b"adain.encoder_sha256": load_encoder(str(encoder)).sha256.encode(),
        b"adain.style_size": b"32",
    }
    pq.write_table(table.replace_schema_metadata(meta), path)


def test_index_into_a_bank_written_by_hand_encodes_every_image_again(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog
) -> None:
    """A bank of only style_id, mean and std is one stylize takes; indexing into it was a
    KeyError traceback: it has no rows to reuse, says so in one line, and encodes every image."""
    styles, bank = tmp_path / "styles", tmp_path / "minimal.parquet"
    write_styles(styles)
    hand_written_bank(bank, weights.vgg, {})
    argv = ["styles", "index", "--style", str(styles), "--output", str(bank), "--encoder", str(weights.vgg)]
    with caplog.at_level("WARNING"):
        code = main([*argv, "--style-size", "32", "--device", "cpu", "--actors", "1", "--batch-size", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"bank {bank}: 3 styles (3 encoded, 0 unchanged, 0 removed, 0 unreadable)" in captured.out
    (warning,) = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warning == (
        f"{bank}: every style image is encoded again, none of the bank's rows can be reused "
        "(no source_uri, size, mtime_ns, content_sha256 column)"
    )
    assert sorted(rows(bank)) == ["a", "c", "sub_b"] and rows(bank)["a"]["source_uri"] == str(styles / "a.jpg")


@pytest.mark.parametrize(
    "columns",
    [
        {
            "source_uri": ["/s/a.jpg", "/s/old.jpg"],
            "size": ["big", "small"],
            "mtime_ns": [1, 2],
            "content_sha256": ["x", "y"],
        },
        {"source_uri": [1, 2], "size": [1, 2], "mtime_ns": [1.5, 2.5], "content_sha256": ["x", "y"]},
    ],
    ids=["text-sizes", "fractional-times"],
)
def test_bank_columns_of_other_types_are_nothing_to_reuse(
    weights: WeightFiles, tmp_path: Path, columns: dict[str, list], caplog
) -> None:
    """Sizes that are text would have failed only when the bank was written, after the encoding."""
    hand_written_bank(tmp_path / "bank.parquet", weights.vgg, columns)
    with caplog.at_level("WARNING"):
        assert reusable_rows(read_bank_table(str(tmp_path / "bank.parquet")), "bank.parquet") == {}
    assert "bank.parquet: every style image is encoded again" in caplog.text


def test_cli_index_needs_styles_and_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["styles", "index", "--output", str(tmp_path / "bank.parquet")]) == 2
    assert "needs --style and --output" in one_error_line(capsys)  # --style, as in every command


# A bank written with float64 statistics: finite and positive there, but not all of them as float32.
WIDE = pa.schema(
    [f if f.name not in ("mean", "std") else pa.field(f.name, pa.list_(pa.float64(), 512)) for f in BANK_SCHEMA]
)


@pytest.mark.parametrize(
    ("row", "words"),
    [
        (bank_row("huge", mean=[1e39] * 512), "NaN or inf"),
        (bank_row("huge", mean=[0.1] * 511 + [-1e39]), "NaN or inf"),
        (bank_row("tiny", std=[1e-50] * 512), "not positive"),
    ],
    ids=["mean-past-float32", "one-negative-mean-past-float32", "std-zero-in-float32"],
)
def test_bank_statistics_are_checked_as_the_model_takes_them(tmp_path: Path, row: dict, words: str) -> None:
    """Statistics the float32 model would make inf or 0 are refused in one line, with no numpy warning;
    float64 values that float32 holds (its largest, a subnormal std) load."""
    path = write_bank(tmp_path / "bad.parquet", [bank_row("fine"), row], WIDE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match=words) as caught:
            load_bank(path)
    assert "\n" not in str(caught.value)
    edge = write_bank(tmp_path / "edge.parquet", [bank_row("edge", mean=[3.4e38] * 512, std=[1e-44] * 512)], WIDE)
    bank = load_bank(edge)
    assert torch.isfinite(bank.mean).all() and (bank.std > 0).all()
