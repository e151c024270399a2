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

# A video's own columns, null for images.
_VIDEO = [
    ("frames", pa.int32()),
    ("fps", pa.float64()),
    ("duration", pa.float64()),  # seconds
    ("segments", pa.int32()),
    ("flicker", pa.float32()),  # frame-to-frame change of the output over the input's, within segments
]

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
        *_VIDEO,
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

# Videos (data/video_job.py): the listing -> SEGMENT rows, one per (video, segment) (or one for a video with
# nothing to make, or unreadable: its done or error items) -> PART rows, one per (segment, style), an encoded
# part uploaded -> joined on the driver's side into one manifest row per (video, style).
SEGMENT_SCHEMA = pa.schema(
    [
        *PLANNED_SCHEMA,
        ("parts", pa.list_(pa.string())),  # per item, where the segment's part goes
        ("parts_done", pa.list_(pa.bool_())),  # uploaded by an earlier run: reused if made from `source`
        ("source", pa.string()),  # the video's version (`uri.version`) when probed
        ("rate", pa.string()),  # the video's fps and time base as fractions ("30000/1001")
        ("time_base", pa.string()),
        ("rotation", pa.int32()),
        ("frames", pa.int32()),
        ("duration", pa.float64()),
        ("segments", pa.int32()),
        ("segment", pa.int32()),  # null: the row is the video's, not a segment's
        ("start", pa.int32()),  # frames [start, end), decoded from the keyframe at `seek`
        ("end", pa.int32()),
        ("seek", pa.int64()),
        ("first_pts", pa.int64()),
        ("end_pts", pa.int64()),
        ("pts", pa.list_(pa.int64())),
        ("lead_start", pa.int32()),  # the lead-in, frames [lead_start, start): null for none
        ("lead_seek", pa.int64()),
        ("lead_first_pts", pa.int64()),
        ("error", pa.string()),
        ("decode_ms", pa.float32()),  # probing
    ]
)
PART_SCHEMA = pa.schema(
    [
        *_INPUT,
        ("style", pa.string()),
        ("target", pa.string()),
        ("part", pa.string()),
        ("status", pa.string()),  # ok (the part is there), error, or skipped (the video's output is)
        ("error", pa.string()),
        ("segment", pa.int32()),
        ("segment_frames", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("flicker_in", pa.float64()),  # Flicker's sums over the segment
        ("flicker_out", pa.float64()),
        ("reused", pa.bool_()),  # made by an earlier run
        ("encoder_sha256", pa.string()),
        ("decoder_sha256", pa.string()),
        ("decode_ms", pa.float32()),
        ("model_ms", pa.float32()),
        *[f for f in _VIDEO if f[0] != "flicker"],
    ]
)


def elapsed_ms(since: float) -> float:
    """Milliseconds since `since` (a `time.perf_counter()`), for the rows' *_ms timings."""
    return (time.perf_counter() - since) * 1000.0
