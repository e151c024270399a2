"""Training data: the images as Ray Data datasets (decoded and cropped afresh every epoch), and
on each worker, endless batches from its shard.

Unreadable images are skipped and counted (`SkippedImages`), never fatal.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray
from PIL import Image
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.config import TrainConfig
from pipeline.data.listing import list_inputs
from pipeline.errors import ConfigError, ImageError, counted, describe
from pipeline.imaging.codec import decode, max_file_bytes
from pipeline.storage.uri import read_bytes

log = logging.getLogger(__name__)

_DECODE_BATCH = 16  # images per decoding task call
_BLOCK_ROWS = 64  # URIs per input block: enough blocks to spread decoding and split across workers


class SkippedImages:
    """A small actor that the decoding tasks tell about images they could not read, so that the
    metrics can count them. Each file counts once, however many epochs meet it."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def add(self, errors: list[tuple[str, str]]) -> None:
        for uri, reason in errors:
            if uri not in self.errors:
                log.warning("skipping %s: %s", uri, reason)
                self.errors[uri] = reason

    def count(self) -> int:
        return len(self.errors)

    def all(self) -> dict[str, str]:
        return dict(self.errors)


def skipped_images_actor() -> Any:
    """The SkippedImages actor, on this (the driver's) node, as Ray Train places its controller.

    Every worker asks it for the count at each metrics row, so it must outlive any worker node:
    placed on a node that dies, it would fail every restarted worker group until --max-failures
    is spent. The driver's node dying ends the run anyway.
    """
    return ray.remote(num_cpus=0, scheduling_strategy=_driver_node())(SkippedImages).remote()


def driver_queue() -> Any:
    """A queue on the driver's node (see `skipped_images_actor`) for rank 0's metrics rows."""
    from ray.util.queue import Queue

    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": _driver_node()})


def _driver_node() -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def decode_crops(
    batch: dict[str, np.ndarray], *, resize: int, crop: int, max_pixels: int, skipped: Any
) -> dict[str, np.ndarray]:
    """pytorch-AdaIN's train_transform: Resize((resize, resize)) ignoring the aspect ratio, then a
    random crop x crop. Unreadable images are dropped from the batch and reported to `skipped`."""
    rng = np.random.default_rng()
    images, errors = [], []
    for uri in batch["uri"]:
        try:
            data = read_bytes(str(uri), max_file_bytes(max_pixels))
            img = decode(data, max_pixels).resize((resize, resize), Image.BILINEAR)
        except Exception as exc:  # an unreadable image, a file gone since the listing, anything
            errors.append((str(uri), describe(exc)))
            continue
        top, left = rng.integers(0, resize - crop + 1, size=2)
        images.append(np.asarray(img.crop((left, top, left + crop, top + crop))))
    if errors:
        skipped.add.remote(errors)
    return {"image": np.stack(images) if images else np.zeros((0, crop, crop, 3), np.uint8)}


def image_uris(source: str, cfg: TrainConfig, flag: str) -> list[str]:
    """Every image under a prefix (or a single image, or a .txt/.csv/.parquet list of URIs)."""
    try:
        uris = list_inputs(source, cfg.extensions).column("input_uri").to_pylist()
    except ConfigError as exc:
        raise ConfigError(f"{flag} {exc}") from None
    if len(uris) < cfg.workers:
        found = counted(len(uris), "image")
        raise ConfigError(f"{flag} {source}: {found} for {cfg.workers} workers; each needs one at least")
    return uris


def image_dataset(uris: list[str], cfg: TrainConfig, skipped: Any, loader_cpus: float) -> ray.data.Dataset:
    """The decoded, cropped images of one set, decoded again (fresh crops) on every pass.

    pytorch-AdaIN draws a new random permutation each epoch. Here the URIs are shuffled once
    into blocks of 64, the block order is new every epoch, and each worker shuffles within a
    buffer (see `endless_batches`): close to a permutation, without an all-to-all shuffle
    per epoch.
    """
    uris = list(uris)
    random.Random(cfg.seed).shuffle(uris)
    blocks = min(len(uris), max(2 * cfg.workers, math.ceil(len(uris) / _BLOCK_ROWS)))
    ds = ray.data.from_items([{"uri": u} for u in uris], override_num_blocks=blocks).randomize_block_order()
    # Zero-CPU decoding shares the workers' cores: cap how many such tasks run at once.
    pool = ray.data.TaskPoolStrategy(size=None if loader_cpus > 0 else max(2, cfg.workers))
    return ds.map_batches(
        decode_crops,
        fn_kwargs={"resize": cfg.resize, "crop": cfg.crop, "max_pixels": cfg.max_pixels, "skipped": skipped},
        batch_size=_DECODE_BATCH,
        batch_format="numpy",
        compute=pool,
        num_cpus=loader_cpus,
    )


def loader_cpus(cfg: TrainConfig) -> float:
    """CPUs per decoding task: what was asked, else 1 when the workers leave a CPU free, else 0.

    Ray never schedules a task that asks for CPUs the workers hold; with 0 it runs beside them.
    """
    if cfg.loader_cpus is not None:
        return cfg.loader_cpus
    spare = ray.cluster_resources().get("CPU", 0.0) - cfg.workers * cfg.cpus_per_worker
    return 1.0 if spare >= 1.0 else 0.0


def endless_batches(shard: Any, batch_size: int, what: str) -> Iterator[np.ndarray]:
    """(batch_size, H, W, 3) uint8 batches forever, re-reading the shard epoch after epoch.

    pytorch-AdaIN's InfiniteSamplerWrapper: batches run across epoch boundaries, and each
    epoch visits the images in a new order (new block order, shuffled within a buffer of
    8 batches), with new random crops (the dataset re-runs). All workers hold equally many
    images (Ray's equal split), so they all start a new epoch at the same step, which Ray
    Data's split requires.
    """
    pending: list[np.ndarray] = []
    while True:
        rows = 0
        batches = shard.iter_batches(
            batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=8 * batch_size
        )
        for batch in batches:
            images = batch["image"]
            rows += len(images)
            pending.extend(images)
            while len(pending) >= batch_size:
                yield np.stack(pending[:batch_size])
                del pending[:batch_size]
        if rows == 0:
            raise ImageError(f"no readable {what} images reached this worker; check the {what} prefix")
