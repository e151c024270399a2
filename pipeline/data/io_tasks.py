"""The CPU stages around the model actors: read + decode before them, encode + write after.

    read + decode (these tasks) -> Stylizer / Augmenter (model actors) -> encode + write (these tasks)

Batches are pyarrow tables. Pixels travel between stages as raw uint8 HxWx3 bytes with
their width and height: plain Arrow binary, nothing pickled. When JPEGs are decoded and
encoded on the model's device (`jpeg` rows; `--jpeg-codec`), these tasks only read and
write the files, and check a JPEG's header to know its size after resizing. A failure of one input
becomes an `error` row and never stops the job. Nothing here imports torch, so the many
short-lived workers that run these tasks start in a fraction of a second (torch alone
costs about two CPU-seconds per worker process, taken from the model on small machines).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.config import OutputSpec, Sizing
from pipeline.errors import AdainError
from pipeline.imaging.codec import encode, output_size, plain_jpeg_size, prepare
from pipeline.storage.keys import output_key, safe_relpath, slug
from pipeline.storage.uri import exists, join, read_bytes, write_bytes

DECODED_SCHEMA = pa.schema(
    [
        ("input_uri", pa.string()),
        ("rel_path", pa.string()),
        ("key", pa.string()),
        ("todo", pa.list_(pa.string())),  # style ids still to produce
        ("skipped", pa.list_(pa.string())),  # style ids whose output already exists
        ("pixels", pa.binary()),
        ("jpeg", pa.bool_()),  # pixels holds the JPEG file, for the model actor to decode
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("error", pa.string()),
        ("decode_ms", pa.float32()),
    ]
)


def elapsed_ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0


def prepare_content(data: bytes, sizing: Sizing) -> Image.Image:
    """A content image's bytes -> the RGB image the model takes, sized per `sizing`."""
    return prepare(data, sizing.content_size, sizing.crop, sizing.max_pixels, sizing.max_side)


def decode_one(uri: str, sizing: Sizing, jpeg_to_model: bool = False) -> dict[str, Any]:
    """Read, decode and resize one content image: pixels, width and height, or the error.

    With `jpeg_to_model`, a plain JPEG (`plain_jpeg_size`) is left encoded for the model
    actor to decode on its device; its width and height are those after resizing."""
    start = time.perf_counter()
    row: dict[str, Any] = {}
    try:
        data = read_bytes(uri)
        size = plain_jpeg_size(data, sizing.max_pixels) if jpeg_to_model else None
        if size is not None:
            width, height = output_size(*size, sizing.content_size, sizing.crop, sizing.max_side)
            row.update(pixels=data, jpeg=True, width=width, height=height)
        else:
            img = prepare_content(data, sizing)
            row.update(pixels=img.tobytes(), width=img.width, height=img.height)
    except AdainError as exc:
        row["error"] = str(exc)
    row["decode_ms"] = elapsed_ms(start)
    return row


def decode_inputs(
    batch: pa.Table, *, style_ids: list[str], output: OutputSpec, sizing: Sizing, jpeg_to_model: bool = False
) -> pa.Table:
    """Read and decode each input whose outputs are not all there yet."""
    rows = []
    for row in batch.select(["input_uri", "rel_path", "key"]).to_pylist():
        row.update(todo=list(style_ids), skipped=[])
        if not output.overwrite:
            done = {s for s in style_ids if exists(output_key(output.uri, s, row["key"], output.format))}
            row["todo"] = [s for s in style_ids if s not in done]
            row["skipped"] = [s for s in style_ids if s in done]
        if row["todo"]:
            row.update(decode_one(row["input_uri"], sizing, jpeg_to_model))
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


def output_file(row: dict[str, Any], pixels: bytes, jpeg: bool | None, output: OutputSpec) -> bytes:
    """The encoded output: as the model actor encoded it (`jpeg`), or encoded here."""
    if jpeg:
        return pixels
    return encode(Image.frombytes("RGB", (row["width"], row["height"]), pixels), output.format, output.quality)


def write_outputs(batch: pa.Table, *, output: OutputSpec, naming: Callable[..., str] = output_key) -> pa.Table:
    """Encode and write each pending output at its deterministic key; the rows become manifest rows."""
    schema = pa.schema([f for f in batch.schema if f.name not in ("pixels", "key", "jpeg")])
    rows = batch.to_pylist()
    for row in rows:
        pixels, key, jpeg = row.pop("pixels"), row.pop("key"), row.pop("jpeg")
        if row["status"] != "pending":
            continue
        start = time.perf_counter()
        uri = naming(output.uri, row["style"], key, output.format)
        try:
            write_bytes(uri, output_file(row, pixels, jpeg, output))
            row.update(status="ok", output_uri=uri)
        except AdainError as exc:
            row.update(status="error", error=f"writing {uri}: {exc}")
        row["write_ms"] = elapsed_ms(start)
    return pa.Table.from_pylist(rows, schema=schema)


# ---------------------------------------------------------------------------------------------
# augmentation: the draw of styles and alphas per input, and WebDataset shards

AUGMENT_DECODED_SCHEMA = pa.schema(
    [
        ("input_uri", pa.string()),
        ("rel_path", pa.string()),
        ("key", pa.string()),
        ("styles", pa.list_(pa.string())),
        ("alphas", pa.list_(pa.float32())),
        ("pixels", pa.binary()),
        ("jpeg", pa.bool_()),  # pixels holds the JPEG file, for the model actor to decode
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("error", pa.string()),
        ("decode_ms", pa.float32()),
    ]
)


def draw(
    seed: int, rel_path: str, n_styles: int, per_image: int, alpha_range: tuple[float, float]
) -> tuple[list[int], list[float]]:
    """The styles (indices into the sorted style ids) and alphas of one input: a pure function
    of (seed, input path), the same on every machine and every run."""
    path_hash = int.from_bytes(hashlib.sha256(rel_path.encode()).digest()[:8], "big")
    rng = np.random.default_rng([seed, path_hash])
    picks = rng.choice(n_styles, size=per_image, replace=False)
    low, high = alpha_range
    alphas = rng.uniform(low, high, size=per_image) if high > low else np.full(per_image, low)
    return picks.tolist(), alphas.astype(np.float32).tolist()


def decode_and_draw(
    batch: pa.Table,
    *,
    style_ids: list[str],
    per_image: int,
    alpha_range: tuple[float, float],
    seed: int,
    sizing: Sizing,
    jpeg_to_model: bool = False,
) -> pa.Table:
    rows = []
    for row in batch.select(["input_uri", "rel_path", "key"]).to_pylist():
        picks, alphas = draw(seed, row["rel_path"], len(style_ids), per_image, alpha_range)
        decoded = decode_one(row["input_uri"], sizing, jpeg_to_model)
        row.update(styles=[style_ids[i] for i in picks], alphas=alphas, **decoded)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=AUGMENT_DECODED_SCHEMA)


def sample_name(key: str, style_id: str) -> str:
    """A WebDataset sample key: the dots of a file name would split the sample."""
    return f"{safe_relpath(key)}__{slug(style_id)}".replace(".", "_")


def write_shard(batch: pa.Table, *, output: OutputSpec, run_id: str) -> pa.Table:
    """Write the batch's pending outputs as one tar shard: per sample an image and a JSON
    sidecar (style, alpha, source), as WebDataset loaders read them."""
    schema = pa.schema([f for f in batch.schema if f.name not in ("pixels", "key", "jpeg")])
    rows = batch.to_pylist()
    uri = join(output.uri, "shards", f"{run_id}-{uuid.uuid4().hex[:12]}.tar")
    buffer = io.BytesIO()
    written = []
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for row in rows:
            pixels, key, jpeg = row.pop("pixels"), row.pop("key"), row.pop("jpeg")
            if row["status"] != "pending":
                continue
            start = time.perf_counter()
            name = sample_name(key, row["style"])
            image = output_file(row, pixels, jpeg, output)
            sidecar = {k: row[k] for k in ("style", "alpha", "input_uri", "rel_path")}
            for member, data in ((f"{name}.{output.format}", image), (f"{name}.json", json.dumps(sidecar).encode())):
                info = tarfile.TarInfo(member)
                info.size, info.mtime = len(data), int(time.time())
                tar.addfile(info, io.BytesIO(data))
            row.update(shard_member=name, write_ms=elapsed_ms(start))
            written.append(row)
    if written:
        try:
            write_bytes(uri, buffer.getvalue())
            for row in written:
                row.update(status="ok", output_uri=uri)
        except AdainError as exc:
            for row in written:
                row.update(status="error", error=f"writing {uri}: {exc}")
    return pa.Table.from_pylist(rows, schema=schema)
