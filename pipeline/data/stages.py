"""The model stage of the stylization pipeline: the `Stylizer` actor for `Dataset.map_batches`.

    read + decode (io_tasks) -> Stylizer (model actors) -> encode + write (io_tasks)

It takes the decoded rows (raw uint8 pixels in Arrow binary, or JPEG files to decode on the
model's device) and returns one row per output with its stylized pixels (raw, for the writing
tasks to encode, or JPEG files encoded on the device). `ModelIO` is that edge, shared with the
augmentation actor.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.config import Controls, ModelConfig, Sizing
from pipeline.data.bank import load_bank, style_tensor
from pipeline.data.cluster import set_threads
from pipeline.data.io_tasks import elapsed_ms, prepare_content
from pipeline.data.manifest import ROW_SCHEMA
from pipeline.errors import ImageError
from pipeline.imaging.device_codec import decode_jpegs, encode_jpegs, prepare_on_device
from pipeline.imaging.tensors import batch_to_pixels, pixels_to_batch, to_tensor
from pipeline.model.functional import Stats, blend_stats, cat_stats, coral
from pipeline.model.loader import load_model


@dataclass(frozen=True)
class Variant:
    """One output per input: a single style image, or several blended with weights."""

    style_id: str
    uris: tuple[str, ...]
    weights: tuple[float, ...] | None = None


# pixels: raw RGB, or the JPEG file when `jpeg` (encoded on the model's device)
STYLIZED_SCHEMA = pa.schema([*ROW_SCHEMA, ("key", pa.string()), ("pixels", pa.binary()), ("jpeg", pa.bool_())])


_local = threading.local()


@contextmanager
def device_stream(device: torch.device) -> Iterator[None]:
    """Run on a CUDA stream of this thread's own. A GPU actor takes two calls at once (see
    `cluster.actor_resources`), so one call's uploads, decoding and host work overlap the other's
    kernels. On the CPU, nothing changes."""
    if device.type != "cuda":
        yield
        return
    stream = getattr(_local, "stream", None)
    if stream is None:
        stream = _local.stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))  # the weights and style statistics are ready
    with torch.cuda.stream(stream):
        yield


class ModelIO:
    """Pixels into and out of a model actor.

    In: raw RGB bytes from the decoding tasks, or (`jpeg` rows) JPEG files, decoded and resized
    here on the model's device; a file the device cannot decode is decoded here with Pillow, and
    one that Pillow cannot decode either becomes that row's error. Out: raw RGB bytes for the
    writing tasks to encode, or, with `jpeg_quality`, JPEG files encoded here on the device.
    """

    def __init__(self, device: torch.device, sizing: Sizing, jpeg_quality: int | None = None) -> None:
        self.device, self.sizing, self.jpeg_quality = device, sizing, jpeg_quality

    def batch(
        self, decoded: list[dict[str, Any]], chunk: list[int], height: int, width: int
    ) -> tuple[torch.Tensor, list[int]]:
        """The `chunk` of `decoded` rows, all height x width, as (N, 3, H, W) float in [0, 1] on the
        device, and the rows it holds: a row that cannot be decoded gets its `error` and is left out."""
        batch, errors = self._load([decoded[i] for i in chunk], height, width)
        for k, error in errors.items():
            decoded[chunk[k]]["error"] = error
        return batch, [i for k, i in enumerate(chunk) if k not in errors]

    def _load(self, rows: list[dict[str, Any]], height: int, width: int) -> tuple[torch.Tensor, dict[int, str]]:
        raw = [i for i, row in enumerate(rows) if not row["jpeg"]]
        files = [i for i, row in enumerate(rows) if row["jpeg"]]
        images: dict[int, torch.Tensor] = {}
        errors: dict[int, str] = {}
        if raw:
            arrays = [np.frombuffer(rows[i]["pixels"], np.uint8).reshape(height, width, 3) for i in raw]
            if not files:
                return pixels_to_batch(np.stack(arrays), self.device), errors
            images.update(zip(raw, pixels_to_batch(np.stack(arrays), self.device), strict=True))
        decoded = decode_jpegs([rows[i]["pixels"] for i in files], self.device)
        for i, image in zip(files, decoded, strict=True):
            try:
                if image is not None:
                    images[i] = prepare_on_device(image, self.sizing)
                else:
                    images[i] = to_tensor(prepare_content(rows[i]["pixels"], self.sizing)).to(self.device)
            except ImageError as exc:
                errors[i] = str(exc)
        kept = [images[i] for i in range(len(rows)) if i in images]
        batch = torch.stack(kept).contiguous(memory_format=torch.channels_last) if kept else torch.empty(0)
        return batch, errors

    def outputs(self, images: torch.Tensor) -> tuple[list[bytes], bool]:
        """(N, 3, H, W) in [0, 1] -> the bytes each output row carries, and whether they are JPEG files."""
        if self.jpeg_quality is not None:
            return encode_jpegs(images, self.jpeg_quality), True
        return [image.tobytes() for image in batch_to_pixels(images)], False


def shape_groups(
    rows: list[dict[str, Any]], per_call: Callable[[int, int], int]
) -> Iterator[tuple[int, int, list[int]]]:
    """(height, width, row indices) chunks of same-shape decoded rows, `per_call(height, width)`
    rows at most: images are never padded, since padding would change the AdaIN statistics."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, row in enumerate(rows):
        if row["pixels"] is not None:
            groups.setdefault((row["height"], row["width"]), []).append(i)
    for (height, width), members in groups.items():
        size = per_call(height, width)
        for start in range(0, len(members), size):
            yield height, width, members[start : start + size]


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
        jpeg_quality: int | None = None,
    ) -> None:
        set_threads(threads)
        self.model = load_model(model)
        self.io = ModelIO(self.model.device, sizing, jpeg_quality)
        self.controls, self.variants = controls, {v.style_id: v for v in variants}
        self.per_call = functools.partial(self.model.images_per_call, batch_size=batch_size)
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
        results: dict[tuple[int, str], tuple[bytes, bool, float]] = {}
        with device_stream(self.model.device):
            for height, width, chunk in shape_groups(decoded, self.per_call):
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
                    pixels, jpeg, model_ms = results[(i, style)]
                    output = {"pixels": pixels, "jpeg": jpeg, "model_ms": model_ms}
                    rows.append(base | {"style": style, "status": "pending"} | output)
        return pa.Table.from_pylist(rows, schema=STYLIZED_SCHEMA)

    def _run(
        self, decoded: list[dict], chunk: list[int], height: int, width: int
    ) -> dict[tuple[int, str], tuple[bytes, bool, float]]:
        start = time.perf_counter()
        content, chunk = self.io.batch(decoded, chunk, height, width)
        if not chunk:
            return {}
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
        files = {s: self.io.outputs(t) for s, t in stacked.items()}
        per_image_ms = elapsed_ms(start) / len(chunk)
        return {
            (i, s): (files[s][0][k], files[s][1], per_image_ms) for k, i in enumerate(chunk) for s in decoded[i]["todo"]
        }
