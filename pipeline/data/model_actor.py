"""The model stage: the `StyleModel` actor for `Dataset.map_batches`, shared by every job.

It takes DECODED rows (raw uint8 pixels, or JPEG files to decode on the model's device) and
returns one STYLIZED row per plan item: `pending` with its output's pixels (raw, for the
writing tasks to encode, or JPEG files encoded on the device), `skipped` or `error`.
Each row's items name their style and alpha; the style statistics come with the actor
(`styles.StyleSet`), so it never reads a style image. `ModelIO` is the pixels' edge.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch

from pipeline.config import ModelConfig, Sizing
from pipeline.data.cluster import fetched
from pipeline.data.decode import prepare_content
from pipeline.data.rows import ERROR, PENDING, SKIPPED, STYLIZED_SCHEMA, elapsed_ms
from pipeline.data.styles import StyleSet
from pipeline.errors import ImageError, describe
from pipeline.imaging.codec import check_encodable
from pipeline.imaging.device_codec import decode_jpegs, encode_jpegs, prepare_on_device
from pipeline.imaging.tensors import batch_to_pixels, pixels_to_batch, to_tensor
from pipeline.model.functional import Stats, blend_stats, cat_stats, coral
from pipeline.model.host import set_threads
from pipeline.model.loader import load_model

NOT_FINITE = "the model's output is not finite (NaN or inf): check the decoder, or use --precision bf16 or fp32"
_local = threading.local()


@contextmanager
def device_stream(device: torch.device) -> Iterator[None]:
    """Run on a CUDA stream of this thread's own. A GPU actor takes two calls at once (see
    `cluster.model_stage`), so one call's uploads, decoding and host work overlap the other's
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
                    plan = self.sizing.content_plan(image.shape[-1], image.shape[-2])
                    if plan.size != (width, height):  # the decoder saw another size than the header said
                        raise ImageError(f"decoded as {image.shape[-1]}x{image.shape[-2]}, not its header's size")
                    images[i] = prepare_on_device(image, plan)
                else:
                    images[i] = to_tensor(prepare_content(rows[i]["pixels"], self.sizing)).to(self.device)
            except Exception as exc:
                errors[i] = describe(exc)
        kept = [images[i] for i in range(len(rows)) if i in images]
        batch = torch.stack(kept).contiguous(memory_format=torch.channels_last) if kept else torch.empty(0)
        return batch, errors

    def outputs(self, images: torch.Tensor) -> list[bytes]:
        """(N, 3, H, W) in [0, 1] -> the bytes each output row carries: JPEG files with
        `jpeg_quality`, else raw RGB for the writing tasks to encode."""
        if self.jpeg_quality is not None:
            return encode_jpegs(images, self.jpeg_quality)
        return [image.tobytes() for image in batch_to_pixels(images)]


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


class StyleModel:
    """A model actor: loads the networks once, then stylizes batches of DECODED rows.

    Images in a batch are grouped by shape and never padded: padding would change the AdaIN
    statistics. One encoding of each content image serves all of its plan items: pass k
    decodes the k-th item still to make of every image in the group.
    """

    def __init__(
        self,
        model: ModelConfig,
        styles: StyleSet | ray.ObjectRef,
        sizing: Sizing,
        batch_size: int,
        preserve_color: str | None = None,
        threads: int | None = None,
        jpeg_quality: int | None = None,
    ) -> None:
        set_threads(threads)
        self.model = load_model(model.encoder, model.decoder, model.device, model.precision, model.compile)
        self.io = ModelIO(self.model.device, sizing, jpeg_quality)
        self.per_call = functools.partial(self.model.images_per_call, batch_size=batch_size)
        self.luminance = preserve_color == "luminance"
        self.styles: StyleSet = fetched(styles)
        self.index = {style_id: i for i, style_id in enumerate(self.styles.ids)}
        if self.styles.coral:  # recoloured per content image: kept as pixels
            assert self.styles.images is not None
            self.style_images = [[to_tensor(image) for image in images] for images in self.styles.images]
        else:
            assert self.styles.mean is not None and self.styles.std is not None
            device, features = self.model.device, self.styles.mean.shape[1]
            # Copied: arrays from the object store are read-only, which torch.from_numpy warns of.
            self.mean = torch.tensor(self.styles.mean, device=device).view(-1, features, 1, 1)
            self.std = torch.tensor(self.styles.std, device=device).view(-1, features, 1, 1)

    def __call__(self, batch: pa.Table) -> pa.Table:
        decoded = batch.to_pylist()
        outputs: dict[tuple[int, int], tuple[bytes, float]] = {}
        with device_stream(self.model.device):
            for height, width, chunk in shape_groups(decoded, self.per_call):
                outputs.update(self._run(decoded, chunk, height, width))
        identity = self.model.identity
        rows = []
        for i, row in enumerate(decoded):
            base = {k: row[k] for k in ("input_uri", "rel_path", "width", "height", "decode_ms")}
            items = zip(row["styles"], row["alphas"], row["targets"], row["done"], strict=True)
            for k, (style, alpha, target, done) in enumerate(items):
                item = base | {"style": style, "alpha": alpha, "target": target}
                if done:  # made by an earlier run, with weights this run cannot vouch for
                    rows.append(item | {"status": SKIPPED, "output_uri": target})
                    continue
                item |= identity
                if row["error"] is not None:
                    rows.append(item | {"status": ERROR, "error": row["error"]})
                else:
                    pixels, model_ms = outputs[(i, k)]
                    if pixels is None:
                        rows.append(item | {"status": ERROR, "error": NOT_FINITE, "model_ms": model_ms})
                    else:
                        rows.append(item | {"status": PENDING, "pixels": pixels, "model_ms": model_ms})
        return pa.Table.from_pylist(rows, schema=STYLIZED_SCHEMA)

    def _run(self, decoded: list[dict], chunk: list[int], height: int, width: int) -> dict[tuple[int, int], Any]:
        """Stylize one same-shape chunk of rows: {(row, item): (output bytes, model ms)}."""
        start = time.perf_counter()
        if self.io.jpeg_quality is not None:  # encoded here: one shape, so all of the chunk fits JPEG or none does
            try:
                check_encodable(width, height, "jpg")
            except ImageError as exc:
                for i in chunk:
                    decoded[i]["error"] = str(exc)
                return {}
        content, chunk = self.io.batch(decoded, chunk, height, width)
        if not chunk:
            return {}
        todo = [[k for k, done in enumerate(decoded[i]["done"]) if not done] for i in chunk]
        if self.styles.coral:
            images, keys = self._coral(decoded, chunk, todo, content)
        else:
            images, keys = self._passes(decoded, chunk, todo, content)
        # A NaN or inf output (fp16 overflow, damaged weights) would be written as a black image.
        finite = torch.cat([torch.isfinite(batch).flatten(1).all(1) for batch in images]).tolist()
        files = [f for batch in images for f in self.io.outputs(batch)]
        model_ms = elapsed_ms(start) / max(1, len(files))
        return {
            key: (data, model_ms) if ok else (None, model_ms)
            for key, data, ok in zip(keys, files, finite, strict=True)
        }

    def _passes(
        self, decoded: list[dict], chunk: list[int], todo: list[list[int]], content: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        styles, alphas, members, keys = [], [], [], []
        for slot in range(max(len(items) for items in todo)):
            held = [j for j, items in enumerate(todo) if len(items) > slot]
            items = [(chunk[j], todo[j][slot]) for j in held]
            rows = [self.index[decoded[i]["styles"][k]] for i, k in items]
            if len(set(rows)) == 1:  # one style for the pass: its statistics broadcast
                styles.append((self.mean[rows[0] : rows[0] + 1], self.std[rows[0] : rows[0] + 1]))
            else:
                styles.append((self.mean[rows], self.std[rows]))
            values = [decoded[i]["alphas"][k] for i, k in items]
            alphas.append(values[0] if len(set(values)) == 1 else torch.tensor(values).view(-1, 1, 1, 1))
            members.append(None if len(held) == len(chunk) else held)
            keys += items
        images = self.model.stylize_each(content, styles, alphas, self.luminance, members)
        return images, keys

    def _coral(
        self, decoded: list[dict], chunk: list[int], todo: list[list[int]], content: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """pytorch-AdaIN's colour preservation: each style image recoloured to each content image first."""
        images, keys = [], []
        for j, i in enumerate(chunk):
            for k in todo[j]:
                stats = self._coral_stats(self.index[decoded[i]["styles"][k]], content[j])
                images.append(self.model.stylize(content[j][None], stats, decoded[i]["alphas"][k]))
                keys.append((i, k))
        return images, keys

    def _coral_stats(self, style: int, content: torch.Tensor) -> Stats:
        assert self.styles.weights is not None
        images = [coral(image, content) for image in self.style_images[style]]
        mean, std = cat_stats([self.model.style_stats(image[None]) for image in images])
        weights = self.styles.weights[style]
        return (mean, std) if weights is None else blend_stats(mean, std, torch.tensor(weights))
