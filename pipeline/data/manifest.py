"""The record of a run: a Parquet manifest with one row per (input, style), and a summary.

Layout under the output prefix:
    _manifest/RUN_ID-00000.parquet, ...   rows of every run, readable as one dataset
    _runs/RUN_ID.json                      counts and timings of one run

Parts are written from the driver as rows stream in, every `flush_rows` rows or
`flush_seconds`, each part atomically, so a driver that dies loses a few seconds of rows at
most; a run id used again adds parts after the ones it has.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import ModelConfig, OutputSpec, Sizing
from pipeline.data.rows import ERROR, ROW_SCHEMA, RUN_SCHEMA, STATUSES
from pipeline.storage.listing import list_files
from pipeline.storage.uri import is_dir, join, read_bytes, write_bytes

FAILURES_NAMED = 5  # error rows a run summary names; the manifest has them all


def run_values(model: ModelConfig, sizing: Sizing, output: OutputSpec, **job: Any) -> dict[str, Any]:
    """The manifest's per-run columns: the settings that shaped every output, and the job's own."""
    return {
        "precision": model.precision,
        "content_size": sizing.content_size,
        "max_side": sizing.max_side,
        "crop": sizing.crop,
        "format": output.format,
        "quality": output.quality,
        **job,
    }


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{time.time_ns() % 16**6:06x}"


def table_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def read_table(uri: str, columns: list[str] | None = None) -> pa.Table:
    """The Parquet file at `uri`, local or in an object store, read whole: `table_bytes`' counterpart."""
    return pq.read_table(io.BytesIO(read_bytes(uri)), columns=columns)


def conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table`'s columns of `schema`, in its order and types; KeyError or an ArrowException where they do not fit."""
    return table.select(schema.names).cast(schema)


class ManifestWriter:
    """Collects manifest rows in the driver and writes them out in Parquet parts."""

    def __init__(
        self,
        output: str,
        run_id: str,
        run_values: dict[str, Any],
        flush_rows: int = 50_000,
        flush_seconds: float = 5.0,
        samples: int = 8,
        row_schema: pa.Schema = ROW_SCHEMA,
        run_schema: pa.Schema = RUN_SCHEMA,
    ) -> None:
        self.row_schema, self.run_schema = row_schema, run_schema
        self.schema = pa.schema([*run_schema, *row_schema, ("recorded_at", pa.timestamp("ms", tz="UTC"))])
        self.dir = join(output, "_manifest")
        self.run_id = run_id
        self.run_values = {**run_values, "run_id": run_id}
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.counts: Counter[str] = Counter()
        self.samples: list[tuple[str, str, str]] = []  # (input_uri, style, output_uri) of a few outputs
        self.failures: list[dict[str, str]] = []  # the first few error rows: input_uri, style, error
        self._want_samples = samples
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._parts = _next_part(self.dir, run_id)  # a re-used run id adds parts, never overwrites them
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._timer: threading.Thread | None = None
        self.first_rows_at: float | None = None  # time.time() when the first rows came back

    def add(self, rows: pa.Table) -> None:
        if self.first_rows_at is None:
            self.first_rows_at = time.time()
        rows = conformed(rows, self.row_schema)
        self.counts.update(status_counts(rows.column("status")))
        if len(self.samples) < self._want_samples:  # outputs of this run or kept from an earlier one
            made = rows.filter(pc.is_valid(rows.column("output_uri"))).slice(0, self._want_samples)
            columns = (made.column(name).to_pylist() for name in ("input_uri", "style", "output_uri"))
            self.samples += list(zip(*columns, strict=True))
            del self.samples[self._want_samples :]
        if len(self.failures) < FAILURES_NAMED:
            failed = rows.filter(pc.equal(rows.column("status"), ERROR)).slice(0, FAILURES_NAMED)
            self.failures += failed.select(["input_uri", "style", "error"]).to_pylist()
            del self.failures[FAILURES_NAMED:]
        with self._lock:
            self._pending.append(rows)
            self._pending_rows += rows.num_rows
            full = self._pending_rows >= self.flush_rows
        if self._timer is None:  # rows wait at most flush_seconds, even while no more arrive
            self._timer = threading.Thread(target=self._flush_when_due, name="adain-manifest", daemon=True)
            self._timer.start()
        if full:
            self.flush()

    def _flush_when_due(self) -> None:
        while not self._closed.wait(min(1.0, self.flush_seconds / 2)):
            if time.monotonic() - self._last_flush >= self.flush_seconds:
                self.flush()

    def close(self) -> None:
        """Write what is pending and stop the background flushes."""
        self._closed.set()
        if self._timer is not None:
            self._timer.join()
        self.flush()

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending_rows:
            return
        rows = pa.concat_tables(self._pending)
        n = rows.num_rows
        columns = {field.name: pa.array([self.run_values[field.name]] * n, field.type) for field in self.run_schema}
        columns.update({name: rows.column(name) for name in self.row_schema.names})
        columns["recorded_at"] = pa.array([datetime.now(timezone.utc)] * n, pa.timestamp("ms", tz="UTC"))
        table = pa.table(columns, schema=self.schema)
        write_bytes(join(self.dir, f"{self.run_id}-{self._parts:05d}.parquet"), table_bytes(table))
        self._parts += 1
        self._pending, self._pending_rows = [], 0


def _next_part(directory: str, run_id: str) -> int:
    """The number after the highest manifest part of `run_id` already written (0 for none)."""
    if not is_dir(directory):
        return 0
    pattern = re.compile(re.escape(run_id) + r"-(\d{5,})\.parquet")
    numbers = [int(m.group(1)) for _, rel in list_files(directory, (".parquet",)) if (m := pattern.fullmatch(rel))]
    return max(numbers, default=-1) + 1


def status_counts(column: pa.ChunkedArray) -> dict[str, int]:
    """How many rows have each status."""
    counts = pc.value_counts(column)
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True))


def finish_run(manifest: ManifestWriter, prefix: str, started: float, **fields: Any) -> dict[str, Any]:
    """The run summary (counts, wall time, rate, where the manifest is) with the job's own
    `fields`, written to PREFIX/_runs/RUN_ID.json."""
    wall = time.time() - started
    counts = {status: manifest.counts.get(status, 0) for status in STATUSES}
    summary = {
        "run_id": manifest.run_id,
        **fields,
        **counts,
        "total": sum(counts.values()),
        "wall_s": round(wall, 3),
        # How long the pipeline took to fill: listing, start-up, and the first batches through.
        "first_rows_s": None if manifest.first_rows_at is None else round(manifest.first_rows_at - started, 3),
        "images_per_s": round(counts["ok"] / wall, 3) if wall > 0 else None,
        "manifest": join(prefix, "_manifest"),
        "failures": manifest.failures,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
    }
    uri = _summary_uri(join(prefix, "_runs"), manifest.run_id)
    write_bytes(uri, json.dumps(summary, indent=2, sort_keys=True).encode())
    return {**summary, "summary": uri}


def _summary_uri(runs: str, run_id: str) -> str:
    """RUNS/RUN_ID.json, or RUN_ID.1.json, .2, ... where a run of that id left its summary: a
    run id used again keeps every run's summary, as it keeps their manifest parts."""
    taken = {rel for _, rel in list_files(runs, (".json",))} if is_dir(runs) else set()
    name = f"{run_id}.json"
    for n in itertools.count(1):
        if name not in taken:
            return join(runs, name)
        name = f"{run_id}.{n}.json"
    raise AssertionError("unreachable")
