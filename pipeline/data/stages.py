"""The model stage of the stylization pipeline: the `Stylizer` actor for `Dataset.map_batches`.

    read + decode (io_tasks) -> Stylizer (model actors) -> encode + write (io_tasks)

It takes the decoded rows (raw uint8 pixels in Arrow binary) and returns one row per
output with its stylized pixels, for the writing tasks to encode.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.config import Controls, ModelConfig, Sizing
from pipeline.data.bank import load_bank, style_tensor
from pipeline.data.cluster import set_threads
from pipeline.data.io_tasks import elapsed_ms
from pipeline.data.manifest import ROW_SCHEMA
from pipeline.imaging.tensors import batch_to_pixels, pixels_to_batch
from pipeline.model.functional import Stats, blend_stats, cat_stats, coral
from pipeline.model.loader import load_model


@dataclass(frozen=True)
class Variant:
    """One output per input: a single style image, or several blended with weights."""

    style_id: str
    uris: tuple[str, ...]
    weights: tuple[float, ...] | None = None


STYLIZED_SCHEMA = pa.schema([*ROW_SCHEMA, ("key", pa.string()), ("pixels", pa.binary())])


def to_batch(rows: list[dict[str, Any]], height: int, width: int, device: torch.device) -> torch.Tensor:
    """Decoded rows of one shape -> (N, 3, H, W) float in [0, 1] on `device`."""
    arrays = [np.frombuffer(row["pixels"], np.uint8).reshape(height, width, 3) for row in rows]
    return pixels_to_batch(np.stack(arrays), device)


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
        content = to_batch([decoded[i] for i in chunk], height, width, self.model.device)
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
        pixels = {s: batch_to_pixels(t) for s, t in stacked.items()}
        per_image_ms = elapsed_ms(start) / len(chunk)
        return {(i, s): (pixels[s][k].tobytes(), per_image_ms) for k, i in enumerate(chunk) for s in decoded[i]["todo"]}
