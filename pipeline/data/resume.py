"""Augmentation after a run that died: what it finished is kept, not made again.

    lock of a dead run (this host, process gone) -> released; new inputs whose drawn outputs
    exist already -> those outputs `done` (manifest rows `skipped`), the input not read again
    when all of them are

Torch-free, like io_tasks: `decode_unfinished` runs in the short-lived decoding workers.
"""

from __future__ import annotations

import json
import logging
import os
import socket

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.config import OutputSpec, Sizing
from pipeline.data.io_tasks import AUGMENT_DECODED_SCHEMA, decode_and_draw, draw
from pipeline.errors import StorageError
from pipeline.storage.keys import augmented_key
from pipeline.storage.lock import Lease, release
from pipeline.storage.uri import exists, read_bytes, resolve, retrying

log = logging.getLogger(__name__)

# Decoded rows, plus the drawn styles whose outputs a run that died already wrote.
RESUMED_SCHEMA = pa.schema([*AUGMENT_DECODED_SCHEMA, ("done", pa.list_(pa.string()))])


def release_if_dead(uri: str) -> None:
    """Release a run lock whose run died on this host (its process is gone: killed, crashed),
    so that the same command run again goes on at once instead of waiting out --lock-ttl.
    A lock of another host, or of a live process, is left to `acquire`."""
    try:
        holder = json.loads(read_bytes(uri)) if exists(uri) else None
    except (StorageError, ValueError):
        return
    if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
        return
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        log.warning("%s: run %s (pid %d on this host) is gone; taking over its lock", uri, holder.get("owner"), pid)
        release(Lease(uri, str(holder.get("owner"))))
    except PermissionError:
        pass  # alive, another user's


def written_since(uri: str, since_ns: int | None) -> bool:
    """Whether the output `uri` exists, written no earlier than `since_ns` (its input's mtime)."""
    filesystem, path = resolve(uri)
    info = retrying(lambda: filesystem.get_file_info(path), uri)
    if info.type != pafs.FileType.File:
        return False
    return since_ns is None or info.mtime_ns is None or info.mtime_ns >= since_ns


def decode_unfinished(
    batch: pa.Table,
    *,
    output: OutputSpec | None,
    style_ids: list[str],
    per_image: int,
    alpha_range: tuple[float, float],
    seed: int,
    sizing: Sizing,
    jpeg_to_model: bool = False,
) -> pa.Table:
    """decode_and_draw, less what a run that died had finished.

    With files (`output`; shards are named per run, so a shard run that died is redone whole),
    the drawn outputs of a new input (one that no finished run recorded) that exist already,
    written since the input was, are that run's work: the same draws at the same keys. They are
    `done` and kept as they are; an input whose outputs are all done is not read at all.
    """
    rows = batch.select(["input_uri", "rel_path", "key", "mtime_ns", "new"]).to_pylist()
    done: list[list[str]] = []
    for row in rows:
        if output is None or not row["new"]:
            done.append([])
            continue
        picks, _ = draw(seed, row["rel_path"], len(style_ids), per_image, alpha_range)
        keys = {style_ids[i]: augmented_key(output.uri, style_ids[i], row["key"], output.format) for i in picks}
        done.append([style for style, key in keys.items() if written_since(key, row["mtime_ns"])])
    need = pa.array([len(finished) < per_image for finished in done], pa.bool_())
    options = {"style_ids": style_ids, "per_image": per_image, "alpha_range": alpha_range, "seed": seed}
    decoded = decode_and_draw(batch.filter(need), **options, sizing=sizing, jpeg_to_model=jpeg_to_model)
    decoded = iter(decoded.to_pylist())
    out = []
    for row, finished in zip(rows, done, strict=True):
        if len(finished) < per_image:
            out.append(next(decoded) | {"done": finished})
        else:  # every output there: nothing to read
            picks, alphas = draw(seed, row["rel_path"], len(style_ids), per_image, alpha_range)
            item = {k: row[k] for k in ("input_uri", "rel_path", "key")}
            out.append(item | {"styles": [style_ids[i] for i in picks], "alphas": alphas, "done": finished})
    return pa.Table.from_pylist(out, schema=RESUMED_SCHEMA)
