"""`adain report OUTPUT`: what the runs under an output prefix did, from their summaries and manifest.

runs      OUTPUT/_runs/RUN_ID.json      counts, wall time and rate of each run; a run with rows in the
                                        manifest but no summary (interrupted, killed) by its rows' counts
outputs   OUTPUT/_manifest/*.parquet    the latest row of each (input, style): the state now
errors    the most common reasons, and every failed output on request
html      a page with the same tables and a labelled contact sheet (content | style | output)
"""

from __future__ import annotations

import base64
import html
import json
import logging
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.manifest import read_table, status_counts
from pipeline.data.preview import sample_columns, thumbnail
from pipeline.data.rows import ERROR, OK, STATUSES
from pipeline.errors import ConfigError, counted, describe, one_line
from pipeline.imaging.codec import MAX_PIXELS, VIDEO_EXTENSIONS, encode
from pipeline.storage.listing import list_files
from pipeline.storage.uri import is_dir, join, read_bytes, write_bytes

log = logging.getLogger(__name__)

COLUMNS = ("run_id", "input_uri", "style", "output_uri", "status", "error")


@dataclass
class Report:
    output: str
    runs: list[dict[str, Any]]
    latest: pa.Table  # one row per (input_uri, style): its latest status
    counts: dict[str, int] = field(default_factory=dict)
    reasons: list[tuple[str, int]] = field(default_factory=list)
    sources: dict[str, list[str]] = field(default_factory=dict)  # style id -> its style images
    unfinished: dict[str, dict[str, int]] = field(default_factory=dict)  # run id with no summary -> its rows' counts


def read_report(output: str, top: int = 10) -> Report:
    """Everything `adain report` shows of the runs under `output`."""
    runs_dir, manifest_dir = join(output, "_runs"), join(output, "_manifest")
    if not is_dir(manifest_dir) and not is_dir(runs_dir):
        raise ConfigError(f"{output}: no runs here (no _runs/ or _manifest/); give the --output of a job")
    listed = list_files(runs_dir, (".json",)) if is_dir(runs_dir) else []
    runs = [_summary(uri) for uri, _ in listed]
    runs.sort(key=lambda run: (summary_field(run, "started_at", str) or "", summary_field(run, "run_id", str) or ""))
    rows = _manifest(manifest_dir)
    # A summary is written as a run ends: ids in the manifest that none names (nor a summary's file) did not finish.
    summarized = {summary_field(run, "run_id", str) for run in runs} | {rel.removesuffix(".json") for _, rel in listed}
    named = pa.array(sorted(summarized - {None}), pa.string())
    unnamed = rows.filter(pc.invert(pc.is_in(rows.column("run_id"), value_set=named)))
    unfinished: dict[str, dict[str, int]] = {}
    by_status = unnamed.group_by(["run_id", "status"]).aggregate([([], "count_all")])  # one pass, however many runs
    for row in sorted(by_status.to_pylist(), key=lambda row: row["run_id"] or ""):
        if row["run_id"] is not None:
            unfinished.setdefault(row["run_id"], {})[row["status"]] = row["count_all"]
    latest = latest_rows(rows)
    counts = status_counts(latest.column("status"))
    errors = latest.filter(pc.equal(latest.column("status"), ERROR))
    reasons = Counter(reason(row["error"] or "", row["input_uri"]) for row in errors.to_pylist())
    sources = {k: v for run in runs for k, v in style_sources(run).items()}
    statuses = {s: counts.get(s, 0) for s in STATUSES}
    return Report(output, runs, latest, statuses, reasons.most_common(top), sources, unfinished)


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


def _manifest(directory: str) -> pa.Table:
    parts = [uri for uri, _ in list_files(directory, (".parquet",))] if is_dir(directory) else []
    tables = [table for table in map(_part, sorted(parts)) if table is not None]
    return pa.concat_tables(tables) if tables else MANIFEST.empty_table()


def _part(uri: str) -> pa.Table | None:
    """One manifest part's rows that name an input and a style, or None where it cannot be read
    (truncated, empty after a full disk, not a manifest part); what is left out, with a warning."""
    try:
        table = read_table(uri, columns=list(COLUMNS)).cast(MANIFEST)
    except pa.ArrowException as exc:
        log.warning("%s: unreadable manifest part, left out of the report (%s)", uri, describe(exc))
        return None
    named = pc.and_(pc.is_valid(table.column("input_uri")), pc.is_valid(table.column("style")))
    if unnamed := table.num_rows - pc.sum(named).as_py():
        log.warning("%s: %s naming no input or style, left out of the report", uri, counted(unnamed, "row"))
    return table.filter(named)


def latest_rows(rows: pa.Table) -> pa.Table:
    """The last row written of each (input_uri, style): parts are read in order, run ids sort by time."""
    if not rows.num_rows:
        return rows
    rows = rows.append_column("order", pa.array(range(rows.num_rows), pa.int64()))
    last = rows.group_by(["input_uri", "style"]).aggregate([("order", "max")])
    keep = pc.is_in(rows.column("order"), value_set=last.column("order_max"))
    return rows.filter(keep).drop_columns(["order"])


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


def failed(report: Report) -> list[dict[str, Any]]:
    """The outputs whose latest row is an error: input_uri, style, error."""
    errors = report.latest.filter(pc.equal(report.latest.column("status"), ERROR))
    return errors.select(["input_uri", "style", "error"]).to_pylist()


def write_html(report: Report, dest: str, samples: int = 24, max_pixels: int = MAX_PIXELS) -> None:
    """The report as a page: the runs, the counts, the reasons and a labelled contact sheet."""
    ok = report.latest.filter(pc.equal(report.latest.column("status"), OK)).slice(0, samples)
    rows = []
    for sample in zip(*(ok.column(c).to_pylist() for c in ("input_uri", "style", "output_uri")), strict=True):
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
