"""Acceptance tests of the distributed stylization job (`adain stylize`) on the session's Ray.

What a user relies on: bad inputs become error rows and never stop the job, outputs land at
documented keys and sizes, re-runs and resumed runs redo nothing, no input key can make the
job write outside its output prefix, and the CLI/YAML/Ray-job entrypoints behave as documented.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline.cli import main
from pipeline.config import Controls, ModelConfig, OutputSpec, Scale, Sizing, StylizeConfig
from pipeline.data.stylize import run_stylize
from pipeline.errors import AdainError
from tests import images
from tests.conftest import S3Server, WeightFiles

REPO = Path(__file__).resolve().parents[1]
HEX64 = re.compile(r"[0-9a-f]{64}")


# ---------------------------------------------------------------------------------------------
# helpers


def make_config(
    weights: WeightFiles,
    input: str,
    styles: tuple[str, ...],
    output: str,
    *,
    fmt: str = "png",
    overwrite: bool = False,
    max_side: int = 0,
    **kw: Any,
) -> StylizeConfig:
    """A small, CPU-only job over 32 px images with the test weights."""
    return StylizeConfig(
        input=input,
        styles=styles,
        output=OutputSpec(output, fmt, overwrite=overwrite),
        model=ModelConfig(str(weights.vgg), str(weights.decoder), "cpu"),
        sizing=Sizing(content_size=32, style_size=32, max_side=max_side),
        **kw,
    )


def local_manifest(out: Path) -> list[dict[str, Any]]:
    """Every manifest row of every run under a local output directory."""
    parts = sorted((out / "_manifest").glob("*.parquet"))
    assert parts, f"no manifest parts under {out / '_manifest'}"
    return pa.concat_tables([pq.read_table(p) for p in parts]).to_pylist()


def s3_manifest(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every manifest row under s3://bucket/prefix/_manifest/."""
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/_manifest/").get("Contents", [])
    assert listing, f"no manifest parts under s3://{bucket}/{prefix}/_manifest/"
    tables = [pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())) for o in listing]
    return pa.concat_tables(tables).to_pylist()


def s3_keys(s3: Any, bucket: str) -> set[str]:
    """Every object key in the bucket, to see what a run added anywhere in it."""
    keys: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys |= {o["Key"] for o in page.get("Contents", [])}
    return keys


def output_files(out: Path) -> dict[str, tuple[int, int]]:
    """Output images (not the manifest or summaries) -> (inode, mtime_ns)."""
    found = {}
    for path in out.rglob("*"):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and not rel.startswith(("_manifest/", "_runs/")):
            stat = path.stat()
            found[rel] = (stat.st_ino, stat.st_mtime_ns)
    return found


def all_files(root: Path) -> set[Path]:
    """Every file below root, to see what a run added anywhere on disk."""
    return {p for p in root.rglob("*") if p.is_file()}


def expected_size(width: int, height: int, size: int = 32) -> tuple[int, int]:
    """The documented resize: shorter side to `size`, longer side int(size * long / short)."""
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Manifest rows per status, to compare with the run summary."""
    return {s: sum(r["status"] == s for r in rows) for s in ("ok", "error", "skipped")}


def p_with_transparency(width: int = 48, height: int = 40) -> bytes:
    """A palette PNG with a transparent index (tests/images.py has no such helper)."""
    img = Image.fromarray(images.gradient(width, height, seed=7), "RGB").convert("P")
    buffer = io.BytesIO()
    img.save(buffer, "PNG", transparency=int(np.asarray(img)[0, 0]))
    return buffer.getvalue()


def one_line_error(err: str) -> str:
    """The CLI's error output: exactly one line, 'adain: error: ...', never a traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("adain: error: "), err
    return lines[0]


BAD_INPUTS = {  # name -> (bytes, words the error reason must contain)
    "truncated.jpg": (images.truncated_jpeg(), "truncated"),
    "empty.jpg": (b"", "empty"),
    "text.jpg": (b"this is not an image, just text named .jpg\n", "not an image"),
    "bomb.png": (images.huge_header_png(), "30000x30000"),
    # 32x1600 once its shorter side is 32, 1x64 once its longer is at most BAD_MAX_SIDE: too small for VGG
    "strip.jpg": (images.encoded(8, 400), "too small"),
}
BAD_MAX_SIDE = 64  # --max-side for the runs over BAD_INPUTS (ODD_INPUTS are smaller)
ODD_INPUTS = {  # name -> (bytes, expected output (width, height))
    "gray.png": (images.encoded(48, 40, "PNG", "L"), (38, 32)),
    "la.png": (images.encoded(48, 40, "PNG", "LA"), (38, 32)),
    "palette.png": (images.encoded(48, 40, "PNG", "P"), (38, 32)),
    "palette_transparent.png": (p_with_transparency(48, 40), (38, 32)),
    "rgba.png": (images.encoded(48, 40, "PNG", "RGBA"), (38, 32)),
    "cmyk.jpg": (images.encoded(48, 40, "JPEG", "CMYK"), (38, 32)),
    "sixteen.png": (images.encoded(48, 40, "PNG", "I;16"), (38, 32)),
    # stored 64x48 with EXIF orientation 6: upright it is 48x64, so 32x42 (not 42x32)
    "rotated.jpg": (images.exif_rotated_jpeg(64, 48), (32, 42)),
    "good.jpg": (images.encoded(48, 40, "JPEG", seed=3), (38, 32)),
    "UPPER.JPG": (images.encoded(40, 48, "JPEG", seed=4), (32, 38)),
}


def check_mixed_inputs_run(summary: dict[str, Any], rows: list[dict[str, Any]], styles: list[str]) -> None:
    """Shared checks for a run over BAD_INPUTS + ODD_INPUTS (+ notes.txt)."""
    names = {*BAD_INPUTS, *ODD_INPUTS}
    total = len(names) * len(styles)
    assert summary["inputs"] == len(names)
    assert summary["ok"] + summary["error"] + summary["skipped"] == summary["total"] == total
    assert counts(rows) == {k: summary[k] for k in ("ok", "error", "skipped")}
    assert (summary["ok"], summary["error"], summary["skipped"]) == (
        len(ODD_INPUTS) * len(styles),
        len(BAD_INPUTS) * len(styles),
        0,
    )
    # one row per (input, style), and notes.txt is not an input
    pairs = [(r["rel_path"], r["style"]) for r in rows]
    assert len(pairs) == len(set(pairs)) == total
    assert {rel for rel, _ in pairs} == names
    for row in rows:
        name = row["rel_path"]
        if name in BAD_INPUTS:
            assert row["status"] == "error", row
            assert row["output_uri"] is None
            assert BAD_INPUTS[name][1] in (row["error"] or ""), (name, row["error"])
        else:
            assert row["status"] == "ok", row
            assert row["error"] is None
            assert (row["width"], row["height"]) == ODD_INPUTS[name][1], name


# ---------------------------------------------------------------------------------------------
# 1. bad input never stops the job


@pytest.mark.parametrize(("codec", "fmt"), [("tasks", "png"), ("model", "jpg")], ids=["pillow", "jpeg-on-model"])
def test_bad_and_odd_inputs_in_a_directory(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, codec: str, fmt: str
) -> None:
    """Corrupt, empty, fake and bomb files become error rows with a reason; odd-but-valid images
    (every Pillow mode, CMYK, 16-bit, EXIF-rotated) are stylized at the right upright size,
    whether JPEGs are decoded and encoded in the CPU tasks or on the model actor."""
    src = tmp_path / "in"
    for name, (data, _) in {**BAD_INPUTS, **ODD_INPUTS}.items():
        images.write(src / name, data)
    images.write(src / "notes.txt", b"not an input\n")
    images.write(src / os.fsdecode(b"caf\xe9.jpg"), images.encoded(40, 32))  # not UTF-8: left out, as listed
    styles = [
        images.write(tmp_path / "styles" / "wave.png", images.encoded(32, 32, "PNG", seed=10)),
        images.write(tmp_path / "styles" / "ink.jpg", images.encoded(40, 32, seed=11)),
    ]
    out = tmp_path / "out"
    scale = Scale(jpeg_codec=codec)
    cfg = make_config(weights, str(src), tuple(map(str, styles)), str(out), fmt=fmt, scale=scale, max_side=BAD_MAX_SIDE)
    summary = run_stylize(cfg)

    rows = local_manifest(out)
    check_mixed_inputs_run(summary, rows, ["wave", "ink"])
    for row in rows:
        if row["status"] == "ok":
            stem = row["rel_path"].rsplit(".", 1)[0]
            assert row["output_uri"] == f"{out}/{row['style']}/{stem}.{fmt}"
            with Image.open(row["output_uri"]) as img:
                assert img.size == ODD_INPUTS[row["rel_path"]][1]
    written = set(output_files(out))
    assert written == {f"{s}/{n.rsplit('.', 1)[0]}.{fmt}" for s in ("wave", "ink") for n in ODD_INPUTS}


def test_bad_inputs_on_s3(ray_cluster: str, weights: WeightFiles, s3_server: S3Server, bucket: str) -> None:
    """The same guarantees when inputs, styles and outputs are all in an object store."""
    s3 = s3_server.client()
    for name, (data, _) in {**BAD_INPUTS, **ODD_INPUTS}.items():
        s3.put_object(Bucket=bucket, Key=f"photos/{name}", Body=data)
    s3.put_object(Bucket=bucket, Key="photos/notes.txt", Body=b"not an input")
    s3.put_object(Bucket=bucket, Key="styles/wave.png", Body=images.encoded(32, 32, "PNG", seed=10))
    styles = (f"s3://{bucket}/styles/wave.png",)
    cfg = make_config(weights, f"s3://{bucket}/photos/", styles, f"s3://{bucket}/out", max_side=BAD_MAX_SIDE)
    summary = run_stylize(cfg)

    rows = s3_manifest(s3, bucket, "out")
    check_mixed_inputs_run(summary, rows, ["wave"])
    for row in rows:
        if row["status"] == "ok":
            stem = row["rel_path"].rsplit(".", 1)[0]
            assert row["output_uri"] == f"s3://{bucket}/out/wave/{stem}.png"
            body = s3.get_object(Bucket=bucket, Key=f"out/wave/{stem}.png")["Body"].read()
            with Image.open(io.BytesIO(body)) as img:
                assert img.size == ODD_INPUTS[row["rel_path"]][1]


# ---------------------------------------------------------------------------------------------
# 2. keys, sizes, mixed-size batches


MIXED = {"tall.jpg": (32, 48), "wide.png": (48, 32), "square.jpg": (40, 40), "sub/pano.v2.jpg": (64, 40)}


def test_outputs_at_documented_keys_and_sizes(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    """OUTPUT/STYLE/REL_WITHOUT_EXT.FMT for each of 2 styles, aspect kept, and images of different
    sizes in one batch come out exactly as when each is run alone (no padding)."""
    src = tmp_path / "in"
    for i, (name, (w, h)) in enumerate(MIXED.items()):
        images.write(src / name, images.encoded(w, h, "PNG" if name.endswith(".png") else "JPEG", seed=20 + i))
    styles = (
        str(images.write(tmp_path / "styles" / "wave.png", images.encoded(32, 32, "PNG", seed=30))),
        str(images.write(tmp_path / "styles" / "Starry Night.jpg", images.encoded(48, 32, seed=31))),
    )
    out = tmp_path / "out"
    summary = run_stylize(make_config(weights, str(src), styles, str(out)))  # batch 16: one batch
    assert (summary["ok"], summary["total"], summary["styles"]) == (8, 8, ["wave", "Starry_Night"])

    expected = {f"{s}/{n.rsplit('.', 1)[0]}.png" for s in summary["styles"] for n in MIXED}
    assert set(output_files(out)) == expected
    for name, (w, h) in MIXED.items():
        for style in summary["styles"]:
            with Image.open(out / style / f"{name.rsplit('.', 1)[0]}.png") as img:
                assert img.size == expected_size(w, h)
                assert min(img.size) == 32
                assert abs(img.width / img.height - w / h) < 0.05
    ok_rows = {(r["rel_path"], r["style"]): r for r in local_manifest(out)}
    assert ok_rows[("sub/pano.v2.jpg", "wave")]["output_uri"] == f"{out}/wave/sub/pano.v2.png"

    alone = tmp_path / "alone"
    run_stylize(make_config(weights, str(src / "square.jpg"), styles[:1], str(alone)))
    with Image.open(alone / "wave" / "square.png") as single, Image.open(out / "wave" / "square.png") as batched:
        a, b = np.asarray(single, np.int16), np.asarray(batched, np.int16)
        assert np.array_equal(a, b), f"batched output differs from the single run (max diff {np.abs(a - b).max()})"


# ---------------------------------------------------------------------------------------------
# 3. re-runs


def test_rerun_skips_everything_and_overwrite_redoes(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    """A second identical run writes nothing and says so; --overwrite redoes every output."""
    src = tmp_path / "in"
    images.write(src / "a.jpg", images.encoded(40, 48, seed=40))
    images.write(src / "b" / "c.png", images.encoded(48, 40, "PNG", seed=41))
    style = str(images.write(tmp_path / "wave.png", images.encoded(32, 32, "PNG", seed=42)))
    out = tmp_path / "out"
    cfg = make_config(weights, str(src), (style,), str(out))

    first = run_stylize(cfg)
    assert (first["ok"], first["total"]) == (2, 2)
    before = output_files(out)
    assert set(before) == {"wave/a.png", "wave/b/c.png"}

    second = run_stylize(cfg)
    assert second["run_id"] != first["run_id"]
    assert (second["skipped"], second["ok"], second["error"], second["total"]) == (2, 0, 0, 2)
    assert output_files(out) == before  # same files, same inodes and mtimes, nothing new
    rows = local_manifest(out)
    assert {r["run_id"] for r in rows} == {first["run_id"], second["run_id"]}
    by_run = {rid: [r for r in rows if r["run_id"] == rid] for rid in (first["run_id"], second["run_id"])}
    assert counts(by_run[first["run_id"]]) == {"ok": 2, "error": 0, "skipped": 0}
    assert counts(by_run[second["run_id"]]) == {"ok": 0, "error": 0, "skipped": 2}
    assert (out / "_runs" / f"{second['run_id']}.json").is_file()

    third = run_stylize(make_config(weights, str(src), (style,), str(out), overwrite=True))
    assert (third["ok"], third["skipped"], third["total"]) == (2, 0, 2)
    after = output_files(out)
    assert set(after) == set(before)
    assert all(after[k] != before[k] for k in before), "--overwrite must rewrite every output"


# ---------------------------------------------------------------------------------------------
# 4. kill and resume

# Inputs flow in blocks of four batches, so outputs appear steadily and a kill after the
# first few dozen lands mid-run.
KILL_INPUTS = 300
KILL_AFTER = 40


def test_killed_job_resumes_without_redoing_work(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    """SIGKILL the driver mid-job, run again: finished outputs are kept untouched, the rest are
    produced, every output exists exactly once, and no partial file is visible."""
    src = tmp_path / "in"
    for i in range(KILL_INPUTS):
        images.write(src / f"img{i:04d}.png", images.encoded(32, 32, "PNG", seed=i))
    style = str(images.write(tmp_path / "wave.png", images.encoded(32, 32, "PNG", seed=5000)))
    out = tmp_path / "out"
    style_dir = out / "wave"
    cmd = [
        sys.executable, "-m", "pipeline.cli", "stylize", "--address", ray_cluster,
        "--input", str(src), "--style", style, "--output", str(out),
        "--encoder", str(weights.vgg), "--decoder", str(weights.decoder), "--device", "cpu",
        "--content-size", "32", "--style-size", "32", "--format", "png", "--batch-size", "2",
    ]  # fmt: skip
    log = tmp_path / "driver.log"
    with open(log, "wb") as handle:
        driver = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 180
            seen = 0
            while time.monotonic() < deadline and driver.poll() is None:
                seen = len([e for e in os.scandir(style_dir) if e.name.endswith(".png")]) if style_dir.is_dir() else 0
                if seen >= KILL_AFTER:
                    break
                time.sleep(0.005)
            assert driver.poll() is None, f"the job ended before it could be killed:\n{log.read_text()[-3000:]}"
            assert seen >= KILL_AFTER, "no outputs appeared within the deadline"
            driver.send_signal(signal.SIGKILL)
        finally:
            driver.kill()
            driver.wait()

    # Let the killed job's workers go; the state the next run starts from is what is on disk then.
    previous: dict[str, tuple[int, int]] = {}
    for _ in range(100):
        time.sleep(0.3)
        current = output_files(out)
        if current == previous:
            break
        previous = current
    done = {k: v for k, v in previous.items() if not k.rsplit("/", 1)[-1].startswith(".tmp-")}
    assert 0 < len(done) < KILL_INPUTS, f"{len(done)} outputs at kill time: the kill came too late"

    summary = run_stylize(make_config(weights, str(src), (style,), str(out), scale=Scale(batch_size=2)))
    assert summary["inputs"] == KILL_INPUTS
    assert summary["error"] == 0
    assert summary["skipped"] == len(done)
    assert summary["ok"] + summary["skipped"] == summary["total"] == KILL_INPUTS

    rows = [r for r in local_manifest(out) if r["run_id"] == summary["run_id"]]
    assert len(rows) == KILL_INPUTS
    for row in rows:
        key = f"wave/{row['rel_path'].rsplit('.', 1)[0]}.png"
        assert row["status"] == ("skipped" if key in done else "ok"), row

    after = output_files(out)
    expected = {f"wave/img{i:04d}.png" for i in range(KILL_INPUTS)}
    finals = {k for k in after if not k.rsplit("/", 1)[-1].startswith(".")}
    assert finals == expected  # every output exactly once, at its key
    leftovers = set(after) - finals
    assert all(k.rsplit("/", 1)[-1].startswith(".tmp-") for k in leftovers), leftovers
    assert {k: after[k] for k in done} == done  # finished outputs untouched
    for key in expected:
        with Image.open(out / key) as img:
            img.load()
            assert img.size == (32, 32)


# ---------------------------------------------------------------------------------------------
# 5. path safety


def _assert_keys_safe(rows: list[dict[str, Any]], output: str) -> None:
    for row in rows:
        assert ".." not in row["rel_path"].split("/"), row["rel_path"]
        assert not row["rel_path"].startswith("/"), row["rel_path"]
        if row["output_uri"] is not None:
            assert row["output_uri"].startswith(output.rstrip("/") + "/"), row["output_uri"]
            assert ".." not in row["output_uri"].split("/"), row["output_uri"]


def test_local_list_files_never_write_outside_output(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    """Entries with '..' segments and absolute paths in .txt and .csv list files: every output
    lies under OUTPUT at a sanitised key, and nothing is written anywhere else."""
    data = tmp_path / "data"
    images.write(data / "in" / "a.jpg", images.encoded(40, 40, seed=50))
    images.write(data / "in" / "sub" / "b.jpg", images.encoded(40, 48, seed=51))
    images.write(tmp_path / "escape.jpg", images.encoded(48, 40, seed=52))
    style = str(images.write(tmp_path / "styles" / "wave.png", images.encoded(32, 32, "PNG", seed=53)))
    entries = [
        "../in/a.jpg",  # relative to the list file's folder
        str(data / "in" / "sub" / "b.jpg"),  # absolute
        f"{data}/in/x/../../../escape.jpg",  # climbs out of the input root (and of OUTPUT's parent)
        f"{data}/in/x/../../../../../../../../../../{tmp_path.relative_to('/')}/escape.jpg",
    ]
    lists = data / "lists"
    images.write(lists / "inputs.txt", ("# inputs\n" + "\n".join(entries) + "\n").encode())
    images.write(lists / "inputs.csv", ("id,uri\n" + "".join(f"{i},{e}\n" for i, e in enumerate(entries))).encode())

    for list_file, root in ((lists / "inputs.txt", str(data / "in")), (lists / "inputs.csv", None)):
        out = tmp_path / f"out-{list_file.suffix[1:]}"
        before = all_files(tmp_path)
        summary = run_stylize(make_config(weights, str(list_file), (style,), str(out), input_root=root))
        assert (summary["ok"], summary["total"]) == (len(entries), len(entries)), summary
        new = all_files(tmp_path) - before
        assert new, "the job wrote nothing"
        outside = [p for p in new if out not in p.parents]
        assert not outside, f"written outside OUTPUT: {outside}"
        rows = local_manifest(out)
        _assert_keys_safe(rows, str(out))
        for row in rows:
            assert Path(row["output_uri"]).resolve().is_relative_to(out.resolve())
            assert Path(row["output_uri"]).is_file()
        assert len({r["output_uri"] for r in rows}) >= 3


def test_s3_list_file_never_writes_outside_output(
    ray_cluster: str, weights: WeightFiles, s3_server: S3Server, bucket: str
) -> None:
    """A Parquet list on S3 whose `uri` column holds keys with literal '..' segments and
    backslashes: nothing is written outside the output prefix and every key is sanitised."""
    s3 = s3_server.client()
    objects = {
        "a/../../escape.jpg": images.encoded(40, 40, seed=60),
        "b\\..\\..\\evil.jpg": images.encoded(40, 40, seed=64),  # one key, backslashes included
        "photos/ok.jpg": images.encoded(40, 48, seed=61),
        "photos/sub/c.jpg": images.encoded(48, 40, seed=63),
        "styles/wave.png": images.encoded(32, 32, "PNG", seed=62),
    }
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    uris = ["a/../../escape.jpg", "b\\..\\..\\evil.jpg", "photos/ok.jpg", f"s3://{bucket}/photos/sub/c.jpg"]
    buffer = io.BytesIO()
    pq.write_table(pa.table({"n": list(range(len(uris))), "uri": uris}), buffer)
    s3.put_object(Bucket=bucket, Key="inputs.parquet", Body=buffer.getvalue())
    before = s3_keys(s3, bucket)

    style = f"s3://{bucket}/styles/wave.png"
    summary = run_stylize(make_config(weights, f"s3://{bucket}/inputs.parquet", (style,), f"s3://{bucket}/out"))
    assert summary["total"] == len(uris) and summary["ok"] >= 3, summary

    new = s3_keys(s3, bucket) - before
    assert new and all(k.startswith("out/") for k in new), sorted(new)
    assert not any(".." in k.replace("\\", "/").split("/") for k in new), sorted(new)
    assert {"out/wave/b/evil.png", "out/wave/photos/ok.png", "out/wave/photos/sub/c.png"} <= new
    rows = s3_manifest(s3, bucket, "out")
    _assert_keys_safe(rows, f"s3://{bucket}/out")
    assert {r["rel_path"] for r in rows} == {"a/escape.jpg", "b/evil.jpg", "photos/ok.jpg", "photos/sub/c.jpg"}


# ---------------------------------------------------------------------------------------------
# 6. CLI and YAML


def _yaml_job(weights: WeightFiles, tmp_path: Path, **extra: Any) -> tuple[Path, Path]:
    src = tmp_path / "in"
    images.write(src / "a.jpg", images.encoded(40, 48, seed=70))
    images.write(src / "b.png", images.encoded(48, 40, "PNG", seed=71))
    style = images.write(tmp_path / "styles" / "wave.png", images.encoded(32, 32, "PNG", seed=72))
    out = tmp_path / "out"
    options = {
        "input": str(src),
        "style": [str(style)],
        "output": str(out),
        "encoder": str(weights.vgg),
        "decoder": str(weights.decoder),
        "device": "cpu",
        "content_size": 32,
        "style_size": 32,
        "format": "png",
        **extra,
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(options))
    return path, out


def test_cli_yaml_config_and_flag_override(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`adain stylize --config job.yaml` runs the job from the file; a flag beats the file."""
    config_path, out = _yaml_job(weights, tmp_path)
    assert main(["stylize", "--config", str(config_path)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"run \S+: 2 ok, 0 error, 0 skipped of 2", printed), printed
    assert f"manifest: {out}/_manifest" in printed
    assert set(output_files(out)) == {"wave/a.png", "wave/b.png"}
    with Image.open(out / "wave" / "a.png") as img:
        assert img.size == (32, 38)  # content_size from the file, not the 512 default

    assert main(["stylize", "--config", str(config_path), "--format", "jpg"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"2 ok, 0 error, 0 skipped of 2", printed), printed
    assert set(output_files(out)) == {"wave/a.png", "wave/b.png", "wave/a.jpg", "wave/b.jpg"}
    with Image.open(out / "wave" / "b.jpg") as img:
        assert img.format == "JPEG" and img.size == (38, 32)


def test_cli_config_errors_are_one_line(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown YAML key (a typo) and a missing --input are refused with one line, no traceback."""
    config_path, _ = _yaml_job(weights, tmp_path, colour="red")
    assert main(["stylize", "--config", str(config_path)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "colour" in line and "unknown" in line

    style = tmp_path / "styles" / "wave.png"
    code = main(["stylize", "--style", str(style), "--output", str(tmp_path / "o"), "--device", "cpu"])
    assert code != 0
    assert "--input" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_cli_yaml_extensions_as_a_list(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In YAML a list is the natural way to write several extensions; it means the same as
    `--extensions jpg,png` (case-insensitive), not a crash."""
    config_path, out = _yaml_job(weights, tmp_path, extensions=["jpg", "PNG"])
    images.write(tmp_path / "in" / "c.webp", images.encoded(40, 40, "WEBP", seed=73))
    images.write(tmp_path / "in" / "d.JPG", images.encoded(40, 40, seed=74))
    assert main(["stylize", "--config", str(config_path)]) == 0
    assert re.search(r"3 ok, 0 error, 0 skipped of 3", capsys.readouterr().out)
    assert set(output_files(out)) == {"wave/a.png", "wave/b.png", "wave/d.png"}


def test_cli_yaml_value_of_the_wrong_type_is_one_line(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A YAML value of the wrong type (a list for a number) is a one-line error, not a traceback."""
    config_path, out = _yaml_job(weights, tmp_path, content_size=[256, 512])
    code = main(["stylize", "--config", str(config_path)])
    assert code != 0
    assert "content_size" in one_line_error(capsys.readouterr().err).replace("-", "_")
    assert not out.exists()


def test_ray_job_entrypoint(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    """jobs/stylize.py, what `ray job submit` runs, works with --address and --config."""
    config_path, out = _yaml_job(weights, tmp_path)
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "stylize.py"), "--address", ray_cluster, "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"2 ok, 0 error, 0 skipped of 2", result.stdout), result.stdout
    assert set(output_files(out)) == {"wave/a.png", "wave/b.png"}


# ---------------------------------------------------------------------------------------------
# 7. preview


def test_preview_contact_sheet(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--preview writes a content | style | output contact sheet, one 192 px row per sample with a
    caption strip under each picture (the file name, the style id, "output")."""
    src = tmp_path / "in"
    for i in range(3):
        images.write(src / f"p{i}.jpg", images.encoded(40 + 8 * i, 40, seed=80 + i))
    style = images.write(tmp_path / "wave.png", images.encoded(32, 32, "PNG", seed=83))
    sheet = tmp_path / "sheets" / "preview.png"
    argv = ["stylize", "--input", str(src), "--style", str(style), "--output", str(tmp_path / "out")]
    argv += ["--encoder", str(weights.vgg), "--decoder", str(weights.decoder), "--device", "cpu"]
    argv += ["--content-size", "32", "--style-size", "32", "--preview", str(sheet)]
    assert main(argv) == 0
    assert f"preview:  {sheet}" in capsys.readouterr().out
    with Image.open(sheet) as img:
        img.load()
        assert img.format == "PNG"
        assert img.size == (3 * 192, 3 * (192 + 18))
        cells = np.asarray(img.convert("L")).reshape(3, 192 + 18, 3, 192)
    for row in range(3):
        for col in range(3):
            picture, caption = cells[row, :192, col], cells[row, 192:, col]
            assert (picture < 250).any(), (row, col)  # content, style and output are each there
            assert (caption < 128).any(), (row, col)  # and captioned


# ---------------------------------------------------------------------------------------------
# 8. style interpolation and provenance


def test_style_weights_blend_and_manifest_provenance(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    """--style-weights makes one blended output per input; the manifest records the controls and
    the exact weights (sha256) that made every row."""
    src = tmp_path / "in"
    images.write(src / "a.jpg", images.encoded(40, 48, seed=90))
    images.write(src / "b.jpg", images.encoded(48, 40, seed=91))
    styles = (
        str(images.write(tmp_path / "styles" / "wave.png", images.encoded(32, 32, "PNG", seed=92))),
        str(images.write(tmp_path / "styles" / "ink.png", images.encoded(32, 32, "PNG", seed=93))),
    )
    out = tmp_path / "out"
    cfg = make_config(weights, str(src), styles, str(out), controls=Controls(alpha=0.5, style_weights=(1.0, 3.0)))
    summary = run_stylize(cfg)
    assert (summary["ok"], summary["total"]) == (2, 2)
    (blend,) = summary["styles"]
    assert re.fullmatch(r"blend-[0-9a-f]{8}", blend), blend
    assert set(output_files(out)) == {f"{blend}/a.png", f"{blend}/b.png"}

    rows = local_manifest(out)
    assert len(rows) == 2
    assert {r["style"] for r in rows} == {blend}
    assert {r["alpha"] for r in rows} == {0.5}
    assert {r["style_weights"] for r in rows} == {"1,3"}
    for column in ("encoder_sha256", "decoder_sha256"):
        values = {r[column] for r in rows}
        assert len(values) == 1, values
        assert HEX64.fullmatch(values.pop() or ""), column
    assert rows[0]["encoder_sha256"] != rows[0]["decoder_sha256"]

    # The blend id is stable: the same styles and weights land on the same keys next time.
    again = run_stylize(cfg)
    assert again["styles"] == [blend] and again["skipped"] == 2


# ---------------------------------------------------------------------------------------------
# 9. fail fast


@pytest.mark.parametrize(
    "missing",
    ["s3://no-such-bucket-adain-test/photos/", "s3://no-such-bucket-adain-test/photos", "LOCAL/no-such-dir"],
)
def test_missing_input_fails_fast(
    missing: str,
    ray_cluster: str,
    weights: WeightFiles,
    s3_server: S3Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A typo in the input bucket or directory is a one-line error before any work, not a
    traceback and not a 'successful' job of error rows."""
    missing = missing.replace("LOCAL", str(tmp_path))
    name = "no-such-bucket-adain-test" if missing.startswith("s3://") else "no-such-dir"
    style = str(images.write(tmp_path / "wave.png", images.encoded(32, 32, "PNG", seed=100)))
    out = tmp_path / "out"
    with pytest.raises(AdainError) as caught:
        run_stylize(make_config(weights, missing, (style,), str(out)))
    message = str(caught.value)
    assert "\n" not in message and name in message
    if missing.startswith("s3://"):
        assert "bucket does not exist" in message
    assert not out.exists()

    argv = ["stylize", "--input", missing, "--style", style, "--output", str(out)]
    argv += ["--encoder", str(weights.vgg), "--decoder", str(weights.decoder), "--device", "cpu"]
    assert main(argv) == 1
    assert name in one_line_error(capsys.readouterr().err)
    assert not out.exists()


def test_missing_style_file_fails_fast(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing style image is a one-line error before the cluster is used."""
    src = tmp_path / "in"
    images.write(src / "a.jpg", images.encoded(40, 40, seed=110))
    missing = str(tmp_path / "styles" / "nope.png")
    out = tmp_path / "out"
    with pytest.raises(AdainError) as caught:
        run_stylize(make_config(weights, str(src), (missing,), str(out)))
    assert "\n" not in str(caught.value) and "nope.png" in str(caught.value)

    argv = ["stylize", "--input", str(src), "--style", missing, "--output", str(out)]
    argv += ["--encoder", str(weights.vgg), "--decoder", str(weights.decoder), "--device", "cpu"]
    argv += ["--content-size", "32", "--style-size", "32"]
    assert main(argv) == 2  # a --style that is not there: the user's configuration
    assert "nope.png" in one_line_error(capsys.readouterr().err)
    assert not out.exists()
