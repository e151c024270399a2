"""The stages of the stylization pipeline, each a callable for `Dataset.map_batches`.

    read + decode (CPU tasks) -> Stylizer (model actors) -> encode + write (CPU tasks)

Batches are pyarrow tables. Pixels travel between stages as raw uint8 HxWx3 bytes with
their width and height: plain Arrow binary, nothing pickled. A failure of one input
becomes an `error` row and never stops the job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from pipeline.config import Controls, ModelConfig, OutputSpec, Sizing
from pipeline.data.manifest import ROW_SCHEMA
from pipeline.errors import AdainError
from pipeline.imaging.codec import encode, prepare, to_tensor
from pipeline.model.functional import Stats, blend_stats, coral
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


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0


def decode_inputs(batch: pa.Table, *, style_ids: list[str], output: OutputSpec, sizing: Sizing) -> pa.Table:
    """Read and decode each input whose outputs are not all there yet."""
    rows = []
    for row in batch.select(["input_uri", "rel_path", "key"]).to_pylist():
        start = time.perf_counter()
        uri = row["input_uri"]
        row.update(todo=list(style_ids), skipped=[])
        if not output.overwrite:
            done = {s for s in style_ids if exists(output_key(output.uri, s, row["key"], output.format))}
            row["todo"] = [s for s in style_ids if s not in done]
            row["skipped"] = [s for s in style_ids if s in done]
        if row["todo"]:
            try:
                img = prepare(read_bytes(uri), sizing.content_size, sizing.crop, sizing.max_pixels, sizing.max_side)
                row.update(pixels=img.tobytes(), width=img.width, height=img.height)
            except AdainError as exc:
                row["error"] = str(exc)
        row["decode_ms"] = _ms(start)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


class Stylizer:
    """A model actor: loads the networks and encodes the styles once, then stylizes batches.

    Images in a batch are grouped by shape and never padded: padding would change the
    AdaIN statistics. One encoding of each content image serves all of its styles.
    """

    def __init__(
        self, model: ModelConfig, controls: Controls, sizing: Sizing, variants: list[Variant], batch_size: int
    ) -> None:
        self.model = load_model(model)
        self.controls, self.variants, self.batch_size = controls, {v.style_id: v for v in variants}, batch_size
        uris = sorted({u for v in variants for u in v.uris})
        self.style_images = {
            u: to_tensor(prepare(read_bytes(u), sizing.style_size, sizing.crop, sizing.max_pixels)) for u in uris
        }
        # Style statistics, computed once per actor (coral needs them per content image instead).
        self.stats = {} if controls.preserve_color == "coral" else {s: self._variant_stats(s) for s in self.variants}

    def _variant_stats(self, style_id: str, content: torch.Tensor | None = None) -> Stats:
        variant = self.variants[style_id]
        images = [self.style_images[u] for u in variant.uris]
        if content is not None:  # pytorch-AdaIN's colour preservation: recolour the style first
            images = [coral(img, content) for img in images]
        mean, std = _cat([self.model.style_stats(img[None]) for img in images])
        if len(images) == 1:
            return mean, std
        return blend_stats(mean, std, torch.tensor(variant.weights or [1.0] * len(images)))

    def __call__(self, batch: pa.Table) -> pa.Table:
        decoded = batch.to_pylist()
        results: dict[tuple[int, str], tuple[bytes, float]] = {}
        groups: dict[tuple[int, int], list[int]] = {}
        for i, row in enumerate(decoded):
            if row["pixels"] is not None:
                groups.setdefault((row["height"], row["width"]), []).append(i)
        for (height, width), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
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
        arrays = [np.frombuffer(decoded[i]["pixels"], np.uint8).reshape(height, width, 3) for i in chunk]
        content = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255.0)
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
        pixels = {s: _to_uint8(t) for s, t in stacked.items()}
        per_image_ms = _ms(start) / len(chunk)
        return {(i, s): (pixels[s][k].tobytes(), per_image_ms) for k, i in enumerate(chunk) for s in decoded[i]["todo"]}


def _cat(stats: list[Stats]) -> Stats:
    return torch.cat([m for m, _ in stats]), torch.cat([s for _, s in stats])


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8, rounded as save_image rounds."""
    return images.mul(255).add(0.5).clamp(0, 255).to("cpu", torch.uint8).permute(0, 2, 3, 1).numpy()


def write_outputs(batch: pa.Table, *, output: OutputSpec) -> pa.Table:
    """Encode and write each pending output at its deterministic key; the rows become manifest rows."""
    rows = batch.to_pylist()
    for row in rows:
        pixels, key = row.pop("pixels"), row.pop("key")
        if row["status"] != "pending":
            continue
        start = time.perf_counter()
        uri = output_key(output.uri, row["style"], key, output.format)
        try:
            img = Image.frombytes("RGB", (row["width"], row["height"]), pixels)
            write_bytes(uri, encode(img, output.format, output.quality))
            row.update(status="ok", output_uri=uri)
        except AdainError as exc:
            row.update(status="error", error=f"writing {uri}: {exc}")
        row["write_ms"] = _ms(start)
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
