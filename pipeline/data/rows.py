"""The rows that flow through the pipeline, stage by stage, and the status vocabulary.

    listing (input_uri, rel_path, key, size, mtime_ns)
      -> PLANNED: one row per input, with its plan items (style, alpha, target, done)
      -> DECODED: PLANNED plus the pixels (or the error) of inputs with work left
      -> STYLIZED: one row per plan item, `pending` with its pixels, or `skipped` / `error`
      -> manifest rows (ROW_SCHEMA, plus the job's own columns): `ok`, `error` or `skipped`

A plan item is an input, a style, an alpha and an output: the writer's `target` for it (a URI
for files, a sample name for shards). Pixels are raw uint8 HxWx3 bytes with their width and
height, or an encoded file where a stage says so: plain Arrow binary, nothing pickled.
"""

from __future__ import annotations

import time

import pyarrow as pa

OK, ERROR, SKIPPED = "ok", "error", "skipped"
STATUSES = (OK, ERROR, SKIPPED)  # what a manifest row says of its output
PENDING = "pending"  # stylized, not yet written: never reaches the manifest

_INPUT = [("input_uri", pa.string()), ("rel_path", pa.string())]
_PLAN_ITEMS = [
    ("styles", pa.list_(pa.string())),
    ("alphas", pa.list_(pa.float32())),
    ("targets", pa.list_(pa.string())),  # where each output goes, as the writer names it
    ("done", pa.list_(pa.bool_())),  # written already: kept as it is, reported `skipped`
]
PLANNED_SCHEMA = pa.schema([*_INPUT, ("mtime_ns", pa.int64()), *_PLAN_ITEMS])
DECODED_SCHEMA = pa.schema(
    [
        *PLANNED_SCHEMA,
        ("pixels", pa.binary()),
        ("jpeg", pa.bool_()),  # pixels holds the JPEG file, for the model actor to decode
        ("width", pa.int32()),  # the size the model works at
        ("height", pa.int32()),
        ("error", pa.string()),
        ("decode_ms", pa.float32()),
    ]
)

# Columns of a manifest row, one per (input, style).
ROW_SCHEMA = pa.schema(
    [
        *_INPUT,
        ("style", pa.string()),
        ("output_uri", pa.string()),  # where the output is: null for errors
        ("status", pa.string()),  # ok | error | skipped
        ("error", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("encoder_sha256", pa.string()),
        ("decoder_sha256", pa.string()),
        ("decode_ms", pa.float32()),
        ("model_ms", pa.float32()),
        ("write_ms", pa.float32()),
    ]
)
AUGMENT_ROW_SCHEMA = pa.schema([*ROW_SCHEMA, ("alpha", pa.float32()), ("shard_member", pa.string())])
# The model actors' rows: every manifest column, and the output on its way to the writer.
STYLIZED_SCHEMA = pa.schema(
    [
        *AUGMENT_ROW_SCHEMA,
        ("target", pa.string()),
        ("pixels", pa.binary()),  # raw RGB, or the encoded file where the model encoded it
    ]
)
WRITTEN_SCHEMA = pa.schema([f for f in STYLIZED_SCHEMA if f.name not in ("target", "pixels")])

# Columns that are the same for a whole run, added by the driver.
RUN_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("alpha", pa.float32()),
        ("style_weights", pa.string()),
        ("preserve_color", pa.string()),
        ("precision", pa.string()),
        ("content_size", pa.int32()),
        ("max_side", pa.int32()),
        ("crop", pa.bool_()),
        ("format", pa.string()),
        ("quality", pa.int32()),
    ]
)
AUGMENT_RUN_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("per_image", pa.int32()),
        ("seed", pa.int64()),
        ("alpha_range", pa.string()),
        ("precision", pa.string()),
        ("content_size", pa.int32()),
        ("format", pa.string()),
    ]
)


def elapsed_ms(since: float) -> float:
    """Milliseconds since `since` (a `time.perf_counter()`), for the rows' *_ms timings."""
    return (time.perf_counter() - since) * 1000.0
