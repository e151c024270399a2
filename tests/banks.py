"""Style banks written as `adain styles index` writes them, for tests that need one (or a damaged one)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.bank_table import BANK_SCHEMA


def write_bank(path: Path, rows: list[dict], schema: pa.Schema = BANK_SCHEMA, meta: dict | None = None) -> str:
    meta = meta if meta is not None else {b"adain.format": b"adain-ray.style-bank/1", b"adain.encoder_sha256": b"ab"}
    meta = {b"adain.style_size": b"32", **meta}
    pq.write_table(pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata(meta), path)
    return str(path)


def bank_row(style_id: str, mean: list[float] | None = None, std: list[float] | None = None) -> dict:
    row = {"style_id": style_id, "source_uri": f"/s/{style_id}.png", "size": 1, "mtime_ns": 1, "content_sha256": "x"}
    return row | {"mean": mean if mean is not None else [0.1] * 512, "std": std if std is not None else [0.5] * 512}
