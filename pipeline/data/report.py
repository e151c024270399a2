"""`adain report OUTPUT`: what the runs under an output prefix did, from their summaries and manifest.

runs      OUTPUT/_runs/RUN_ID.json      counts, wall time and rate of each run; a run with rows in the
                                        manifest but no summary (interrupted, killed) by its rows' counts
outputs   OUTPUT/_manifest/*.parquet    the latest row of each (input, style): the state now
errors    the most common reasons, and every failed output on request
html      a page with the same tables and a labelled contact sheet (content | style | output)
"""

from __future__ import annotations

import base64
import heapq
import html
import itertools
import json
import logging
import os
import posixpath
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from pipeline.data.manifest import status_counts
from pipeline.data.preview import sample_columns, thumbnail
from pipeline.data.rows import ERROR, OK, STATUSES
from pipeline.errors import ConfigError, counted, describe, one_line
from pipeline.imaging.codec import MAX_PIXELS, VIDEO_EXTENSIONS, encode
from pipeline.storage.listing import list_files
from pipeline.storage.uri import is_dir, join, open_input, read_bytes, write_bytes

log = logging.getLogger(__name__)

COLUMNS = ("run_id", "input_uri", "style", "output_uri", "status", "error")


# A manifest is read a part at a time and a slice of rows at a time, so that the report's memory does
# not grow with the rows: more than BUCKET_ROWS are split by (input_uri, style) into temporary files
# first, and each file's latest rows found alone.
BATCH_ROWS = 65_536  # rows read from a part at a time
BATCH_BYTES = 32 << 20  # text those rows may hold, decoded, before they are cut into smaller slices
BUCKET_ROWS = 200_000  # rows grouped in memory at once
MERGE_ROWS = 4_096  # rows of each bucket held at once while they are merged in the order written
MAX_ROW_BYTES = 1 << 20  # a row holding more (no job writes one) leaves its part out
MAX_ERROR_CHARS = 2_000  # an error kept, grouped and listed at most this long (its cause is at its start)
READ_BUFFER = 1 << 20  # a part is read through a buffer of this size, not a column chunk at a time
SPILLED = ipc.IpcWriteOptions(compression="lz4")  # the buckets' files: a manifest's URIs compress well


@dataclass
class Latest:
    """One row per (input_uri, style), its latest, in groups (tables in memory or Arrow files in
    `folder`), each in the order the rows were written, with their place in it (`order`)."""

    groups: list[pa.Table | str] = field(default_factory=list)
    folder: tempfile.TemporaryDirectory | None = None

    def rows(self, status: str, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
        """The rows of `status`, in the order they were written, merged from every group a batch at a time."""
        groups = (_ordered(group, status, columns) for group in self.groups)
        return (row for _, row in heapq.merge(*groups, key=lambda pair: pair[0]))


def _ordered(group: pa.Table | str, status: str, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for batch in _group_batches(group):
        rows = batch.filter(pc.equal(batch.column("status"), status))
        yield from zip(rows.column("order").to_pylist(), rows.select(list(columns)).to_pylist(), strict=True)


def _group_batches(group: pa.Table | str) -> Iterator[pa.RecordBatch]:
    if isinstance(group, pa.Table):
        yield from group.to_batches()
        return
    with pa.OSFile(group) as file:  # not memory-mapped: pages read stay out of the resident set
        reader = ipc.open_file(file)
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


@dataclass
class Report:
    output: str
    runs: list[dict[str, Any]]
    latest: Latest  # one row per (input_uri, style): its latest status
    counts: dict[str, int] = field(default_factory=dict)
    reasons: list[tuple[str, int]] = field(default_factory=list)
    sources: dict[str, list[str]] = field(default_factory=dict)  # style id -> its style images
    unfinished: dict[str, dict[str, int]] = field(default_factory=dict)  # run id with no summary -> its rows' counts


def read_report(output: str, top: int = 10, batch_rows: int = BATCH_ROWS, bucket_rows: int = BUCKET_ROWS) -> Report:
    """Everything `adain report` shows of the runs under `output`, read `batch_rows` rows at a time and
    grouped `bucket_rows` rows at a time."""
    runs_dir, manifest_dir = join(output, "_runs"), join(output, "_manifest")
    if not is_dir(manifest_dir) and not is_dir(runs_dir):
        raise ConfigError(f"{output}: no runs here (no _runs/ or _manifest/); give the --output of a job")
    listed = list_files(runs_dir, (".json",)) if is_dir(runs_dir) else []
    runs = [_summary(uri) for uri, _ in listed]
    runs.sort(key=lambda run: (summary_field(run, "started_at", str) or "", summary_field(run, "run_id", str) or ""))
    # A summary is written as a run ends: ids in the manifest that none names (nor a summary's file) did not finish.
    summarized = {summary_field(run, "run_id", str) for run in runs} | {rel.removesuffix(".json") for _, rel in listed}
    named = pa.array(sorted(summarized - {None}), pa.string())
    parts = _parts(manifest_dir)
    rows = sum(metadata.num_rows for _, metadata in parts)
    spill = _Spill(max(1, min(-(-rows // bucket_rows), open_files_allowed())))
    unfinished_rows: Counter[tuple[str, str]] = Counter()
    with spill:
        for number, (uri, metadata) in enumerate(parts):
            if (counted_rows := _read_part(uri, metadata, number, batch_rows, named, spill)) is not None:
                unfinished_rows.update(counted_rows)
        latest, counts, reasons = _latest(spill)
    unfinished: dict[str, dict[str, int]] = {}
    for (run_id, status), n in sorted(unfinished_rows.items(), key=lambda item: item[0][0]):
        unfinished.setdefault(run_id, {})[status] = n
    sources = {k: v for run in runs for k, v in style_sources(run).items()}
    statuses = {s: counts.get(s, 0) for s in STATUSES}
    return Report(output, runs, latest, statuses, reasons[:top], sources, unfinished)


class _Spill:
    """The manifest's rows split into `buckets` by (input_uri, style): in memory for one, else
    Arrow files in a temporary folder that the report's `Latest` keeps until it is dropped."""

    def __init__(self, buckets: int) -> None:
        self.buckets = buckets
        self.folder = tempfile.TemporaryDirectory(prefix="adain-report-") if buckets > 1 else None
        self.tables: list[list[pa.Table]] = [[] for _ in range(buckets)]
        self.writers: list[ipc.RecordBatchFileWriter | None] = [None] * buckets
        self.sinks: list[pa.NativeFile | None] = [None] * buckets  # closed here: a closed writer keeps it open
        self.failed: set[int] = set()  # parts that broke off after some of their rows were added
        self.rows = 0  # rows added: the next one's order

    def path(self, bucket: str | int) -> str:
        assert self.folder is not None
        return os.path.join(self.folder.name, f"{bucket}.arrow")

    def add(self, rows: pa.Table) -> None:
        if self.folder is None:
            self.tables[0].append(rows)
            return
        keys = zip(rows.column("input_uri").to_pylist(), rows.column("style").to_pylist(), strict=True)
        buckets = np.fromiter((hash(key) % self.buckets for key in keys), np.int64, rows.num_rows)
        ranked = np.argsort(buckets, kind="stable")  # each bucket's rows together, in the order written
        rows, edges = rows.take(ranked), np.searchsorted(buckets[ranked], np.arange(self.buckets + 1))
        for bucket in np.flatnonzero(np.diff(edges)):
            if self.writers[bucket] is None:
                self.sinks[bucket] = pa.OSFile(self.path(bucket), "wb")
                self.writers[bucket] = ipc.new_file(self.sinks[bucket], rows.schema, options=SPILLED)
            self.writers[bucket].write_table(rows.slice(edges[bucket], edges[bucket + 1] - edges[bucket]))

    def bucket(self, bucket: int) -> pa.Table | None:
        """The rows of `bucket`, less those of parts that broke off; None for none."""
        if self.folder is None:
            rows = pa.concat_tables(self.tables[0]) if self.tables[0] else None
            self.tables[0] = []
        elif self.writers[bucket] is not None:
            self._close(bucket)
            with pa.OSFile(self.path(bucket)) as file:
                rows = ipc.open_file(file).read_all()
            os.remove(self.path(bucket))
        else:
            rows = None
        if rows is not None and self.failed:
            rows = rows.filter(pc.invert(pc.is_in(rows.column("part"), value_set=pa.array(sorted(self.failed)))))
        return rows

    def __enter__(self) -> _Spill:
        return self

    def _close(self, bucket: int) -> None:
        if (writer := self.writers[bucket]) is not None:
            writer.close()
            self.sinks[bucket].close()
            self.writers[bucket] = self.sinks[bucket] = None

    def __exit__(self, *_: object) -> None:
        for bucket in range(self.buckets):
            self._close(bucket)


def open_files_allowed() -> int:
    """How many buckets may be open at once (one file each, while they are written and again while
    they are merged): the soft limit on open files raised as far as the hard one allows, as Ray
    raises it, less a reserve for everything else the process holds open."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to raise
        return 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in (hard, 65_536, 10_240):  # macOS refuses more than its OPEN_MAX, even under an unlimited hard limit
        if wanted == resource.RLIM_INFINITY or wanted <= soft or (hard != resource.RLIM_INFINITY and wanted > hard):
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            continue
        soft = wanted
        break
    return max(16, soft - 256)


def _latest(spill: _Spill) -> tuple[Latest, Counter[str], list[tuple[str, int]]]:
    """Each bucket's latest rows, their counts by status, and the error reasons, most common
    first (ties in the order of their first row)."""
    latest, counts = Latest(folder=spill.folder), Counter()
    reasons: dict[str, list[int]] = {}  # reason -> [count, order of its first row]
    for bucket in range(spill.buckets):
        rows = spill.bucket(bucket)
        if rows is None or not rows.num_rows:
            continue
        rows = latest_rows(rows.drop_columns(["part", "run_id"])).sort_by("order")
        counts.update(status_counts(rows.column("status")))
        errors = rows.filter(pc.equal(rows.column("status"), ERROR))
        for row in errors.select(["order", "error", "input_uri"]).to_pylist():
            seen = reasons.setdefault(reason(row["error"] or "", row["input_uri"]), [0, row["order"]])
            seen[0] += 1
            seen[1] = min(seen[1], row["order"])
        if spill.folder is None:
            latest.groups.append(rows)
        else:
            path = spill.path(f"latest-{bucket}")
            with ipc.new_file(path, rows.schema, options=SPILLED) as writer:
                writer.write_table(rows, max_chunksize=MERGE_ROWS)
            latest.groups.append(path)
    ranked = sorted(reasons.items(), key=lambda item: (-item[1][0], item[1][1]))
    return latest, counts, [(why, n) for why, (n, _) in ranked]


def _summary(uri: str) -> dict[str, Any]:
    try:
        return dict(json.loads(read_bytes(uri)))
    except (ValueError, TypeError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        return {"run_id": posixpath.basename(uri).removesuffix(".json"), "unreadable": describe(exc)}


def summary_field(run: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """A run summary's field, or None where it is missing or of another type (a hand-edited summary)."""
    value = run.get(key)
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def style_sources(run: dict[str, Any]) -> dict[str, list[str]]:
    """A run summary's style id -> style images, leaving out what is not that (a hand-edited summary)."""
    sources = summary_field(run, "style_sources", dict) or {}
    return {
        k: v
        for k, v in sources.items()
        if isinstance(k, str) and isinstance(v, list) and all(isinstance(u, str) for u in v)
    }


MANIFEST = pa.schema([(name, pa.string()) for name in COLUMNS])  # the columns the report reads, as text


class _Oversized(ValueError):
    """A manifest part holding rows no job writes, too large to read within the report's bounds."""


def _parts(directory: str) -> list[tuple[str, pq.FileMetaData]]:
    """The manifest's parts in the order they were written, with their footers; those that cannot
    be read, left out with a warning."""
    uris = sorted(uri for uri, _ in list_files(directory, (".parquet",))) if is_dir(directory) else []
    parts = []
    for uri in uris:
        try:
            with open_input(uri) as file:
                part = pq.ParquetFile(file)
                if missing := [name for name in COLUMNS if name not in part.schema_arrow.names]:
                    raise pa.ArrowInvalid(f"no column {missing[0]!r}")
        except (pa.ArrowException, OSError) as exc:  # OSError: a footer Arrow cannot deserialize
            log.warning("%s: unreadable manifest part, left out of the report (%s)", uri, describe(exc))
            continue
        parts.append((uri, part.metadata))
    return parts


def _read_part(
    uri: str, metadata: pq.FileMetaData, number: int, batch_rows: int, summarized: pa.Array, spill: _Spill
) -> Counter[tuple[str, str]] | None:
    """Add one manifest part's rows that name an input and a style to `spill`, numbered on from the
    rows before; the (run id, status) counts of its rows of runs not `summarized`. None where it
    cannot be read (truncated, empty after a full disk, not a manifest part, rows too large):
    what is left out, with a warning."""
    unfinished: Counter[tuple[str, str]] = Counter()
    unnamed = 0
    try:
        with open_input(uri) as file:
            for rows in _slices(file, metadata, batch_rows):
                named = pc.and_(pc.is_valid(rows.column("input_uri")), pc.is_valid(rows.column("style")))
                unnamed += rows.num_rows - pc.sum(named).as_py()
                rows = rows.filter(named)
                others = rows.filter(pc.invert(pc.is_in(rows.column("run_id"), value_set=summarized)))
                by_status = others.group_by(["run_id", "status"]).aggregate([([], "count_all")])
                for row in by_status.to_pylist():
                    if row["run_id"] is not None:
                        unfinished[row["run_id"], row["status"]] += row["count_all"]
                order = pa.array(np.arange(spill.rows, spill.rows + rows.num_rows, dtype=np.int64))
                spill.rows += rows.num_rows
                spill.add(
                    rows.append_column("order", order).append_column("part", pa.array(np.full(rows.num_rows, number)))
                )
    except (pa.ArrowException, OSError, _Oversized) as exc:  # OSError: a damaged page
        spill.failed.add(number)
        why = str(exc) if isinstance(exc, _Oversized) else describe(exc)
        log.warning("%s: unreadable manifest part, left out of the report (%s)", uri, why)
        return None
    if unnamed:
        log.warning("%s: %s naming no input or style, left out of the report", uri, counted(unnamed, "row"))
    return unfinished


def _slices(file: pa.NativeFile, metadata: pq.FileMetaData, batch_rows: int) -> Iterator[pa.Table]:
    """A part's COLUMNS as text, at most `batch_rows` rows and about BATCH_BYTES at a time, its errors
    cut to MAX_ERROR_CHARS. Text columns are read dictionary-encoded, so that a value repeated in
    every row is held once until a slice is decoded; _Oversized for a row of more than MAX_ROW_BYTES."""
    text = [
        column.path
        for column in (metadata.schema.column(i) for i in range(metadata.num_columns))
        if column.path in COLUMNS and column.physical_type == "BYTE_ARRAY"
    ]
    part = pq.ParquetFile(file, metadata=metadata, read_dictionary=text, buffer_size=READ_BUFFER)
    for group in range(metadata.num_row_groups):
        yield from _group_slices(part, group, batch_rows)


def _group_slices(part: pq.ParquetFile, group: int, batch_rows: int) -> Iterator[pa.Table]:
    meta = part.metadata.row_group(group)
    stored = sum(
        c.total_uncompressed_size for c in map(meta.column, range(meta.num_columns)) if c.path_in_schema in COLUMNS
    )
    rows = max(1, min(batch_rows, BATCH_BYTES * meta.num_rows // max(stored, 1)))  # long text not dictionary-encoded
    for batch in part.iter_batches(batch_size=rows, row_groups=[group], columns=list(COLUMNS)):
        columns = {name: _text(batch.column(name), MAX_ERROR_CHARS if name == "error" else None) for name in COLUMNS}
        sizes = sum((_lengths(column) for column in columns.values()), np.zeros(batch.num_rows, np.int64))
        if batch.num_rows and (largest := int(sizes.max())) > MAX_ROW_BYTES:
            raise _Oversized(f"a row of {largest:,} bytes, over the {MAX_ROW_BYTES:,} a manifest row may hold")
        cuts = np.searchsorted(np.cumsum(sizes), np.arange(BATCH_BYTES, int(sizes.sum()), BATCH_BYTES)) + 1
        edges = sorted({0, *cuts.tolist(), batch.num_rows})
        for start, end in itertools.pairwise(edges):
            decoded = [_decoded(columns[name].slice(start, end - start)) for name in COLUMNS]
            yield pa.table(decoded, schema=MANIFEST)


def _text(column: pa.Array, cut: int | None) -> pa.Array:
    """A column as text (dictionary-encoded where it was read so), cut to `cut` characters."""
    if pa.types.is_dictionary(column.type):
        words = _text(column.dictionary, cut)
        return pa.DictionaryArray.from_arrays(column.indices, words)
    words = column.cast(pa.string())
    if cut is None:
        return words
    long = pc.greater(pc.utf8_length(words), cut)
    return pc.if_else(long, pc.binary_join_element_wise(pc.utf8_slice_codeunits(words, 0, cut), "…", ""), words)


def _lengths(column: pa.Array) -> np.ndarray:
    """Each row's bytes of text, decoded: a dictionary's lengths taken per row, the text not copied."""
    if pa.types.is_dictionary(column.type):
        return np.asarray(pc.fill_null(pc.take(pc.binary_length(column.dictionary), column.indices), 0))
    return np.asarray(pc.fill_null(pc.binary_length(column), 0))


def _decoded(column: pa.Array) -> pa.Array:
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


def latest_rows(rows: pa.Table) -> pa.Table:
    """The last row written of each (input_uri, style), by `order`: parts are read in order, run ids sort by time."""
    if not rows.num_rows:
        return rows
    last = rows.group_by(["input_uri", "style"]).aggregate([("order", "max")])
    return rows.filter(pc.is_in(rows.column("order"), value_set=last.column("order_max")))


def reason(error: str, input_uri: str) -> str:
    """An error with its file's name taken out, so that the same failure of many files counts once."""
    for name in (input_uri, posixpath.basename(input_uri)):
        if name:  # '' (an input named `s3://`, or ending in '/') would be replaced between every letter
            error = error.replace(f"{name}: ", "").replace(name, "FILE")
    return error


def text(report: Report, errors_listed: bool = False) -> str:
    """The report as the terminal shows it: names and summary fields escaped (`one_line`), one line
    each; how to list every failed output, unless they are `errors_listed` after it."""
    lines = [f"runs under {report.output}:"]
    header = ("run", "started", "ok", "error", "skipped", "wall s", "images/s", "")
    ids = Counter(summary_field(run, "run_id", str) for run in report.runs)
    nth: Counter[str | None] = Counter()
    table = [header]
    for run in report.runs:  # a run id used again: each of its runs numbered, in the order they started
        run_id = summary_field(run, "run_id", str)
        nth[run_id] += 1
        table.append(_cells(run, f"{run_id} #{nth[run_id]}" if run_id is not None and ids[run_id] > 1 else None))
    for run_id, counts in report.unfinished.items():  # rows in the manifest, and no summary: it never ended
        cells = (one_line(run_id), "-", *(str(counts.get(s, 0)) for s in STATUSES), "-", "-")
        table.append((*cells, "unfinished (no summary)"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines += ["  " + "  ".join(cell.rjust(w) if 1 < i < 7 else cell.ljust(w) for i, (cell, w) in
                               enumerate(zip(row, widths, strict=True))).rstrip() for row in table]  # fmt: skip
    counts = ", ".join(f"{n} {status}" for status, n in report.counts.items())
    lines.append(f"outputs now: {counts} (the latest row of each input and style)")
    if report.reasons:
        lines.append("top error reasons:")
        lines += [f"  {n:6d}  {why}" for why, n in report.reasons]
        if not errors_listed:
            lines.append(f"every failed output: adain report {report.output} --errors")
    return "\n".join(one_line(line) for line in lines)


def _cells(run: dict[str, Any], label: str | None = None) -> tuple[str, ...]:
    """A run's row of the table, escaped (`one_line`): `?` for a field missing or of another type;
    `label` names the run instead of its id."""
    wall, rate = summary_field(run, "wall_s", (int, float)), summary_field(run, "images_per_s", (int, float))
    cells = (
        label or summary_field(run, "run_id", str),
        summary_field(run, "started_at", str),
        *(summary_field(run, status, int) for status in STATUSES),
        None if wall is None else f"{wall:.1f}",
        None if rate is None else f"{rate:.2f}",
    )
    return (*("?" if cell is None else one_line(str(cell)) for cell in cells), "")


def failed(report: Report) -> Iterator[dict[str, Any]]:
    """The outputs whose latest row is an error: input_uri, style, error."""
    return report.latest.rows(ERROR, ("input_uri", "style", "error"))


def write_html(report: Report, dest: str, samples: int = 24, max_pixels: int = MAX_PIXELS) -> None:
    """The report as a page: the runs, the counts, the reasons and a labelled contact sheet."""
    columns = ("input_uri", "style", "output_uri")
    rows = []
    for row in itertools.islice(report.latest.rows(OK, columns), samples):
        sample = tuple(row[name] for name in columns)
        cells = "".join(_figure(uri, caption, max_pixels) for uri, caption in sample_columns(sample, report.sources))
        rows.append(f"<tr>{cells}</tr>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>adain report: {html.escape(report.output)}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:4px 8px;text-align:left;vertical-align:top}}
figure{{margin:0}} img{{max-width:192px;max-height:192px}} figcaption{{font-size:12px;color:#444}}</style></head>
<body><h1>adain report</h1><pre>{html.escape(text(report))}</pre>
<h2>Contact sheet</h2><table><tr><th>content</th><th>style</th><th>output</th></tr>{"".join(rows)}</table>
</body></html>
"""
    write_bytes(dest, page.encode())


def _figure(uri: str | None, caption: str, max_pixels: int) -> str:
    pictured = uri and not uri.lower().endswith((".tar", *VIDEO_EXTENSIONS))  # a shard or a video: none to show
    image = thumbnail(uri, max_pixels) if pictured else None
    picture = (
        f'<img alt="{html.escape(caption)}" src="data:image/jpeg;base64,'
        f'{base64.b64encode(encode(image, "jpg", 85)).decode()}">'
        if image is not None
        else "<div>(no picture)</div>"
    )
    return f"<td><figure>{picture}<figcaption>{html.escape(caption)}</figcaption></figure></td>"
