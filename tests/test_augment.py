"""Acceptance tests of dataset augmentation (`adain augment`) on the session's local Ray.

What a user relies on: N stylized copies per input, kept in the input's folders (class
folders stay class folders) with the style in the file name; a manifest row per output with
its style and alpha; draws that depend only on (seed, input path); re-runs that process only
new or changed inputs; a run lock so that two runs never work on one output at once; tar
shards that WebDataset-style loaders read; a style bank that gives the very outputs the style
images give; and the CLI and Ray job entrypoints behaving as documented.
"""

from __future__ import annotations

import io
import json
import posixpath
import socket
import subprocess
import sys
import tarfile
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
from pipeline.config import AugmentConfig, ModelConfig, OutputSpec, Scale, Sizing
from pipeline.data.augment import changed_inputs, read_state, run_augment
from pipeline.data.bank import index_styles
from pipeline.data.plan import draw
from pipeline.errors import StorageError
from pipeline.storage.lock import acquire, release
from tests import images
from tests.conftest import S3Server, WeightFiles

REPO = Path(__file__).resolve().parents[1]
SIZING = Sizing(content_size=32, style_size=32)
SCALE = Scale(actors=1)
RESERVED = ("_manifest/", "_runs/", "_state/", "_lock.json")

# A small labelled dataset: class folders, mixed formats and shapes (all at least 32 px).
DATASET: dict[str, tuple[int, int, str]] = {  # rel path -> (width, height, Pillow format)
    "cats/tabby.jpg": (48, 40, "JPEG"),
    "cats/siamese.png": (40, 48, "PNG"),
    "cats/kitten.webp": (36, 36, "WEBP"),
    "dogs/beagle.jpg": (44, 32, "JPEG"),
    "dogs/collie.png": (32, 44, "PNG"),
    "dogs/puppies/pug.jpg": (40, 40, "JPEG"),
}


# ---------------------------------------------------------------------------------------------
# helpers


def config(weights: WeightFiles, input: str | Path, styles: str | Path, output: str | Path, **kw: Any) -> AugmentConfig:
    """A small CPU augmentation at 32 px with the test weights, writing PNG unless told."""
    return AugmentConfig(
        input=str(input),
        styles=str(styles),
        output=OutputSpec(str(output), kw.pop("fmt", "png"), overwrite=True),
        model=ModelConfig(str(weights.vgg), str(weights.decoder), "cpu"),
        sizing=SIZING,
        scale=SCALE,
        **kw,
    )


def encoded_input(rel: str, seed: int) -> bytes:
    """The bytes of a DATASET image, at its size and in its format."""
    width, height, fmt = DATASET[rel]
    return images.encoded(width, height, fmt, seed=seed)


def write_dataset(root: Path, rels: list[str] | None = None) -> list[str]:
    """Write (some of) DATASET under root; returns the rel paths written."""
    rels = rels if rels is not None else list(DATASET)
    for rel in rels:
        images.write(root / rel, encoded_input(rel, seed=100 + list(DATASET).index(rel)))
    return rels


def write_styles(root: Path, count: int) -> list[str]:
    """`count` style images s0, s1, ... (one in a subfolder); returns their sorted style ids."""
    ids = []
    for i in range(count):
        rel, fmt = (f"sub/s{i}.png", "PNG") if i == count - 1 else (f"s{i}.jpg", "JPEG")
        images.write(root / rel, images.encoded(32 + 4 * (i % 3), 40 - 4 * (i % 2), fmt, seed=10 + i))
        ids.append(posixpath.splitext(rel)[0].replace("/", "_"))
    return sorted(ids)


def expected_size(width: int, height: int, size: int = 32) -> tuple[int, int]:
    """The documented resize: shorter side to `size`, longer side int(size * long / short)."""
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def expected_draws(
    seed: int, rels: list[str], style_ids: list[str], per_image: int, alpha_range: tuple[float, float]
) -> dict[str, dict[str, float]]:
    """rel path -> {style id: alpha}, recomputed with the documented pure function `draw`."""
    out = {}
    for rel in rels:
        picks, alphas = draw(seed, rel, len(style_ids), per_image, alpha_range)
        out[rel] = {style_ids[i]: alpha for i, alpha in zip(picks, alphas, strict=True)}
    return out


def assignments(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Manifest rows -> rel path -> {style id: alpha}; one row per (input, style) is asserted."""
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        styles = out.setdefault(row["rel_path"], {})
        assert row["style"] not in styles, f"two rows for {row['rel_path']} x {row['style']}"
        styles[row["style"]] = row["alpha"]
    return out


def local_manifest(out: Path, run_id: str | None = None) -> list[dict[str, Any]]:
    """Manifest rows under a local output (of one run, if given)."""
    parts = sorted((out / "_manifest").glob("*.parquet"))
    rows = pa.concat_tables([pq.read_table(p) for p in parts]).to_pylist() if parts else []
    return [r for r in rows if run_id is None or r["run_id"] == run_id]


def s3_manifest(s3: Any, bucket: str, prefix: str, run_id: str | None = None) -> list[dict[str, Any]]:
    """Manifest rows under s3://bucket/prefix/_manifest/ (of one run, if given)."""
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/_manifest/").get("Contents", [])
    tables = [pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())) for o in listing]
    rows = pa.concat_tables(tables).to_pylist() if tables else []
    return [r for r in rows if run_id is None or r["run_id"] == run_id]


def s3_keys(s3: Any, bucket: str, prefix: str = "") -> set[str]:
    """Object keys under prefix, less the empty 'folder/' markers pyarrow leaves after deletes."""
    keys: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys |= {o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")}
    return keys


def output_files(out: Path) -> dict[str, tuple[int, int]]:
    """Output images (not the manifest, run logs, state or lock) -> (inode, mtime_ns)."""
    found = {}
    for path in out.rglob("*"):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and not rel.startswith(RESERVED):
            stat = path.stat()
            found[rel] = (stat.st_ino, stat.st_mtime_ns)
    return found


def expected_files(draws: dict[str, dict[str, float]], fmt: str = "png") -> set[str]:
    """OUTPUT-relative file names: the input's folders, STEM__STYLE.FMT."""
    return {f"{posixpath.splitext(rel)[0]}__{style}.{fmt}" for rel, styles in draws.items() for style in styles}


def run_log(out: Path, run_id: str) -> dict[str, Any]:
    """OUTPUT/_runs/RUN_ID.json of a local output."""
    return json.loads((out / "_runs" / f"{run_id}.json").read_text())


def state_rows(data: bytes) -> dict[str, dict[str, Any]]:
    """OUTPUT/_state/inputs.parquet -> rel path -> row."""
    return {row["rel_path"]: row for row in pq.read_table(io.BytesIO(data)).to_pylist()}


def one_line_error(err: str) -> str:
    """The CLI's error output: exactly one line, 'adain: error: ...', never a traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("adain: error: "), err
    return lines[0]


def augment_argv(
    weights: WeightFiles, input: Path | str, styles: Path | str, output: Path | str, *extra: str
) -> list[str]:
    """`adain augment` flags for a small CPU job; `extra` adds or overrides."""
    return [
        *("augment", "--input", str(input), "--styles", str(styles), "--output", str(output)),
        *("--encoder", str(weights.vgg), "--decoder", str(weights.decoder), "--device", "cpu"),
        *("--content-size", "32", "--style-size", "32", "--format", "png", "--actors", "1"),
        *extra,
    ]


def expired_lock(owner: str = "dead-run") -> bytes:
    """A lock left behind by a run that died an hour ago."""
    then = time.time() - 3600
    return json.dumps(
        {"owner": owner, "host": "gone-host", "pid": 1, "acquired_at": then - 60, "expires_at": then}
    ).encode()


# ---------------------------------------------------------------------------------------------
# layout, manifest and deterministic draws


def test_layout_manifest_and_deterministic_draws(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    """N outputs per input in its class folder, named by style; one manifest row per output
    with style and alpha; the draws are draw(seed, rel path): the same seed gives the same
    outputs in a fresh output, another seed other styles; a fixed alpha is every row's alpha,
    a range draws within it."""
    src = tmp_path / "in"
    rels = write_dataset(src)
    style_ids = write_styles(tmp_path / "styles", 6)
    assert style_ids == ["s0", "s1", "s2", "s3", "s4", "sub_s5"]

    out1 = tmp_path / "out1"
    first = run_augment(config(weights, src, tmp_path / "styles", out1, per_image=2, alpha_range=(0.7, 0.7), seed=3))
    assert (first["ok"], first["error"], first["total"], first["inputs_new"]) == (12, 0, 12, 6)
    assert (first["inputs_changed"], first["inputs_unchanged"], first["per_image"], first["seed"]) == (0, 0, 2, 3)
    assert first["status"] == "succeeded"
    assert run_log(out1, first["run_id"])["ok"] == 12

    expected = expected_draws(3, rels, style_ids, 2, (0.7, 0.7))
    files = output_files(out1)
    assert set(files) == expected_files(expected)
    assert {f.split("/")[0] for f in files} == {"cats", "dogs"}
    assert {f for f in files if f.startswith("dogs/puppies/pug__")}  # nested folders stay too
    assert not (out1 / "_lock.json").exists()

    rows = local_manifest(out1)
    assert len(rows) == 12 and {r["run_id"] for r in rows} == {first["run_id"]}
    assert assignments(rows) == expected
    assert all(r["alpha"] == np.float32(0.7) for r in rows)
    for row in rows:
        rel = row["rel_path"]
        name = f"{posixpath.splitext(rel)[0]}__{row['style']}.png"
        assert row["status"] == "ok" and row["error"] is None and row["shard_member"] is None
        assert row["output_uri"] == str(out1 / name)
        assert row["input_uri"] == str(src / rel)
        size = expected_size(*DATASET[rel][:2])
        assert (row["width"], row["height"]) == size
        assert Image.open(out1 / name).size == size

    # The same seed into a fresh output: the same assignments and the same pixels.
    out2 = tmp_path / "out2"
    again = run_augment(config(weights, src, tmp_path / "styles", out2, per_image=2, alpha_range=(0.7, 0.7), seed=3))
    assert again["ok"] == 12 and again["run_id"] != first["run_id"]
    assert assignments(local_manifest(out2)) == expected
    assert set(output_files(out2)) == set(files)
    for name in files:
        assert np.array_equal(np.asarray(Image.open(out1 / name)), np.asarray(Image.open(out2 / name))), name

    # Another seed and an alpha range: other styles, alphas drawn within [LO, HI], as draw() says.
    out3 = tmp_path / "out3"
    other = run_augment(config(weights, src, tmp_path / "styles", out3, per_image=2, alpha_range=(0.2, 0.9), seed=4))
    assert other["ok"] == 12
    drawn = assignments(local_manifest(out3))
    assert drawn == expected_draws(4, rels, style_ids, 2, (0.2, 0.9))
    assert {rel: set(s) for rel, s in drawn.items()} != {rel: set(s) for rel, s in expected.items()}
    alphas = [a for styles in drawn.values() for a in styles.values()]
    assert all(np.float32(0.2) <= a <= np.float32(0.9) for a in alphas)
    assert len(set(alphas)) == len(alphas), "alphas are drawn per output"
    assert set(output_files(out3)) == expected_files(drawn)


# ---------------------------------------------------------------------------------------------
# incremental runs


def test_incremental_runs(ray_cluster: str, weights: WeightFiles, tmp_path: Path, caplog) -> None:
    """Nothing new: nothing written. New inputs: only those. A changed input: its outputs
    rewritten, the others untouched. The state lists every input with its size and mtime; a
    damaged one counts every input as new, and the outputs there are kept."""
    src, styles, out = tmp_path / "in", tmp_path / "styles", tmp_path / "out"
    first_rels = write_dataset(src, ["cats/tabby.jpg", "cats/siamese.png", "dogs/beagle.jpg", "dogs/collie.png"])
    style_ids = write_styles(styles, 3)

    def run() -> dict[str, Any]:
        return run_augment(config(weights, src, styles, out, per_image=2, alpha_range=(0.5, 1.0), seed=1))

    first = run()
    assert (first["inputs_new"], first["inputs_changed"], first["inputs_unchanged"], first["ok"]) == (4, 0, 0, 8)
    after_first = output_files(out)
    assert set(after_first) == expected_files(expected_draws(1, first_rels, style_ids, 2, (0.5, 1.0)))

    # Nothing new: no output written or touched, no manifest rows, a run log saying so.
    manifest_parts = sorted(p.name for p in (out / "_manifest").iterdir())
    nothing = run()
    assert (nothing["inputs_new"], nothing["inputs_changed"], nothing["inputs_unchanged"]) == (0, 0, 4)
    assert (nothing["ok"], nothing["error"], nothing["total"]) == (0, 0, 0)
    assert output_files(out) == after_first
    assert sorted(p.name for p in (out / "_manifest").iterdir()) == manifest_parts
    assert local_manifest(out, nothing["run_id"]) == []
    log = run_log(out, nothing["run_id"])
    assert (log["inputs_new"], log["inputs_unchanged"], log["ok"]) == (0, 4, 0)

    # New inputs (one in a new class folder): only they are processed.
    added = write_dataset(src, ["cats/kitten.webp", "dogs/puppies/pug.jpg"])
    more = run()
    assert (more["inputs_new"], more["inputs_changed"], more["inputs_unchanged"], more["ok"]) == (2, 0, 4, 4)
    after_add = output_files(out)
    new_files = expected_files(expected_draws(1, added, style_ids, 2, (0.5, 1.0)))
    assert set(after_add) == set(after_first) | new_files and not set(after_first) & new_files
    assert {k: after_add[k] for k in after_first} == after_first
    assert {r["rel_path"] for r in local_manifest(out, more["run_id"])} == set(added)

    # A changed input (other content and size): its outputs are rewritten, nothing else.
    changed = "dogs/beagle.jpg"
    before_bytes = {k: (out / k).read_bytes() for k in after_add}
    old_size = (src / changed).stat().st_size
    images.write(src / changed, images.encoded(40, 56, "JPEG", seed=999))
    assert (src / changed).stat().st_size != old_size
    redo = run()
    assert (redo["inputs_new"], redo["inputs_changed"], redo["inputs_unchanged"], redo["ok"]) == (0, 1, 5, 2)
    after_change = output_files(out)
    assert set(after_change) == set(after_add)
    redone = {k for k in after_add if k.startswith("dogs/beagle__")}
    assert len(redone) == 2
    for key in redone:
        assert after_change[key] != after_add[key]
        assert (out / key).read_bytes() != before_bytes[key], key
        assert Image.open(out / key).size == expected_size(40, 56)
    assert {k: after_change[k] for k in set(after_add) - redone} == {k: after_add[k] for k in set(after_add) - redone}
    rows = local_manifest(out, redo["run_id"])
    assert {r["rel_path"] for r in rows} == {changed} and len(rows) == 2

    state = state_rows((out / "_state" / "inputs.parquet").read_bytes())
    assert sorted(state) == sorted(first_rels + added)
    for rel, row in state.items():
        stat = (src / rel).stat()
        assert (row["size"], row["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns), rel
    assert state[changed]["run_id"] == redo["run_id"]
    assert {state[rel]["run_id"] for rel in added} == {more["run_id"]}
    assert {state[rel]["run_id"] for rel in first_rels if rel != changed} == {first["run_id"]}
    assert not (out / "_lock.json").exists()

    # A state of the wrong types failed only when the run recorded it, after all the work, and so on
    # every rerun: the run now goes through, keeps the outputs there, and records the state anew.
    state_uri = out / "_state" / "inputs.parquet"
    state_uri.write_bytes(DAMAGED_STATES["text-sizes"])
    with caplog.at_level("WARNING"):
        again = run()
    assert f"{state_uri}: unreadable state (" in caplog.text
    assert (again["inputs_new"], again["ok"], again["skipped"], again["error"]) == (6, 0, 12, 0)
    assert output_files(out) == after_change  # the outputs there were kept, not made again
    assert sorted(state_rows(state_uri.read_bytes())) == sorted(first_rels + added)


def test_failed_outputs_are_retried(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    """An output that could not be written is an error row, and the next run makes it: an
    unchanged input is done only when its outputs are, else the dataset stays incomplete."""
    src, styles, out = tmp_path / "in", tmp_path / "styles", tmp_path / "out"
    rels = write_dataset(src, ["cats/tabby.jpg", "dogs/beagle.jpg"])
    style_ids = write_styles(styles, 2)
    expected = expected_files(expected_draws(0, rels, style_ids, 2, (1.0, 1.0)))
    blocker = out / "cats" / "tabby__s0.png"  # a folder where the file goes: that write fails
    images.write(blocker / "keep", b"x")
    first = run_augment(config(weights, src, styles, out, per_image=2))
    assert (first["ok"], first["error"]) == (3, 1)
    (errored,) = [r for r in local_manifest(out, first["run_id"]) if r["status"] == "error"]
    assert errored["rel_path"] == "cats/tabby.jpg" and str(blocker) in errored["error"]
    (blocker / "keep").unlink()
    blocker.rmdir()
    before = output_files(out)

    retry = run_augment(config(weights, src, styles, out, per_image=2))
    assert set(output_files(out)) == expected, "the failed output was never retried"
    assert retry["inputs_unchanged"] == 1 and retry["error"] == 0
    assert {r["rel_path"] for r in local_manifest(out, retry["run_id"])} == {"cats/tabby.jpg"}
    beagle = {k for k in before if k.startswith("dogs/")}
    assert {k: output_files(out)[k] for k in beagle} == {k: before[k] for k in beagle}


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


GOOD_STATE = pa.table({"rel_path": ["a.jpg"], "size": [1], "mtime_ns": [1], "run_id": ["r"]})
DAMAGED_STATES = {  # what a full disk, a killed copy or a hand edit leaves
    "truncated": parquet_bytes(GOOD_STATE)[:50],
    "empty": b"",
    "not-parquet": b'{"rel_path": "a.jpg"}',
    "text-sizes": parquet_bytes(GOOD_STATE.set_column(1, "size", pa.array(["big"]))),
    "no-size": parquet_bytes(GOOD_STATE.drop_columns(["size"])),
}


@pytest.mark.parametrize("damage", list(DAMAGED_STATES))
def test_a_damaged_state_is_one_warning_and_every_input_is_new(tmp_path: Path, damage: str, caplog) -> None:
    """A truncated or hand-edited OUTPUT/_state/inputs.parquet was a traceback, at the start or
    after all the work: now one warning line, and no input counts as recorded."""
    state_uri = tmp_path / "_state" / "inputs.parquet"
    images.write(state_uri, DAMAGED_STATES[damage])
    listed = pa.table({"rel_path": ["a.jpg", "b.jpg"], "size": [1, 2], "mtime_ns": [1, 2]})
    with caplog.at_level("WARNING"):
        state = read_state(str(state_uri))
    (warning,) = [record.getMessage() for record in caplog.records]
    assert warning.startswith(f"{state_uri}: unreadable state (") and "\n" not in warning
    assert warning.endswith("); every input counts as new this run")
    todo, kinds = changed_inputs(listed, state)
    assert kinds == {"new": 2, "changed": 0, "unchanged": 0} and todo.column("new").to_pylist() == [True, True]


# ---------------------------------------------------------------------------------------------
# the run lock


def test_lock_local(ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A held lock: a second run fails at once with one line naming the lock and its holder,
    writing nothing. An expired lock is taken over. The lock is gone after a run."""
    src, styles, out = tmp_path / "in", tmp_path / "styles", tmp_path / "out"
    write_dataset(src, ["cats/tabby.jpg", "dogs/beagle.jpg"])
    write_styles(styles, 2)
    lock = out / "_lock.json"

    lease = acquire(str(lock), "other-run", 600)
    holder = json.loads(lock.read_text())
    assert holder["owner"] == "other-run" and holder["host"] == socket.gethostname()
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        run_augment(config(weights, src, styles, out, per_image=2))
    message = str(caught.value)
    assert "\n" not in message and str(lock) in message and "other-run" in message and holder["host"] in message
    code = main(augment_argv(weights, src, styles, out, "--per-image", "2"))
    assert code == 1
    line = one_line_error(capsys.readouterr().err)
    assert str(lock) in line and "other-run" in line
    assert time.monotonic() - started < 10, "a locked output must fail fast"
    assert output_files(out) == {} and not (out / "_manifest").exists() and not (out / "_state").exists()
    assert json.loads(lock.read_text()) == holder, "the refused runs must leave the holder's lock alone"
    release(lease)
    assert not lock.exists()

    lock.write_bytes(expired_lock())
    summary = run_augment(config(weights, src, styles, out, per_image=2))
    assert (summary["ok"], summary["error"]) == (4, 0)
    assert len(output_files(out)) == 4
    assert not lock.exists()


def test_concurrent_run_via_job_entrypoint(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """jobs/augment.py (what `ray job submit` runs) with --address: while it runs, a second run
    on the same output fails at once naming it; the job itself succeeds and releases the lock."""
    src, styles, out = tmp_path / "in", tmp_path / "styles", tmp_path / "out"
    rels = write_dataset(src)
    style_ids = write_styles(styles, 3)
    lock = out / "_lock.json"
    argv = augment_argv(weights, src, styles, out, "--per-image", "2", "--seed", "9", "--run-id", "job-run")[1:]
    log = tmp_path / "job.log"
    with open(log, "wb") as handle:
        job = subprocess.Popen(
            [sys.executable, str(REPO / "jobs" / "augment.py"), "--address", ray_cluster, *argv],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + 120
            while not lock.exists() and job.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            assert lock.exists(), f"the job never took the lock:\n{log.read_text()[-3000:]}"
            code = main(augment_argv(weights, src, styles, out, "--per-image", "2", "--run-id", "second"))
            assert job.poll() is None, "the job ended before the second run was tried"
            assert code == 1
            line = one_line_error(capsys.readouterr().err)
            assert str(lock) in line and "job-run" in line
            assert job.wait(timeout=300) == 0, log.read_text()[-3000:]
        finally:
            job.kill()
            job.wait()
    text = log.read_text()
    assert "run job-run: inputs 6 new, 0 changed, 0 unchanged; outputs 12 ok, 0 error" in text, text[-3000:]
    assert set(output_files(out)) == expected_files(expected_draws(9, rels, style_ids, 2, (1.0, 1.0)))
    assert {r["run_id"] for r in local_manifest(out)} == {"job-run"}
    assert not (out / "_runs" / "second.json").exists()
    assert not lock.exists()


# ---------------------------------------------------------------------------------------------
# shards


def test_shards(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    """--shards --shard-size 3 with 8 outputs: 3 valid tar files; each sample an image that
    decodes at the expected size and a JSON sidecar that matches its manifest row."""
    src, styles, out = tmp_path / "in", tmp_path / "styles", tmp_path / "out"
    rels = write_dataset(src, ["cats/tabby.jpg", "cats/siamese.png", "dogs/beagle.jpg", "dogs/puppies/pug.jpg"])
    style_ids = write_styles(styles, 4)
    cfg = config(
        weights, src, styles, out, per_image=2, alpha_range=(0.3, 0.8), seed=2, shards=True, shard_size=3, fmt="jpg"
    )
    summary = run_augment(cfg)
    assert (summary["ok"], summary["error"], summary["total"]) == (8, 0, 8)

    files = output_files(out)
    assert files.pop("shards/index.json", None) is not None, files  # the shards to read, listed
    assert all(name.startswith("shards/") and name.endswith(".tar") for name in files), files
    shards = sorted(out / name for name in files)
    assert len(shards) == 3, [p.name for p in shards]
    assert json.loads((out / "shards" / "index.json").read_text())["shards"] == [p.name for p in shards]
    assert all(p.name.startswith(f"{summary['run_id']}-") for p in shards)

    rows = local_manifest(out)
    expected = expected_draws(2, rels, style_ids, 2, (0.3, 0.8))
    assert assignments(rows) == expected
    by_member = {r["shard_member"]: r for r in rows}
    assert len(by_member) == 8
    samples: dict[str, Path] = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        names = {posixpath.splitext(m)[0] for m in members}
        assert 1 <= len(names) <= 3
        assert set(members) == {f"{n}.jpg" for n in names} | {f"{n}.json" for n in names}
        for name in names:
            assert name not in samples, f"sample {name} in two shards"
            samples[name] = shard
            row = by_member[name]
            sidecar = json.loads(members[f"{name}.json"])
            assert sidecar == {
                "style": row["style"],
                "alpha": row["alpha"],
                "input_uri": row["input_uri"],
                "rel_path": row["rel_path"],
            }
            assert row["output_uri"] == str(shard) and row["status"] == "ok"
            image = Image.open(io.BytesIO(members[f"{name}.jpg"]))
            image.load()
            assert image.format == "JPEG"
            assert image.size == expected_size(*DATASET[row["rel_path"]][:2]) == (row["width"], row["height"])
    assert set(samples) == {
        f"{posixpath.splitext(rel)[0]}__{style}" for rel, styles_ in expected.items() for style in styles_
    }

    # Incremental with shards: nothing new, no shard; a new input, a new shard of its samples only.
    stamps = output_files(out)
    assert run_augment(cfg)["total"] == 0
    assert output_files(out) == stamps
    write_dataset(src, ["dogs/collie.png"])
    more = run_augment(cfg)
    assert (more["inputs_new"], more["inputs_unchanged"], more["ok"]) == (1, 4, 2)
    added = set(output_files(out)) - set(stamps)
    stamps.pop("shards/index.json")  # the index is rewritten to list the new shard; no shard is
    assert len(added) == 1 and {k: output_files(out)[k] for k in stamps} == stamps
    (new_shard,) = added
    assert posixpath.basename(new_shard) in json.loads((out / "shards" / "index.json").read_text())["shards"]
    with tarfile.open(out / new_shard) as tar:
        names = sorted(tar.getnames())
    styles_drawn = expected_draws(2, ["dogs/collie.png"], style_ids, 2, (0.3, 0.8))["dogs/collie.png"]
    assert names == sorted(f"dogs/collie__{style}.{ext}" for style in styles_drawn for ext in ("jpg", "json"))
    assert {r["output_uri"] for r in local_manifest(out, more["run_id"])} == {str(out / new_shard)}


# ---------------------------------------------------------------------------------------------
# style bank


def test_bank_and_style_images_give_the_same_outputs(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    """A bank built once (index_styles) serves augment without the style images, with the
    same draws and pixel-identical PNG outputs as the style images themselves."""
    src, styles = tmp_path / "in", tmp_path / "styles"
    rels = write_dataset(src, ["cats/tabby.jpg", "cats/kitten.webp", "dogs/collie.png"])
    style_ids = write_styles(styles, 3)
    from_images = run_augment(config(weights, src, styles, tmp_path / "out-images", per_image=2, seed=6))
    assert from_images["ok"] == 6

    bank = tmp_path / "bank.parquet"
    result = index_styles(
        str(styles), str(bank), ModelConfig(str(weights.vgg), str(weights.decoder), "cpu"), SIZING, SCALE
    )
    assert (result["styles"], result["errors"]) == (3, [])
    for path in styles.rglob("*"):  # the bank alone must do
        if path.is_file():
            path.unlink()

    from_bank = run_augment(config(weights, src, bank, tmp_path / "out-bank", per_image=2, seed=6))
    assert (from_bank["ok"], from_bank["error"]) == (6, 0)
    expected = expected_draws(6, rels, style_ids, 2, (1.0, 1.0))
    assert assignments(local_manifest(tmp_path / "out-bank")) == expected
    assert assignments(local_manifest(tmp_path / "out-images")) == expected
    names = set(output_files(tmp_path / "out-images"))
    assert names == set(output_files(tmp_path / "out-bank")) == expected_files(expected)
    for name in names:
        a = np.asarray(Image.open(tmp_path / "out-images" / name))
        b = np.asarray(Image.open(tmp_path / "out-bank" / name))
        assert np.array_equal(a, b), name


# ---------------------------------------------------------------------------------------------
# object storage


def test_s3_inputs_bank_output_and_lock(
    ray_cluster: str, weights: WeightFiles, s3_server: S3Server, bucket: str
) -> None:
    """Inputs, bank and output on s3://: outputs at the documented keys, a re-run writes no
    outputs, and the lock works by conditional PUT (held: refused; expired: taken over)."""
    s3 = s3_server.client()
    rels = ["cats/tabby.jpg", "dogs/beagle.jpg", "dogs/puppies/pug.jpg"]
    for rel in rels:
        s3.put_object(Bucket=bucket, Key=f"data/{rel}", Body=encoded_input(rel, seed=7))
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"styles/st{i}.png", Body=images.encoded(32, 36, "PNG", seed=30 + i))
    bank = f"s3://{bucket}/banks/styles.parquet"
    model = ModelConfig(str(weights.vgg), str(weights.decoder), "cpu")
    assert index_styles(f"s3://{bucket}/styles/", bank, model, SIZING, SCALE)["styles"] == 3
    for i in range(3):
        s3.delete_object(Bucket=bucket, Key=f"styles/st{i}.png")

    out = f"s3://{bucket}/aug"
    lock_uri = f"{out}/_lock.json"
    cfg = config(weights, f"s3://{bucket}/data/", bank, out, per_image=2, alpha_range=(0.4, 0.6), seed=11)

    lease = acquire(lock_uri, "s3-holder", 600)
    assert json.loads(s3.get_object(Bucket=bucket, Key="aug/_lock.json")["Body"].read())["owner"] == "s3-holder"
    with pytest.raises(StorageError) as caught:
        run_augment(cfg)
    assert lock_uri in str(caught.value) and "s3-holder" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(StorageError, match="s3-holder"):
        acquire(lock_uri, "third", 600)
    assert s3_keys(s3, bucket, "aug/") == {"aug/_lock.json"}
    release(lease)
    assert s3_keys(s3, bucket, "aug/") == set()

    s3.put_object(Bucket=bucket, Key="aug/_lock.json", Body=expired_lock())
    first = run_augment(cfg)
    assert (first["ok"], first["error"], first["inputs_new"]) == (6, 0, 3)
    expected = expected_draws(11, rels, ["st0", "st1", "st2"], 2, (0.4, 0.6))
    keys = s3_keys(s3, bucket, "aug/")
    assert "aug/_lock.json" not in keys
    assert {k for k in keys if not k.startswith(tuple(f"aug/{r}" for r in RESERVED))} == {
        f"aug/{name}" for name in expected_files(expected)
    }
    rows = s3_manifest(s3, bucket, "aug")
    assert assignments(rows) == expected
    for row in rows:
        assert row["input_uri"] == f"s3://{bucket}/data/{row['rel_path']}"
        key = row["output_uri"].removeprefix(f"s3://{bucket}/")
        image = Image.open(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
        assert image.size == expected_size(*DATASET[row["rel_path"]][:2])
    state = state_rows(s3.get_object(Bucket=bucket, Key="aug/_state/inputs.parquet")["Body"].read())
    assert sorted(state) == sorted(rels)

    etags = {k: s3.head_object(Bucket=bucket, Key=k)["ETag"] for k in keys}
    again = run_augment(cfg)
    assert (again["ok"], again["inputs_new"], again["inputs_unchanged"]) == (0, 0, 3)
    after = s3_keys(s3, bucket, "aug/")
    assert after - keys == {f"aug/_runs/{again['run_id']}.json"}
    outputs = {k for k in keys if not k.startswith(tuple(f"aug/{r}" for r in RESERVED))}
    assert {k: s3.head_object(Bucket=bucket, Key=k)["ETag"] for k in outputs} == {k: etags[k] for k in outputs}
    assert "aug/_lock.json" not in after

    # A changed input on S3 (other content and size): its two outputs are rewritten, no others.
    s3.put_object(Bucket=bucket, Key="data/dogs/beagle.jpg", Body=images.encoded(56, 40, "JPEG", seed=77))
    redo = run_augment(cfg)
    assert (redo["inputs_new"], redo["inputs_changed"], redo["inputs_unchanged"], redo["ok"]) == (0, 1, 2, 2)
    redone = {k for k in outputs if k.startswith("aug/dogs/beagle__")}
    assert len(redone) == 2
    now = {k: s3.head_object(Bucket=bucket, Key=k)["ETag"] for k in outputs}
    assert all(now[k] != etags[k] for k in redone)
    assert {k: now[k] for k in outputs - redone} == {k: etags[k] for k in outputs - redone}
    assert {r["rel_path"] for r in s3_manifest(s3, bucket, "aug", redo["run_id"])} == {"dogs/beagle.jpg"}
    new_keys = s3_keys(s3, bucket, "aug/") - after
    assert {k for k in new_keys if not k.startswith(("aug/_runs/", "aug/_manifest/"))} == set()


# ---------------------------------------------------------------------------------------------
# the CLI


def test_cli_runs_and_prints_the_summary(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`adain augment` with --alpha: exit 0, the summary printed, every row at that alpha."""
    src, styles, out = tmp_path / "in", tmp_path / "styles", tmp_path / "out"
    rels = write_dataset(src, ["cats/tabby.jpg", "dogs/collie.png", "dogs/puppies/pug.jpg"])
    style_ids = write_styles(styles, 3)
    argv = augment_argv(
        weights, src, styles, out, "--per-image", "2", "--alpha", "0.7", "--seed", "5", "--run-id", "r1"
    )
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "run r1: inputs 3 new, 0 changed, 0 unchanged; outputs 6 ok, 0 error in " in captured.out, captured.out
    assert f"manifest: {out / '_manifest'}" in captured.out
    assert f"run log:  {out / '_runs' / 'r1.json'}" in captured.out
    rows = local_manifest(out)
    assert assignments(rows) == expected_draws(5, rels, style_ids, 2, (0.7, 0.7))
    assert {r["alpha"] for r in rows} == {np.float32(0.7)}
    assert set(output_files(out)) == expected_files(expected_draws(5, rels, style_ids, 2, (0.7, 0.7)))

    code = main([*argv[:-2], "--run-id", "r2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "run r2: inputs 0 new, 0 changed, 3 unchanged; outputs 0 ok, 0 error in " in captured.out


def test_cli_config_yaml(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--config YAML with the documented keys (as jobs/configs/augment.yaml): styles,
    per_image, alpha_range, seed, shards; flags on the command line win."""
    src, styles, out = tmp_path / "in", tmp_path / "styles", tmp_path / "out"
    rels = write_dataset(src, ["cats/tabby.jpg", "dogs/beagle.jpg"])
    style_ids = write_styles(styles, 3)
    options = {
        "input": str(src),
        "styles": str(styles),
        "output": str(out),
        "per_image": 2,
        "alpha_range": "0.5,1.0",
        "seed": 0,
        "content_size": 32,
        "style_size": 32,
        "format": "png",
        "shards": True,
        "shard_size": 1000,
        "encoder": str(weights.vgg),
        "decoder": str(weights.decoder),
        "device": "cpu",
        "actors": 1,
    }
    config_path = tmp_path / "augment.yaml"
    config_path.write_text(yaml.safe_dump(options))
    code = main(["augment", "--config", str(config_path), "--seed", "8", "--run-id", "from-yaml"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "run from-yaml: inputs 2 new, 0 changed, 0 unchanged; outputs 4 ok, 0 error" in captured.out
    rows = local_manifest(out)
    assert assignments(rows) == expected_draws(8, rels, style_ids, 2, (0.5, 1.0))
    assert all(r["shard_member"] for r in rows)
    assert [p.parent.name for p in out.rglob("*.tar")] == ["shards"]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (("--per-image", "0"), "--per-image 0"),
        (("--alpha-range", "0.9,0.1"), "--alpha-range"),
        (("--alpha", "1.5"), "1.5"),
        (("--per-image", "4"), "only 3 styles"),
    ],
    ids=["per-image-0", "alpha-range-reversed", "alpha-out-of-range", "per-image-over-styles"],
)
def test_cli_bad_values_are_one_line_errors(
    ray_cluster: str,
    weights: WeightFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: tuple[str, ...],
    words: str,
) -> None:
    """Bad values: exit 2, one 'adain: error:' line, no traceback, nothing written."""
    src, styles, out = tmp_path / "in", tmp_path / "styles", tmp_path / "out"
    write_dataset(src, ["cats/tabby.jpg"])
    write_styles(styles, 3)
    code = main(augment_argv(weights, src, styles, out, *flags))
    assert code == 2
    assert words in one_line_error(capsys.readouterr().err)
    assert not out.exists() or [p for p in out.rglob("*") if p.is_file()] == []
