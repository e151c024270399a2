"""The stages of the stylization pipeline, each a callable for `Dataset.map_batches`.

    read + decode (CPU tasks) -> Stylizer (model actors) -> encode + write (CPU tasks)

Batches are pyarrow tables. Pixels travel between stages as raw uint8 HxWx3 bytes with
their width and height: plain Arrow binary, nothing pickled. A failure of one input
becomes an `error` row and never stops the job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from pipeline.config import Controls, ModelConfig, OutputSpec, Sizing
from pipeline.data.bank import load_bank, style_tensor
from pipeline.data.cluster import set_threads
from pipeline.data.manifest import ROW_SCHEMA
from pipeline.errors import AdainError
from pipeline.imaging.codec import encode, prepare
from pipeline.model.functional import Stats, blend_stats, cat_stats, coral
from pipeline.model.loader import load_model
from pipeline.storage.keys import output_key
from pipeline.storage.uri import exists, read_bytes, write_bytes


@dataclass(frozen=True)
class Variant:
    """One output per input: a single style image, or several blended with weights."""

    style_id: str
    uris: tuple[str, ...]
    weights: tuple[float, ...] | None = None


DECODED_SCHEMA = pa.schema(
    [
        ("input_uri", pa.string()),
        ("rel_path", pa.string()),
        ("key", pa.string()),
        ("todo", pa.list_(pa.string())),  # style ids still to produce
        ("skipped", pa.list_(pa.string())),  # style ids whose output already exists
        ("pixels", pa.binary()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("error", pa.string()),
        ("decode_ms", pa.float32()),
    ]
)
STYLIZED_SCHEMA = pa.schema([*ROW_SCHEMA, ("key", pa.string()), ("pixels", pa.binary())])


def elapsed_ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0


def decode_one(uri: str, sizing: Sizing) -> dict[str, Any]:
    """Read, decode and resize one content image: pixels, width and height, or the error."""
    start = time.perf_counter()
    row: dict[str, Any] = {}
    try:
        img = prepare(read_bytes(uri), sizing.content_size, sizing.crop, sizing.max_pixels, sizing.max_side)
        row.update(pixels=img.tobytes(), width=img.width, height=img.height)
    except AdainError as exc:
        row["error"] = str(exc)
    row["decode_ms"] = elapsed_ms(start)
    return row


def decode_inputs(batch: pa.Table, *, style_ids: list[str], output: OutputSpec, sizing: Sizing) -> pa.Table:
    """Read and decode each input whose outputs are not all there yet."""
    rows = []
    for row in batch.select(["input_uri", "rel_path", "key"]).to_pylist():
        row.update(todo=list(style_ids), skipped=[])
        if not output.overwrite:
            done = {s for s in style_ids if exists(output_key(output.uri, s, row["key"], output.format))}
            row["todo"] = [s for s in style_ids if s not in done]
            row["skipped"] = [s for s in style_ids if s in done]
        if row["todo"]:
            row.update(decode_one(row["input_uri"], sizing))
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


def to_batch(rows: list[dict[str, Any]], height: int, width: int) -> torch.Tensor:
    """Decoded rows of one shape -> (N, 3, H, W) float in [0, 1]."""
    arrays = [np.frombuffer(row["pixels"], np.uint8).reshape(height, width, 3) for row in rows]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255.0)


def shape_groups(rows: list[dict[str, Any]], batch_size: int) -> Iterator[tuple[int, int, list[int]]]:
    """(height, width, row indices) chunks of same-shape decoded rows: images are never padded,
    since padding would change the AdaIN statistics."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, row in enumerate(rows):
        if row["pixels"] is not None:
            groups.setdefault((row["height"], row["width"]), []).append(i)
    for (height, width), members in groups.items():
        for start in range(0, len(members), batch_size):
            yield height, width, members[start : start + batch_size]


class Stylizer:
    """A model actor: loads the networks and encodes the styles once, then stylizes batches.

    Images in a batch are grouped by shape and never padded: padding would change the
    AdaIN statistics. One encoding of each content image serves all of its styles.
    """

    def __init__(
        self,
        model: ModelConfig,
        controls: Controls,
        sizing: Sizing,
        variants: list[Variant],
        batch_size: int,
        bank: str | None = None,
        threads: int | None = None,
    ) -> None:
        set_threads(threads)
        self.model = load_model(model)
        self.controls, self.variants, self.batch_size = controls, {v.style_id: v for v in variants}, batch_size
        uris = sorted({u for v in variants for u in v.uris})
        self.style_images = {u: style_tensor(u, sizing) for u in uris}
        # Style statistics, once per actor: from the bank, or from the images (coral needs
        # them per content image instead).
        if bank is not None:
            styles = load_bank(bank, self.model.identity["encoder_sha256"])
            self.stats = {s: styles.stats(s) for s in self.variants}
        elif controls.preserve_color == "coral":
            self.stats = {}
        else:
            self.stats = {s: self._variant_stats(s) for s in self.variants}

    def _variant_stats(self, style_id: str, content: torch.Tensor | None = None) -> Stats:
        variant = self.variants[style_id]
        images = [self.style_images[u] for u in variant.uris]
        if content is not None:  # pytorch-AdaIN's colour preservation: recolour the style first
            images = [coral(img, content) for img in images]
        mean, std = cat_stats([self.model.style_stats(img[None]) for img in images])
        if len(images) == 1:
            return mean, std
        return blend_stats(mean, std, torch.tensor(variant.weights or [1.0] * len(images)))

    def __call__(self, batch: pa.Table) -> pa.Table:
        decoded = batch.to_pylist()
        results: dict[tuple[int, str], tuple[bytes, float]] = {}
        for height, width, chunk in shape_groups(decoded, self.batch_size):
            results.update(self._run(decoded, chunk, height, width))
        identity = self.model.identity
        rows = []
        for i, row in enumerate(decoded):
            base = {k: row[k] for k in ("input_uri", "rel_path", "key", "width", "height", "decode_ms")} | identity
            for style in row["skipped"]:
                rows.append(base | {"style": style, "status": "skipped"})
            for style in row["todo"]:
                if row["error"] is not None:
                    rows.append(base | {"style": style, "status": "error", "error": row["error"]})
                else:
                    pixels, model_ms = results[(i, style)]
                    rows.append(base | {"style": style, "status": "pending", "pixels": pixels, "model_ms": model_ms})
        return pa.Table.from_pylist(rows, schema=STYLIZED_SCHEMA)

    def _run(
        self, decoded: list[dict], chunk: list[int], height: int, width: int
    ) -> dict[tuple[int, str], tuple[bytes, float]]:
        start = time.perf_counter()
        content = to_batch([decoded[i] for i in chunk], height, width)
        styles = sorted({s for i in chunk for s in decoded[i]["todo"]})
        luminance = self.controls.preserve_color == "luminance"
        if self.controls.preserve_color == "coral":
            outputs = {s: [] for s in styles}
            for image in content:
                for s in styles:
                    stats = self._variant_stats(s, image)
                    outputs[s].append(self.model.stylize(image[None], stats, self.controls.alpha)[0])
            stacked = {s: torch.stack(outs) for s, outs in outputs.items()}
        else:
            outs = self.model.stylize_each(content, [self.stats[s] for s in styles], self.controls.alpha, luminance)
            stacked = dict(zip(styles, outs, strict=True))
        pixels = {s: to_uint8(t) for s, t in stacked.items()}
        per_image_ms = elapsed_ms(start) / len(chunk)
        return {(i, s): (pixels[s][k].tobytes(), per_image_ms) for k, i in enumerate(chunk) for s in decoded[i]["todo"]}


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8, rounded as save_image rounds."""
    return images.mul(255).add(0.5).clamp(0, 255).to("cpu", torch.uint8).permute(0, 2, 3, 1).numpy()


def write_outputs(batch: pa.Table, *, output: OutputSpec, naming: Callable[..., str] = output_key) -> pa.Table:
    """Encode and write each pending output at its deterministic key; the rows become manifest rows."""
    schema = pa.schema([f for f in batch.schema if f.name not in ("pixels", "key")])
    rows = batch.to_pylist()
    for row in rows:
        pixels, key = row.pop("pixels"), row.pop("key")
        if row["status"] != "pending":
            continue
        start = time.perf_counter()
        uri = naming(output.uri, row["style"], key, output.format)
        try:
            img = Image.frombytes("RGB", (row["width"], row["height"]), pixels)
            write_bytes(uri, encode(img, output.format, output.quality))
            row.update(status="ok", output_uri=uri)
        except AdainError as exc:
            row.update(status="error", error=f"writing {uri}: {exc}")
        row["write_ms"] = elapsed_ms(start)
    return pa.Table.from_pylist(rows, schema=schema)
