"""The decoding stage: plan each input's outputs, then read and decode the inputs with work left.

Pixels leave as raw uint8 HxWx3 bytes with their width and height. With `jpeg_to_model`
(`--jpeg-codec`), a plain JPEG is left encoded for the model actor to decode on its device,
and its width and height are those it will have after sizing. A failure of one input becomes
its `error` and never stops the job. No torch here: the many short-lived workers that run
these tasks start in a fraction of a second without it.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray
from PIL import Image

from pipeline.config import Sizing
from pipeline.data.cluster import fetched
from pipeline.data.plan import Plan, plan_inputs
from pipeline.data.rows import DECODED_SCHEMA, elapsed_ms
from pipeline.errors import describe
from pipeline.imaging.codec import check_plan, max_file_bytes, plain_jpeg_size, prepare
from pipeline.storage.index import ObjectIndex
from pipeline.storage.uri import io_pool, read_bytes


def prepare_content(data: bytes, sizing: Sizing) -> Image.Image:
    """A content image's bytes -> the RGB image the model takes, sized per `sizing`."""
    return prepare(data, sizing.content_size, sizing.crop, sizing.max_pixels, sizing.max_side)


def decode_one(
    uri: str, sizing: Sizing, jpeg_to_model: bool = False, read: Future[bytes] | None = None
) -> dict[str, Any]:
    """Read (or take the read already under way), decode and size one content image: pixels,
    width and height, or the error."""
    start = time.perf_counter()
    row: dict[str, Any] = {}
    try:
        data = read_bytes(uri, max_file_bytes(sizing.max_pixels)) if read is None else read.result()
        size = plain_jpeg_size(data, sizing.max_pixels) if jpeg_to_model else None
        if size is not None:
            plan = sizing.content_plan(*size)
            check_plan(plan, sizing.max_pixels)
            row.update(pixels=data, jpeg=True, width=plan.size[0], height=plan.size[1])
        else:
            img = prepare_content(data, sizing)
            row.update(pixels=img.tobytes(), jpeg=False, width=img.width, height=img.height)
    except Exception as exc:  # whatever one input does, it is that input's error
        row["error"] = describe(exc)
    row["decode_ms"] = elapsed_ms(start)
    return row


def read_all(uris: list[str], concurrency: int, max_pixels: int) -> list[Future[bytes]]:
    """Each URI's read, in order, with up to `concurrency` in flight (the batch's bytes at most); each a
    regular file of at most `max_file_bytes(max_pixels)`."""
    pool, most = io_pool(concurrency), max_file_bytes(max_pixels)
    return [pool.submit(read_bytes, uri, most) for uri in uris]


@dataclass
class Reading:
    """A batch planned, and the reads of its inputs with work left under way."""

    rows: list[dict[str, Any]]
    todo: list[dict[str, Any]]
    reads: list[Future[bytes]]

    def wait(self) -> None:
        """Until every read is in (or failed: `decoded` makes a failure that row's error)."""
        wait(self.reads)

    def decoded(self, sizing: Sizing, jpeg_to_model: bool = False, cores: Executor | None = None) -> pa.Table:
        """The DECODED rows: each read decoded and sized as it comes in, on `cores`' threads
        (Pillow decodes without the GIL), or one at a time here."""
        def one(pair: tuple[dict[str, Any], Future[bytes]]) -> dict[str, Any]:
            return decode_one(pair[0]["input_uri"], sizing, jpeg_to_model, pair[1])

        pairs = list(zip(self.todo, self.reads, strict=True))
        for row, decoded in zip(self.todo, map(one, pairs) if cores is None else cores.map(one, pairs), strict=True):
            row.update(decoded)
        return pa.Table.from_pylist(self.rows, schema=DECODED_SCHEMA)


def start_reading(
    batch: pa.Table, plan: Plan, existing: ObjectIndex | None, concurrency: int, max_pixels: int
) -> Reading:
    """Plan the listing's rows against what `existing` (the plan's listing of its outputs) holds, and
    start reading the inputs with an output still to make, `concurrency` at a time."""
    rows = plan_inputs(batch, plan, existing)  # no Arrow round trip between planning and decoding
    todo = [row for row in rows if not all(row["done"])]
    return Reading(rows, todo, read_all([row["input_uri"] for row in todo], concurrency, max_pixels))


def decode_inputs(
    batch: pa.Table,
    *,
    plan: Plan,
    sizing: Sizing,
    jpeg_to_model: bool = False,
    existing: ObjectIndex | ray.ObjectRef | None = None,
    concurrency: int = 1,
) -> pa.Table:
    """The decoding stage: the listing's rows -> DECODED rows, planned and read (`start_reading`),
    the inputs read already decoded one at a time (the task's CPU share) while the rest arrive."""
    return start_reading(batch, plan, fetched(existing), concurrency, sizing.max_pixels).decoded(sizing, jpeg_to_model)
