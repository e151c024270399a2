"""The style bank: every style image encoded once, kept as a Parquet table of statistics.

One row per style image: its id, source URI, size and modification time (to re-index only
new or changed images), content sha256, and the relu4_1 mean and std vectors. The table's
metadata names the encoder (sha256 of its weights) and the style size the statistics were
taken at; a bank never mixes encoders. Jobs given a bank use the statistics and never read
the style images again. The file's format and checks: pipeline/data/bank_table.py.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch

from pipeline.config import ModelConfig, Scale, Sizing
from pipeline.data.bank_table import (
    BANK_FORMAT,
    BANK_SCHEMA,
    FEATURES,
    check_encoder,
    check_not_empty,
    model_values,
    read_bank_table,
)
from pipeline.data.cluster import connect, model_stage
from pipeline.data.listing import is_bank, style_ids
from pipeline.data.manifest import conformed, table_bytes
from pipeline.errors import ConfigError, ImageError, StorageError, describe
from pipeline.imaging.codec import IMAGE_EXTENSIONS, max_file_bytes
from pipeline.imaging.tensors import to_tensor
from pipeline.model.checkpoint import load_encoder
from pipeline.model.functional import Stats
from pipeline.model.host import set_threads
from pipeline.model.loader import load_style_encoder
from pipeline.storage.listing import FileStat, stat_files
from pipeline.storage.uri import (
    absolute,
    check_writable,
    exists,
    is_dir,
    read_bytes,
    resolve,
    write_bytes,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StyleBank:
    """Statistics of many styles, ready for AdaIN: `mean`/`std` are (S, 512, 1, 1)."""

    ids: list[str]
    mean: torch.Tensor
    std: torch.Tensor
    encoder_sha256: str
    style_size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rows", {style_id: i for i, style_id in enumerate(self.ids)})

    def stats(self, style_id: str) -> Stats:
        i = self._rows[style_id]
        return self.mean[i : i + 1], self.std[i : i + 1]


def load_bank(uri: str, encoder_sha256: str | None = None) -> StyleBank:
    """Read a bank; with `encoder_sha256`, refuse one built with another encoder."""
    table = read_bank_table(uri)
    meta = table.schema.metadata
    check_encoder(uri, meta, encoder_sha256)
    check_not_empty(table, uri)

    def stacked(column: str) -> torch.Tensor:
        flat = model_values(table.column(column).combine_chunks())
        return torch.from_numpy(np.ascontiguousarray(flat)).view(-1, FEATURES, 1, 1)

    return StyleBank(
        table.column("style_id").to_pylist(),
        stacked("mean"),
        stacked("std"),
        meta[b"adain.encoder_sha256"].decode(),
        int(meta[b"adain.style_size"]),
    )


class StyleEncoder:
    """A model actor for indexing: style image bytes -> content hash and relu4_1 statistics."""

    def __init__(self, model: ModelConfig, sizing: Sizing, threads: int | None = None) -> None:
        set_threads(threads)
        self.model = load_style_encoder(model.encoder, model.device, model.precision)
        self.sizing = sizing

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for row in batch.to_pylist():
            try:
                data = read_bytes(row["source_uri"], max_file_bytes(self.sizing.max_pixels))
                image = self.sizing.style_image(data)
                mean, std = self.model.style_stats(to_tensor(image)[None])
                if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
                    raise ImageError("its statistics are not finite (NaN or inf)")
            except Exception as exc:  # whatever one style image does, it is that image's error
                rows.append({**row, "error": describe(exc)})
                continue
            rows.append(
                {
                    **row,
                    "content_sha256": hashlib.sha256(data).hexdigest(),
                    "mean": mean.flatten().cpu().numpy(),
                    "std": std.flatten().cpu().numpy(),
                }
            )
        return pa.Table.from_pylist(rows, schema=BANK_SCHEMA.append(pa.field("error", pa.string())))


def _listing(styles: str) -> list[FileStat]:
    if is_dir(styles):
        return stat_files(styles, IMAGE_EXTENSIONS)
    if exists(styles):
        uri = absolute(styles)
        filesystem, path = resolve(uri)
        info = filesystem.get_file_info(path)
        return [FileStat(uri, uri.rsplit("/", 1)[-1], info.size, info.mtime_ns)]
    raise StorageError(f"{styles}: no style images there; give a prefix, a directory or an image")


def reusable_rows(table: pa.Table, uri: str) -> dict[str, dict[str, Any]]:
    """The rows of a checked bank that indexing may keep, by source URI: none, with a warning, where
    the bank lacks the columns that tell an unchanged image (a bank written by hand needs only
    style_id, mean and std to be used) or holds them as other types."""
    missing = [name for name in BANK_SCHEMA.names if name not in table.column_names]
    if missing:
        return _nothing_to_reuse(uri, f"no {', '.join(missing)} column")
    try:
        rows = conformed(table, BANK_SCHEMA)
    except pa.ArrowException as exc:
        return _nothing_to_reuse(uri, describe(exc))
    return {row["source_uri"]: row for row in rows.to_pylist()}


def _nothing_to_reuse(uri: str, why: str) -> dict[str, dict[str, Any]]:
    log.warning("%s: every style image is encoded again, none of the bank's rows can be reused (%s)", uri, why)
    return {}


def index_styles(
    styles: str, output: str, model: ModelConfig, sizing: Sizing, scale: Scale, address: str | None = None
) -> dict[str, Any]:
    """Build or update the bank at `output` from the style images under `styles`.

    Only images that are new, or whose size or modification time changed, are encoded;
    rows of images that are gone are dropped. Returns counts for the user.
    """
    if not is_bank(output):
        raise ConfigError(f"--output {output}: a style bank is one Parquet file; end the name in .parquet")
    started = time.time()
    check_writable(posixpath.dirname(absolute(output)))
    encoder_sha = load_encoder(model.encoder).sha256
    listed = _listing(styles)
    ids = style_ids([stat.rel for stat in listed], [stat.uri for stat in listed])
    old = {}
    if exists(output):
        table = read_bank_table(output)
        meta = table.schema.metadata
        if meta[b"adain.encoder_sha256"].decode() != encoder_sha:
            raise ConfigError(
                f"{output}: this bank was built with another encoder; a bank never mixes encoders: "
                "index into a new file, or pass the bank's encoder"
            )
        if int(meta[b"adain.style_size"]) != sizing.style_size:
            raise ConfigError(f"{output}: this bank was built at --style-size {int(meta[b'adain.style_size'])}")
        old = reusable_rows(table, output)
    kept, todo = [], []
    for stat, style_id in zip(listed, ids, strict=True):
        previous = old.get(stat.uri)
        unchanged = previous and (previous["size"], previous["mtime_ns"]) == (stat.size, stat.mtime_ns)
        if unchanged:
            kept.append({**previous, "style_id": style_id})
        else:
            todo.append({"style_id": style_id, "source_uri": stat.uri, "size": stat.size, "mtime_ns": stat.mtime_ns})
    errors: list[dict[str, str]] = []
    encoded: list[dict[str, Any]] = []
    if todo:
        connect(address)
        table = pa.Table.from_pylist(todo, schema=BANK_SCHEMA)
        blocks = [table.slice(i, scale.batch_size) for i in range(0, table.num_rows, scale.batch_size)]
        actor_args, threads = model_stage(model, scale, len(blocks))
        ds = ray.data.from_arrow(blocks).map_batches(
            StyleEncoder,
            fn_constructor_kwargs={"model": model, "sizing": sizing, "threads": threads},
            batch_format="pyarrow",
            batch_size=scale.batch_size,
            **actor_args,
        )
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                error = row.pop("error")
                if error:
                    errors.append({"uri": row["source_uri"], "error": error})
                else:
                    encoded.append(row)
    rows = sorted(kept + encoded, key=lambda row: row["style_id"])
    table = pa.Table.from_pylist(rows, schema=BANK_SCHEMA).replace_schema_metadata(
        {
            b"adain.format": BANK_FORMAT,
            b"adain.encoder_sha256": encoder_sha.encode(),
            b"adain.style_size": str(sizing.style_size).encode(),
        }
    )
    write_bytes(output, table_bytes(table))
    return {
        "bank": output,
        "styles": len(rows),
        "encoded": len(encoded),
        "unchanged": len(kept),
        "removed": len(set(old) - {stat.uri for stat in listed}),
        "errors": errors,
        "encoder_sha256": encoder_sha,
        "wall_s": round(time.time() - started, 3),
    }
