"""A style bank's Parquet file: its format and the checks a job's bank must pass, without torch or Ray
(the preflight reads a bank with them before either loads; pipeline/data/bank.py builds and loads banks).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.data.manifest import read_table
from pipeline.errors import ConfigError, describe
from pipeline.storage.keys import folded, slug
from pipeline.storage.uri import open_input

BANK_FORMAT = b"adain-ray.style-bank/1"
FEATURES = 512  # relu4_1 channels
BANK_SCHEMA = pa.schema(
    [
        ("style_id", pa.string()),
        ("source_uri", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("content_sha256", pa.string()),
        ("mean", pa.list_(pa.float32(), FEATURES)),
        ("std", pa.list_(pa.float32(), FEATURES)),
    ]
)


def _unusable(uri: str, what: str) -> ConfigError:
    return ConfigError(f"{uri}: not a usable style bank: {what}; rebuild it with `adain styles index`")


def meeting_ids(ids: list[str]) -> tuple[str, str] | None:
    """Two distinct style ids whose outputs would share a name, if any: a style's outputs are
    named by `slug(style_id)` (`keys.output_key`'s folder, `keys.augmented_key`'s suffix), and
    names are compared without case (`folded`), as a filesystem that ignores case would."""
    first: dict[str, str] = {}
    for style_id, name in zip(ids, folded([slug(style_id) for style_id in ids]), strict=True):
        other = first.setdefault(name, style_id)
        if other != style_id:
            return other, style_id
    return None


def read_bank_table(uri: str) -> pa.Table:
    """A bank's table, checked: its metadata, its columns, unique ids whose outputs are named
    apart, 512 means finite and 512 stds finite and positive a row, as float32."""
    try:
        table = read_table(uri)
    except (pa.ArrowException, OSError) as exc:
        raise _not_parquet(uri, exc) from None
    _checked_metadata(table.schema.metadata, uri)
    _check_rows(table, uri)
    return table


def check_bank(uri: str, encoder_sha256: Callable[[], str]) -> None:
    """`load_bank`'s checks, in its order, reading only the footer and the columns a job uses; the
    encoder's sha256 is asked for (the preflight loads torch for it) only of a bank that passes the rest."""
    try:
        with open_input(uri) as source:
            parquet = pq.ParquetFile(source)
            meta = _checked_metadata(parquet.schema_arrow.metadata, uri)
            table = parquet.read([c for c in ("style_id", "mean", "std") if c in parquet.schema_arrow.names])
    except (pa.ArrowException, OSError) as exc:
        raise _not_parquet(uri, exc) from None
    _check_rows(table, uri)
    check_encoder(uri, meta, encoder_sha256())
    check_not_empty(table, uri)


def _not_parquet(uri: str, exc: BaseException) -> ConfigError:
    return ConfigError(f"{uri}: not a readable Parquet file ({describe(exc)})")


def _checked_metadata(meta: dict[bytes, bytes] | None, uri: str) -> dict[bytes, bytes]:
    meta = meta or {}
    if meta.get(b"adain.format") != BANK_FORMAT:
        raise ConfigError(f"{uri}: not an adain-ray style bank (build one with `adain styles index`)")
    if not meta.get(b"adain.encoder_sha256"):
        raise _unusable(uri, "its metadata names no encoder")
    try:
        int(meta.get(b"adain.style_size", b""))
    except ValueError:
        raise _unusable(uri, "its metadata gives no style size") from None
    return meta


def _check_rows(table: pa.Table, uri: str) -> None:
    missing = [c for c in ("style_id", "mean", "std") if c not in table.column_names]
    if missing:
        raise _unusable(uri, f"no {', '.join(missing)} column")
    ids = table.column("style_id")
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise _unusable(uri, "its style ids are not text")
    if ids.null_count or pc.count_distinct(ids).as_py() != table.num_rows:
        raise _unusable(uri, "its style ids are not unique")
    if meeting := meeting_ids(ids.to_pylist()):
        first, second = meeting
        raise _unusable(
            uri,
            f"style ids {first!r} and {second!r} would share an output folder ({slug(first)!r}, compared without case)",
        )
    for name in ("mean", "std"):
        column = table.column(name).combine_chunks()
        if not pa.types.is_list(column.type) and not pa.types.is_fixed_size_list(column.type):
            raise _unusable(uri, f"{name} is not a list of floats")
        if column.null_count or pc.any(pc.not_equal(pc.list_value_length(column), FEATURES)).as_py():
            raise _unusable(uri, f"every {name} must have {FEATURES} values")
        values = model_values(column)  # checked as the model takes them: 1e39 is inf there, 1e-50 is 0
        if not np.isfinite(values).all():
            raise _unusable(uri, f"{name} holds NaN or inf (or values past float32's range)")
        if name == "std" and (values <= 0).any():
            raise _unusable(uri, "std holds values that are not positive (or too small for float32)")


def check_encoder(uri: str, meta: dict[bytes, bytes], encoder_sha256: str | None) -> None:
    bank_encoder = meta[b"adain.encoder_sha256"].decode()
    if encoder_sha256 is not None and bank_encoder != encoder_sha256:
        raise ConfigError(
            f"{uri}: this style bank was built with encoder {bank_encoder[:12]}, but encoder "
            f"{encoder_sha256[:12]} is loaded; rebuild the bank with this --encoder or pass the bank's encoder"
        )


def check_not_empty(table: pa.Table, uri: str) -> None:
    if table.num_rows == 0:
        raise ConfigError(f"{uri}: the style bank is empty")


def model_values(column: pa.Array) -> np.ndarray:
    """A list column's values as float32, what the model computes in (past its range: inf, unwarned)."""
    with np.errstate(over="ignore"):
        return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
