"""What the README's Guarantees section promises, one test a promise: run ids, outputs inside
inputs, symlinks, the run lock as a lease, shards after a kill, banks and weights checked on
load, file modes, odd object keys, failing fast, and the manifest of skipped outputs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.cli import main
from pipeline.cli.commands import EXIT_ERROR_ROWS
from pipeline.config import ModelConfig, OutputSpec, Sizing
from pipeline.data.augment import run_augment
from pipeline.data.bank import BANK_SCHEMA, load_bank
from pipeline.data.bank_table import check_bank
from pipeline.data.decode import decode_inputs
from pipeline.data.listing import list_inputs
from pipeline.data.manifest import ManifestWriter, run_values
from pipeline.data.model_actor import NOT_FINITE, StyleModel
from pipeline.data.plan import EveryStyle, Plan
from pipeline.data.report import COLUMNS, MAX_ERROR_CHARS, failed, read_report, reason, text
from pipeline.data.rows import DECODED_SCHEMA, ERROR, OK, ROW_SCHEMA, STATUSES
from pipeline.data.styles import StyleSet
from pipeline.data.stylize import run_stylize
from pipeline.data.writers import FileWriter, remove_orphan_shards, shard_index
from pipeline.errors import ConfigError, ImageError, StorageError, WeightsError, one_line
from pipeline.imaging.codec import FORMATS, encode
from pipeline.model.checkpoint import load_decoder, save_checkpoint
from pipeline.model.nets import ARCH_VERSION, Decoder
from pipeline.storage.keys import augmented_key, folded, output_key
from pipeline.storage.listing import iter_files
from pipeline.storage.lock import LeaseKeeper, acquire, release, renew
from pipeline.storage.uri import read_bytes
from tests import images
from tests.banks import bank_row, write_bank
from tests.conftest import S3Server, WeightFiles
from tests.test_augment import config as augment_config
from tests.test_augment import write_dataset, write_styles
from tests.test_first_run import job_flags
from tests.test_stylize_job import local_manifest, make_config, output_files, s3_manifest
from tests.test_transfer import plain


def style_file(tmp_path: Path) -> str:
    return str(images.write(tmp_path / "styles" / "wave.png", images.encoded(32, 32, "PNG", seed=3)))


def inputs(folder: Path, names: list[str]) -> Path:
    for i, name in enumerate(names):
        images.write(folder / name, images.encoded(40, 32, "PNG", seed=20 + i))
    return folder


# ---------------------------------------------------------------------------------------------
# run ids, and outputs inside their inputs


@pytest.mark.parametrize("run_id", ["../../x", "a/b", ".hidden", "", "x" * 200, "a\nb"])
def test_run_ids_are_safe_names_or_refused(weights: WeightFiles, tmp_path: Path, run_id: str) -> None:
    with pytest.raises(ConfigError, match="--run-id"):
        make_config(weights, str(tmp_path / "in"), (style_file(tmp_path),), str(tmp_path / "out"), run_id=run_id)


def test_a_reused_run_id_adds_manifest_parts(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    src, out = inputs(tmp_path / "in", ["a.png", "b.png"]), tmp_path / "out"
    cfg = make_config(weights, str(src), (style_file(tmp_path),), str(out), run_id="nightly")
    run_stylize(cfg)
    run_stylize(cfg)  # everything there: two skipped rows, kept beside the first run's two ok rows
    rows = local_manifest(out)
    assert sorted(r["status"] for r in rows) == ["ok", "ok", "skipped", "skipped"]
    assert sorted(p.name for p in (out / "_manifest").iterdir()) == ["nightly-00000.parquet", "nightly-00001.parquet"]
    # Each run's summary kept beside the other's, and reported.
    assert sorted(p.name for p in (out / "_runs").iterdir()) == ["nightly.1.json", "nightly.json"]
    assert [(run["run_id"], run["ok"], run["skipped"]) for run in read_report(str(out)).runs] == [
        ("nightly", 2, 0),
        ("nightly", 0, 2),
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(min_size=1), field=st.text())
def test_report_prints_hostile_names_and_summaries_as_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, field: str
) -> None:
    """`adain report` over names and hand-edited summaries holding newlines or terminal escapes:
    every table row and --errors row stays one line, and no control character reaches the terminal."""
    out = tmp_path / f"out{time.monotonic_ns()}"
    (out / "_runs").mkdir(parents=True)
    (out / "_runs" / "r.json").write_text(json.dumps({"run_id": field, "started_at": field, "ok": field, "error": 1}))
    (out / "_manifest").mkdir()
    uri = f"{tmp_path}/in/{name}"
    row = {"run_id": "r", "input_uri": uri, "style": field, "output_uri": "", "status": "error", "error": f"{uri}: bad"}
    pq.write_table(pa.Table.from_pylist([row]), out / "_manifest" / "r-00000.parquet")
    assert main(["report", str(out), "--errors"]) == 0
    shown = capsys.readouterr().out
    assert all(plain(c) or c in "\n\t" for c in shown), repr(shown)
    lines = shown.splitlines()
    assert len(lines) == 7, lines  # heading, table header and one run, counts, reasons, one reason, one row
    assert "every failed output" not in shown  # the hint to list them, as they are listed
    rows = [line.split("\t") for line in lines if "\t" in line]
    assert rows == [[one_line(uri), one_line(field), one_line(f"{uri}: bad")]]


def _parquet(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


GOOD_ROW = {
    "run_id": "a",
    "input_uri": "/in/x.jpg",
    "style": "s",
    "output_uri": "/o/s/x.jpg",
    "status": "ok",
    "error": None,
}
GOOD_RUN = {"run_id": "a", "started_at": "2026-01-01T00:00:00Z", "ok": 1, "error": 0, "skipped": 0, "wall_s": 1.0}
# What a full disk, a killed copy or a hand edit leaves beside a good run: (file, its bytes), the warning, run b's row.
def _damaged_page() -> bytes:
    """A part of two row groups whose second's first page header is overwritten: Arrow reads the
    footer and the first group, then raises a plain OSError ("Couldn't deserialize thrift")."""
    rows = pa.Table.from_pylist([{**GOOD_ROW, "input_uri": f"/in/d{i}.jpg"} for i in range(200)])
    buffer = io.BytesIO()
    pq.write_table(rows, buffer, row_group_size=100, compression="none", use_dictionary=False)
    data = bytearray(buffer.getvalue())
    at = pq.ParquetFile(io.BytesIO(bytes(data))).metadata.row_group(1).column(1).data_page_offset
    data[at : at + 40] = b"\xff" * 40
    return bytes(data)


DAMAGED_OUTPUTS = {
    "damaged-page": ("_manifest/x.parquet", _damaged_page(), "x.parquet: unreadable manifest part", None),
    "truncated-part": ("_manifest/x.parquet", _parquet([GOOD_ROW])[:100], "x.parquet: unreadable manifest part", None),
    "empty-part": ("_manifest/zz.parquet", b"", "zz.parquet: unreadable manifest part", None),
    "part-of-other-columns": ("_manifest/y.parquet", _parquet([{"run_id": "r"}]), "y.parquet: unreadable", None),
    "part-of-lists": ("_manifest/y.parquet", _parquet([{**GOOD_ROW, "style": ["s"]}]), "y.parquet: unreadable", None),
    "rows-naming-nothing": (
        "_manifest/y.parquet",
        _parquet([{**GOOD_ROW, "input_uri": None}]),
        "1 row naming no",
        None,
    ),
    "style-sources-a-list": ("_runs/b.json", b'{"run_id": "b", "style_sources": ["a"]}', None, "b ? ? ? ? ? ?"),
    "style-sources-not-paths": (  # a later run's: it names the style image the contact sheet shows
        "_runs/b.json",
        b'{"run_id": "b", "started_at": "2027", "style_sources": {"s": [5]}}',
        None,
        "b 2027 ? ? ? ? ?",
    ),
    "run-id-an-int": ("_runs/b.json", b'{"run_id": 5, "ok": 1, "wall_s": "1"}', None, "? ? 1 ? ? ? ?"),
    "started-at-an-int": ("_runs/b.json", b'{"run_id": "b", "started_at": 5, "ok": true}', None, "b ? ? ? ? ? ?"),
    "summary-nested-deep": ("_runs/b.json", b"[" * 100_000, None, "b ? ? ? ? ? ?"),  # json: a RecursionError
}


def test_report_shows_runs_that_never_ended_and_tells_apart_runs_of_one_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run interrupted or killed writes manifest rows but no summary: it was missing from the
    report. Two runs given one --run-id (each keeps its summary) showed as two rows of the same id."""
    out = tmp_path / "out"
    for rel, started in (("nightly.json", "2026-01-01T00:00:00Z"), ("nightly.1.json", "2026-01-02T00:00:00Z")):
        images.write(out / "_runs" / rel, json.dumps({**GOOD_RUN, "run_id": "nightly", "started_at": started}).encode())
    rows = [{**GOOD_ROW, "run_id": "nightly"}]
    rows += [{**GOOD_ROW, "run_id": "killed", "input_uri": f"/in/{i}.jpg"} for i in range(3)]
    rows[-1] = {**rows[-1], "status": "error", "output_uri": None, "error": "not an image"}
    images.write(out / "_manifest" / "nightly-00000.parquet", _parquet(rows))
    assert main(["report", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("outputs now"))
    runs = [line.split() for line in lines[2:end]]  # below the table's header
    assert runs == [
        ["nightly", "#1", "2026-01-01T00:00:00Z", "1", "0", "0", "1.0", "?"],
        ["nightly", "#2", "2026-01-02T00:00:00Z", "1", "0", "0", "1.0", "?"],
        ["killed", "-", "2", "1", "0", "-", "-", "unfinished", "(no", "summary)"],
    ], runs


def _report_the_old_way(out: Path, summarized: set[str]) -> dict:
    """What `adain report` showed when it read the whole manifest at once: the reference."""
    rows = pa.concat_tables(pq.read_table(p, columns=list(COLUMNS)) for p in sorted((out / "_manifest").iterdir()))
    rows = rows.filter(pc.and_(pc.is_valid(rows["input_uri"]), pc.is_valid(rows["style"])))
    rows = rows.append_column("order", pa.array(range(rows.num_rows)))
    last = rows.group_by(["input_uri", "style"]).aggregate([("order", "max")])
    latest = rows.filter(pc.is_in(rows["order"], value_set=last["order_max"])).sort_by("order").to_pylist()
    unfinished: dict[str, dict[str, int]] = {}
    for row in sorted(rows.to_pylist(), key=lambda row: row["run_id"]):
        if row["run_id"] not in summarized:
            counts = unfinished.setdefault(row["run_id"], {})
            counts[row["status"]] = counts.get(row["status"], 0) + 1
    reasons = Counter(reason(r["error"] or "", r["input_uri"]) for r in latest if r["status"] == ERROR)
    return {
        "counts": {s: sum(r["status"] == s for r in latest) for s in STATUSES},
        "reasons": reasons.most_common(10),
        "failed": [{k: r[k] for k in ("input_uri", "style", "error")} for r in latest if r["status"] == ERROR],
        "ok": [(r["input_uri"], r["style"], r["output_uri"]) for r in latest if r["status"] == OK],
        "unfinished": unfinished,
    }


@pytest.mark.parametrize(  # on disk in buckets, in memory; parts read from an object store
    "batch_rows, bucket_rows, where", [(3, 10, "local"), (7, 1_000, "local"), (5, 30, "s3")]
)
def test_report_read_a_slice_at_a_time_is_the_report_of_the_whole_manifest(
    tmp_path: Path, request: pytest.FixtureRequest, batch_rows: int, bucket_rows: int, where: str
) -> None:
    """`adain report` held the whole manifest in memory (0.79 GB at a million rows): it reads a few
    rows at a time and finds the latest of each input and style a bucket of keys at a time, and
    shows what it showed. Four parts of three runs (one never ended) over 40 inputs and 2 styles,
    outputs redone and failing again, reasons tied."""
    out, rng = tmp_path / "out", np.random.default_rng(7)
    for run_id in ("a", "b"):
        images.write(out / "_runs" / f"{run_id}.json", json.dumps({**GOOD_RUN, "run_id": run_id}).encode())
    for n, run_id in enumerate(("a", "a", "b", "killed")):
        rows = []
        for _ in range(60):
            i, status = int(rng.integers(40)), str(rng.choice(["ok", "ok", "error", "skipped"]))
            error = (
                f"/in/{i}.jpg: {rng.choice(['truncated', 'not an image', 'too large'])}" if status == ERROR else None
            )
            input_uri = None if rng.random() < 0.02 else f"/in/{i}.jpg"
            output = None if status == ERROR else f"/o/{i}.jpg"
            rows.append({"run_id": run_id, "input_uri": input_uri, "style": f"s{i % 2}", "output_uri": output,
                         "status": status, "error": error})  # fmt: skip
        images.write(out / "_manifest" / f"{run_id}-{n:05d}.parquet", _parquet(rows))
    prefix = str(out)
    if where == "s3":
        bucket, s3 = request.getfixturevalue("bucket"), request.getfixturevalue("s3_server").client()
        for path in out.rglob("*.*"):
            s3.put_object(Bucket=bucket, Key=f"out/{path.relative_to(out)}", Body=path.read_bytes())
        prefix = f"s3://{bucket}/out"
    report = read_report(prefix, batch_rows=batch_rows, bucket_rows=bucket_rows)
    shown = {
        "counts": report.counts,
        "reasons": report.reasons,
        "failed": list(failed(report)),
        "ok": [tuple(row.values()) for row in report.latest.rows(OK, ("input_uri", "style", "output_uri"))],
        "unfinished": report.unfinished,
    }
    assert shown == _report_the_old_way(out, {"a", "b"})
    assert (len(report.latest.groups) > 1) == (bucket_rows < 240), report.latest.groups  # in buckets of keys on disk


FEW_FILES = """
import json, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
from pipeline.data.report import OK, failed, read_report
report = read_report(sys.argv[1], batch_rows=7, bucket_rows=2)  # 120 buckets wanted
ok = [list(r.values()) for r in report.latest.rows(OK, ("input_uri", "style", "output_uri"))]
print(json.dumps([report.counts, report.reasons, list(failed(report)), ok]))
"""


def test_report_in_more_buckets_than_files_may_be_open(tmp_path: Path) -> None:
    """A bucket a file, all open at once: past the limit on open files (1,024 by default: some 200
    million rows) the report died on "Too many open files". Buckets are as many as may be open."""
    out = tmp_path / "out"
    images.write(out / "_runs" / "a.json", json.dumps(GOOD_RUN).encode())
    rows = [{**GOOD_ROW, "input_uri": f"/in/{i}.jpg", "status": "error" if i % 3 else "ok",
             "error": f"/in/{i}.jpg: broken {i % 4}" if i % 3 else None} for i in range(240)]  # fmt: skip
    images.write(out / "_manifest" / "a-00000.parquet", _parquet(rows))
    run = subprocess.run([sys.executable, "-c", FEW_FILES, str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    whole = read_report(str(out))
    ok = [list(r.values()) for r in whole.latest.rows(OK, ("input_uri", "style", "output_uri"))]
    assert json.loads(run.stdout) == json.loads(json.dumps([whole.counts, whole.reasons, list(failed(whole)), ok]))


@pytest.mark.parametrize("dictionary", [True, False])
def test_report_over_a_crafted_part_of_enormous_strings(tmp_path: Path, caplog, dictionary: bool) -> None:
    """A crafted manifest part took 2.3 GB: errors of 4 MB each in every row (a few KB on disk) are
    read a few rows at a time, or dictionary-encoded, and cut before they are decoded, listed or
    grouped; a part of input names of 2 MB each (no job writes one) is left out with one warning line."""
    out, n = tmp_path / "out", 200 if dictionary else 16
    images.write(out / "_runs" / "a.json", json.dumps(GOOD_RUN).encode())
    huge = pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int32()), pa.array(["x" * (4 << 20)]))
    rows = pa.table({**{k: [v] * n for k, v in GOOD_ROW.items()}, "input_uri": [f"/in/{i}.jpg" for i in range(n)]})
    rows = rows.set_column(rows.schema.get_field_index("status"), "status", pa.array(["error"] * n))
    rows = rows.set_column(rows.schema.get_field_index("error"), "error", huge)
    (out / "_manifest").mkdir()
    pq.write_table(rows, out / "_manifest" / "a-00000.parquet", use_dictionary=dictionary, compression="zstd")
    images.write(out / "_manifest" / "a-00001.parquet", _parquet([{**GOOD_ROW, "input_uri": "/in/" + "y" * (2 << 20)}]))
    with caplog.at_level("WARNING"):
        report = read_report(str(out))
    (warning,) = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert "a-00001.parquet: unreadable manifest part, left out of the report (a row of 2,097," in warning
    assert len(warning) < 300 and "\n" not in warning
    listed = list(failed(report))
    assert len(listed) == n and {len(row["error"]) for row in listed} == {MAX_ERROR_CHARS + 1}  # and its "…"
    assert report.counts == {"ok": 0, "error": n, "skipped": 0} and len(text(report)) < 3 * MAX_ERROR_CHARS


@pytest.mark.parametrize("damage", list(DAMAGED_OUTPUTS))
def test_report_over_damaged_manifest_parts_and_summaries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog, damage: str
) -> None:
    """An unreadable manifest part was a traceback (a truncated or empty one after a full disk):
    it is left out with one warning naming it. A hand-edited summary's field of another type
    (style_sources a list, run_id or started_at a number) was a traceback: it shows as `?`."""
    out = tmp_path / "out"
    images.write(out / "_runs" / "a.json", json.dumps({**GOOD_RUN, "style_sources": {"s": ["/s.jpg"]}}).encode())
    images.write(out / "_manifest" / "a-00000.parquet", _parquet([GOOD_ROW]))
    rel, data, warning, run_b = DAMAGED_OUTPUTS[damage]
    images.write(out / rel, data)
    with caplog.at_level("WARNING"):
        assert main(["report", str(out), "--errors", "--html", str(tmp_path / "report.html")]) == 0
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == (warning is not None) and all(warning in w and "\n" not in w for w in warnings), warnings
    shown = capsys.readouterr().out
    runs = [line.split() for line in shown.splitlines()[2:] if line.startswith("  ")]  # below the table's header
    good = ["a", "2026-01-01T00:00:00Z", "1", "0", "0", "1.0", "?"]  # the good run, as it was
    assert sorted(runs) == sorted([good, run_b.split()] if run_b else [good])
    assert "outputs now: 1 ok, 0 error, 0 skipped" in shown


def test_outputs_inside_the_input_are_never_read_back(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    """Not as the input spells them, nor through a link to the input or one inside it to the output."""
    src = inputs(tmp_path / "in", ["a.png", "sub/b.png"])
    out = src / "stylized"
    (tmp_path / "alias").symlink_to(src, target_is_directory=True)
    (src / "peek").symlink_to(out, target_is_directory=True)  # inside the input, to its output
    for source in (src, tmp_path / "alias"):  # the input as it is, then through a link to it
        run_stylize(make_config(weights, str(source), (style_file(tmp_path),), str(out)))
    assert set(output_files(out)) == {"wave/a.png", "wave/sub/b.png"}
    assert {r["rel_path"] for r in local_manifest(out)} == {"a.png", "sub/b.png"}
    for spelled in (str(src) + "/", str(tmp_path / "alias")):
        with pytest.raises(ConfigError, match="is the --input"):
            make_config(weights, spelled, (style_file(tmp_path),), str(src))


def test_a_link_inside_the_output_never_carries_a_write_outside(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path
) -> None:
    """OUTPUT/in, a link back to the input, is where style `in`'s outputs go: error rows, inputs untouched."""
    src, out = inputs(tmp_path / "realin", ["a.png", "b.png"]), tmp_path / "out"
    out.mkdir()
    (out / "in").symlink_to(src, target_is_directory=True)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    style = str(images.write(tmp_path / "styles" / "in.png", images.encoded(32, 32, "PNG", seed=3)))
    summary = run_stylize(make_config(weights, str(src), (style,), str(out)))
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    rows = local_manifest(out)
    assert summary["error"] == 2 and [r["status"] for r in rows] == ["error", "error"], rows
    assert all(f"{out / 'in'} leads outside the output (a symbolic link)" in r["error"] for r in rows), rows


def test_a_fifo_among_the_inputs_is_its_error_row(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    """Opening a FIFO waits for a writer: one a list file names is refused unopened, and the job finishes."""
    src, out = inputs(tmp_path / "in", ["a.png", "b.png"]), tmp_path / "out"
    os.mkfifo(src / "pipe.png")
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{src / name}\n" for name in ("a.png", "b.png", "pipe.png")))
    cfg = make_config(weights, str(listed), (style_file(tmp_path),), str(out))
    done: dict[str, dict] = {}
    job = threading.Thread(target=lambda: done.update(summary=run_stylize(cfg)), daemon=True)
    job.start()
    job.join(120)
    if job.is_alive():  # a reader stuck on the FIFO: an end of file frees it, the test fails
        with contextlib.suppress(OSError):
            os.close(os.open(src / "pipe.png", os.O_WRONLY | os.O_NONBLOCK))
    assert "summary" in done, "the job hung on the FIFO"
    rows = {Path(r["input_uri"]).name: r for r in local_manifest(out)}
    assert [rows[name]["status"] for name in ("a.png", "b.png", "pipe.png")] == ["ok", "ok", "error"], rows
    assert "pipe.png: not a regular file" in rows["pipe.png"]["error"]


def test_symlinks_inside_the_input_only_and_loops_once(tmp_path: Path) -> None:
    src = inputs(tmp_path / "in", ["a.png", "sub/b.png"])
    outside = inputs(tmp_path / "elsewhere", ["secret.png"])
    (src / "sub" / "loop").symlink_to(src, target_is_directory=True)  # in/sub/loop -> in
    (src / "away").symlink_to(outside, target_is_directory=True)
    (src / "away.png").symlink_to(outside / "secret.png")
    (src / "again.png").symlink_to(src / "a.png")  # inside: a file of its own name
    listed = list_inputs(str(src)).column("rel_path").to_pylist()
    assert sorted(listed) == ["a.png", "again.png", "sub/b.png"]


def test_names_that_are_not_utf8_are_left_out_with_a_warning(tmp_path: Path, caplog) -> None:
    """A file or folder whose name is not UTF-8 (Latin-1 from an old camera, say) cannot be an
    Arrow string, an object key or a manifest row: left out, counted in a warning, never a crash."""
    src = inputs(tmp_path / "in", ["a.png", "sub/b.png"])
    for name in (b"caf\xe9.png", b"\xff\xfe.png", b"d\xe9j\xe0/c.png"):
        images.write(src / os.fsdecode(name), images.encoded(40, 32, "PNG"))  # a folder's too: d\xe9j\xe0/
    with caplog.at_level("WARNING"):
        listed = list_inputs(str(src)).column("rel_path").to_pylist()
    assert sorted(listed) == ["a.png", "sub/b.png"]
    assert "left out 3 names that are not UTF-8" in caplog.text
    pages = list(iter_files(str(src), (".png",)))
    assert sorted(rel for rels, _ in pages for rel in rels) == ["a.png", "sub/b.png"]


# ---------------------------------------------------------------------------------------------
# the run lock as a lease


def test_unreadable_locks_are_judged_by_their_age(tmp_path: Path) -> None:
    lock = tmp_path / "_lock.json"
    for content in (b"", b"{garbage", b'{"owner": 3, "expires_at": "soon"}', b"[1, 2]"):
        lock.write_bytes(content)
        with pytest.raises(StorageError, match="cannot be read") as caught:
            acquire(str(lock), "next", ttl_s=600)
        assert "\n" not in str(caught.value)
        old = time.time() - 601
        os.utime(lock, (old, old))  # older than the time to live: a dead run's
        lease = acquire(str(lock), "next", ttl_s=600)
        assert json.loads(lock.read_text())["owner"] == "next"
        release(lease)
        assert not lock.exists()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_live_run_renews_its_lease_and_one_taker_wins(
    tmp_path: Path, s3_server: S3Server, bucket: str, where: str
) -> None:
    lock = str(tmp_path / "_lock.json") if where == "local" else f"s3://{bucket}/out/_lock.json"
    lease = acquire(lock, "long-run", ttl_s=1.0)
    with LeaseKeeper(lease):
        time.sleep(2.5)  # well past the first expiry: renewed meanwhile
        with pytest.raises(StorageError, match="long-run"):
            acquire(lock, "intruder", ttl_s=1.0)
    time.sleep(1.2)  # no longer renewed: expired
    winners, errors = [], []

    def take(name: str) -> None:
        try:
            winners.append(acquire(lock, name, ttl_s=600))
        except StorageError as exc:
            errors.append(str(exc))

    takers = [threading.Thread(target=take, args=(f"taker{i}",)) for i in range(4)]
    for thread in takers:
        thread.start()
    for thread in takers:
        thread.join()
    assert len(winners) == 1 and len(errors) == 3, errors
    assert lease.lost is None and not renew(lease)
    assert lease.lost and winners[0].owner in lease.lost
    release(winners[0])


def test_shards_of_a_dead_run_are_never_read(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    """A dead run's shard (not in the index) is removed by the next run, which indexes its own."""
    src, styles, out = tmp_path / "in", tmp_path / "styles", tmp_path / "out"
    write_dataset(src, ["cats/tabby.jpg", "dogs/beagle.jpg"])
    write_styles(styles, 3)
    orphan = out / "shards" / "dead-run-0123456789ab.tar"
    orphan.parent.mkdir(parents=True)
    with tarfile.open(orphan, "w") as tar:
        data = b"half a run"
        info = tarfile.TarInfo("cats/tabby__s0.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    run_augment(augment_config(weights, src, styles, out, per_image=2, shards=True, run_id="r1"))
    assert not orphan.exists()
    indexed = shard_index(str(out))
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == indexed and indexed
    assert all(name.startswith("r1-") for name in indexed)


@pytest.mark.parametrize("body", [b"not json", b"[1]", b'{"shards": 5}', b'{"shards": [1, {"a": 2}]}', b"[" * 100_000])
def test_a_damaged_shard_index_stops_the_run_before_work_and_deletes_no_shard(tmp_path: Path, body: bytes) -> None:
    """An index edited by hand was a traceback once all the work was done; read as empty, it would
    have had every finished run's shards deleted as a dead run's."""
    shard = tmp_path / "shards" / "r1-0123456789ab.tar"
    images.write(shard, b"a finished run's shard")
    images.write(tmp_path / "shards" / "index.json", body)
    with pytest.raises(StorageError, match="unreadable shard index") as caught:
        remove_orphan_shards(str(tmp_path))
    assert "\n" not in str(caught.value) and shard.read_bytes() == b"a finished run's shard"


def test_a_dangling_link_among_the_outputs_is_not_an_output(tmp_path: Path) -> None:
    """A dangling link (or a file removed while its folder is listed) stopped the job with os.stat's
    traceback, as the existing outputs were listed after Ray had started."""
    images.write(tmp_path / "s" / "a.jpg", images.encoded(32, 32))
    (tmp_path / "s" / "old.jpg").symlink_to(tmp_path / "gone.jpg")
    pages = list(iter_files(str(tmp_path), (".jpg",)))
    assert [rel for rels, _ in pages for rel in rels] == ["s/a.jpg"]


@pytest.mark.parametrize("input_uri", ["s3://", "s3://bucket/in/", "/"])
def test_error_reasons_of_inputs_without_a_file_name(input_uri: str) -> None:
    """'' as the file name to take out was put between every letter: 'FILEnFILEoFILEt...'."""
    assert reason(f"{input_uri}: not found; check the path", input_uri) == "not found; check the path"


# ---------------------------------------------------------------------------------------------
# banks and weights, checked on load


RAGGED = pa.schema(
    [f if f.name not in ("mean", "std") else pa.field(f.name, pa.list_(pa.float32())) for f in BANK_SCHEMA]
)


@pytest.mark.parametrize(
    ("rows", "schema", "meta", "words"),
    [
        ([bank_row("a", mean=[0.1] * 511)], RAGGED, None, "512 values"),
        ([bank_row("a", mean=[float("nan")] * 512)], BANK_SCHEMA, None, "NaN or inf"),
        ([bank_row("a", std=[-1.0] * 512)], BANK_SCHEMA, None, "not positive"),
        ([bank_row("a"), bank_row("a")], BANK_SCHEMA, None, "not unique"),
        ([{"style_id": "a"}], pa.schema([("style_id", pa.string())]), None, "no mean, std column"),
        ([bank_row("a")], BANK_SCHEMA, {b"adain.format": b"adain-ray.style-bank/1"}, "names no encoder"),
        ([bank_row("x"), bank_row("a/b"), bank_row("a_b")], BANK_SCHEMA, None, "'a/b' and 'a_b' would share"),
        ([bank_row("Scream"), bank_row("scream")], BANK_SCHEMA, None, "'Scream' and 'scream' would share"),
        (
            [{**bank_row("5"), "style_id": 5}],
            BANK_SCHEMA.set(0, pa.field("style_id", pa.int64())),
            None,
            "style ids are not text",
        ),
        ([], BANK_SCHEMA, None, "the style bank is empty"),
    ],
    ids=[
        "ragged",
        "nan",
        "negative-std",
        "duplicate-ids",
        "no-columns",
        "no-encoder",
        "slug",
        "case",
        "not-text",
        "empty",
    ],
)
def test_damaged_banks_are_refused_in_one_line(tmp_path: Path, rows, schema, meta, words) -> None:
    """By the job as it loads the bank, and alike by the preflight's reading of its footer and columns."""
    path = write_bank(tmp_path / "bank.parquet", rows, schema, meta)
    with pytest.raises(ConfigError, match=words) as caught:
        load_bank(path)
    assert "\n" not in str(caught.value)
    asked: list[str] = []
    with pytest.raises(ConfigError) as preflight:
        check_bank(path, lambda: asked.append("encoder") or "ab")
    assert str(preflight.value) == str(caught.value)
    assert asked == (["encoder"] if not rows else [])  # torch loads for the encoder only past the other checks


# Ids that `slug` and `folded` may bring together: separators, dots, underscores, case, and
# letters whose case folding is not one to one.
BANK_IDS = st.lists(
    st.lists(
        st.sampled_from(["a", "A", "b", "/", ".", "_", "-", " ", "\u0130", "\u0131", "i", "\u00df", "ss"]), max_size=4
    ).map("".join),
    min_size=1,
    max_size=6,
    unique=True,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=BANK_IDS)
def test_a_bank_is_refused_or_its_styles_write_apart(tmp_path: Path, ids: list[str]) -> None:
    """Bank ids `a/b` and `a_b` wrote into one folder, `Scream` and `scream` into one on a
    filesystem that ignores case, each row ok: such a bank is refused, naming two ids; any
    bank taken writes each style's outputs under names of its own, compared without case."""
    path = write_bank(tmp_path / "bank.parquet", [bank_row(style_id) for style_id in ids])
    try:
        bank = load_bank(path)
    except ConfigError as exc:
        assert "would share an output folder" in str(exc) and "\n" not in str(exc)
        return
    folders = [output_key("/out", style_id, "c", "jpg").split("/")[2] for style_id in bank.ids]
    names = [augmented_key("/out", style_id, "c", "jpg").rsplit("/", 1)[1] for style_id in bank.ids]
    assert len(set(folded(folders))) == len(set(folded(names))) == len(ids)


def test_damaged_weights_are_refused_in_one_line(weights: WeightFiles, tmp_path: Path) -> None:
    nan = {k: torch.full_like(v, float("nan")) for k, v in weights.decoder_state.items()}
    cases = {
        "nan.pth": (nan, "NaN or inf"),
        "no-state.pth": ({"format": "adain-ray.checkpoint", "kind": "decoder", "arch": ARCH_VERSION}, "damaged"),
        "not-tensors.pth": ({**weights.decoder_state, "1.weight": 3}, "not a decoder weight file"),
        "unknown-keys.pth": ({**weights.decoder_state, "extra.weight": torch.zeros(1)}, "do not fit"),
    }
    for name, (obj, words) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(WeightsError, match=words) as caught:
            load_decoder(str(tmp_path / name))
        assert "\n" not in str(caught.value), name


def test_non_finite_outputs_are_error_rows(weights: WeightFiles, tmp_path: Path) -> None:
    """Statistics that overflow (finite, but far out of range) make NaN/inf outputs: error rows,
    never black images recorded ok."""
    src = inputs(tmp_path / "in", ["a.png"])
    styles = StyleSet(("huge",), np.full((1, 512), 3e38, np.float32), np.full((1, 512), 3e38, np.float32))
    plan = Plan(EveryStyle(styles.ids), FileWriter(OutputSpec(str(tmp_path / "out"), "png"), output_key))
    decoded = decode_inputs(list_inputs(str(src)), plan=plan, sizing=Sizing(32, 32))
    actor = StyleModel(ModelConfig(str(weights.vgg), str(weights.decoder), "cpu"), styles, Sizing(32, 32), 4)
    (row,) = actor(pa.Table.from_pylist(decoded.to_pylist(), schema=DECODED_SCHEMA)).to_pylist()
    assert (row["status"], row["error"], row["pixels"]) == (ERROR, NOT_FINITE, None)


def test_outputs_longer_than_their_format_holds_are_error_rows(weights: WeightFiles, tmp_path: Path) -> None:
    """A 1 x 2100 strip is 32 x 67200 once its shorter side is 32: more than a JPEG can hold. Its
    row says so and what to do, whether the JPEG would be encoded on the model's device or by
    Pillow; nothing is spent on the model where the device encodes."""
    src = tmp_path / "in"
    images.write(src / "strip.png", images.encoded(1, 2100, "PNG"))
    styles = StyleSet(("wave",), np.zeros((1, 512), np.float32), np.ones((1, 512), np.float32))
    plan = Plan(EveryStyle(styles.ids), FileWriter(OutputSpec(str(tmp_path / "out"), "jpg"), output_key))
    decoded = decode_inputs(list_inputs(str(src)), plan=plan, sizing=Sizing(32, 32))
    model = ModelConfig(str(weights.vgg), str(weights.decoder), "cpu")
    actor = StyleModel(model, styles, Sizing(32, 32), 4, jpeg_quality=90)
    (row,) = actor(pa.Table.from_pylist(decoded.to_pylist(), schema=DECODED_SCHEMA)).to_pylist()
    assert row["status"] == ERROR and row["model_ms"] is None, row
    assert row["error"] == (
        "32x67200 is over JPEG's limit of 65,500 pixels a side; set --max-side, or write --format png"
    )
    for fmt, size in (("jpg", (9, 65_501)), ("webp", (16_384, 9))):
        with pytest.raises(ImageError, match=f"over {FORMATS[fmt]}'s limit"):
            encode(Image.new("RGB", size), fmt)
    assert encode(Image.new("RGB", (16_384, 9)), "png")


# ---------------------------------------------------------------------------------------------
# files, keys, failing fast, the manifest


def test_files_are_created_with_the_umask(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        src, out = inputs(tmp_path / "in", ["a.png"]), tmp_path / "out"
        run_stylize(make_config(weights, str(src), (style_file(tmp_path),), str(out)))
        save_checkpoint(str(tmp_path / "decoder.pth"), "decoder", Decoder(), {})
    finally:
        os.umask(old)
    # Outputs (written by the model's tasks), manifest parts and summaries (the driver), weights: every
    # writer of local files (a bank's too) goes through uri.write_bytes.
    made = [p for p in (out.rglob("*")) if p.is_file()] + [tmp_path / "decoder.pth"]
    assert len(made) >= 4
    assert {stat.S_IMODE(p.stat().st_mode) for p in made} == {0o644}, {p: oct(p.stat().st_mode) for p in made}


def test_odd_object_keys_are_read_as_the_objects_they_are(
    ray_cluster: str, weights: WeightFiles, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    s3 = s3_server.client()
    keys = ["in/a.png", "in//x.png", "in/d/../y.png", "in/./z.png", "in/d/y.png"]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=images.encoded(40, 32, "PNG", seed=i))
    style = style_file(tmp_path)
    summary = run_stylize(make_config(weights, f"s3://{bucket}/in", (style,), f"s3://{bucket}/out"))
    rows = s3_manifest(s3, bucket, "out")
    assert summary["ok"] == len(keys) and len({r["output_uri"] for r in rows}) == len(keys), rows


def test_a_prefix_written_with_its_slash_is_listed_beside_an_object_of_its_name(
    s3_server: S3Server, bucket: str
) -> None:
    """An object `in` beside `in/a.jpg`: s3://B/in/ was taken for the object, as one input `in/`
    that did not exist, and the prefix's images were never read. Without the '/', `in` is the object."""
    s3 = s3_server.client()
    for key in ("in", "in/a.jpg", "in/sub/b.jpg"):
        s3.put_object(Bucket=bucket, Key=key, Body=images.encoded(32, 32, seed=len(key)))
    listed = list_inputs(f"s3://{bucket}/in/")
    assert sorted(listed.column("rel_path").to_pylist()) == ["a.jpg", "sub/b.jpg"]
    assert list_inputs(f"s3://{bucket}/in").column("input_uri").to_pylist() == [f"s3://{bucket}/in"]


def test_an_object_whose_key_ends_in_a_slash_is_its_error_row_saying_so(
    ray_cluster: str, s3_server: S3Server, bucket: str, weights: WeightFiles, tmp_path: Path
) -> None:
    """An object `in/b.jpg/` holding an image (not a zero-byte folder marker) is listed without
    its '/' (pyarrow's listing), as `in/b.jpg`, which is not there: its error row said only
    "not found". It says which object was listed and how to name it; named with its '/' (in a
    list file) it is read; `in/c/`, a marker, is no input."""
    s3 = s3_server.client()
    for key, body in (("in/a.jpg", images.encoded(32, 32, seed=1)), ("in/b.jpg/", images.encoded(32, 32, seed=2))):
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    s3.put_object(Bucket=bucket, Key="in/c/", Body=b"")
    images.write(tmp_path / "style.jpg", images.encoded(32, 32, seed=3))
    argv = ["stylize", "--input", f"s3://{bucket}/in/", "--style", str(tmp_path / "style.jpg")]
    argv += ["--output", str(tmp_path / "out"), "--address", ray_cluster, *job_flags(weights)]
    assert main(argv) == EXIT_ERROR_ROWS
    (row,) = [r for r in local_manifest(tmp_path / "out") if r["status"] == ERROR]
    assert row["input_uri"] == f"s3://{bucket}/in/b.jpg"
    assert f"the object s3://{bucket}/in/b.jpg/ (" in row["error"] and "name it with its '/'" in row["error"]
    assert read_bytes(f"s3://{bucket}/in/b.jpg/") == images.encoded(32, 32, seed=2)


def test_an_unwritable_output_fails_before_any_work(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    src = inputs(tmp_path / "in", ["a.png"])
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder would be")
    started = time.time()
    with pytest.raises(StorageError, match=r"--output: .*file is a file, not a directory") as caught:
        run_stylize(make_config(weights, str(src), (style_file(tmp_path),), str(blocker / "out")))
    assert time.time() - started < 5 and "\n" not in str(caught.value)


def test_skipped_rows_never_claim_this_runs_weights(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    src, out = inputs(tmp_path / "in", ["a.png"]), tmp_path / "out"
    for _ in range(2):
        run_stylize(make_config(weights, str(src), (style_file(tmp_path),), str(out)))
    rows = {r["status"]: r for r in local_manifest(out)}
    assert rows["ok"]["decoder_sha256"] and rows["skipped"]["decoder_sha256"] is None
    assert rows["skipped"]["encoder_sha256"] is None


def test_the_manifest_reaches_storage_within_seconds(tmp_path: Path) -> None:
    """A driver killed mid-run loses at most flush_seconds of rows: rows are written as parts
    once that long has passed since the last part, without waiting for more rows."""
    values = run_values(ModelConfig(), Sizing(), OutputSpec(str(tmp_path)), alpha=1.0, style_weights=None)
    writer = ManifestWriter(str(tmp_path), "r", values | {"preserve_color": None}, flush_seconds=0.5)
    assert ManifestWriter(str(tmp_path), "s", values).flush_seconds <= 5
    row = {"input_uri": "/a.png", "rel_path": "a.png", "style": "s", "status": "ok", "output_uri": "/o/s/a.png"}
    writer.add(pa.Table.from_pylist([row], schema=ROW_SCHEMA))
    time.sleep(1.5)  # no more rows come: the part is written all the same
    assert len(list((tmp_path / "_manifest").glob("r-*.parquet"))) == 1
    writer.close()
