"""The writing stage: one interface, files and WebDataset shards behind it.

A writer names each output (`target`, once, when the plan is made), lists what is there
already (`existing`, once per run), and writes a batch of stylized rows, marking each `ok` or
`error` (`write`). A new output format plugs in here as another `Writer`. Torch-free: the writing
tasks import this module, and start in a fraction of a second without torch.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
from PIL import Image

from pipeline.config import OutputSpec
from pipeline.data.rows import ERROR, OK, PENDING, WRITTEN_SCHEMA, elapsed_ms
from pipeline.errors import StorageError, describe
from pipeline.imaging.codec import encode
from pipeline.storage.index import ObjectIndex
from pipeline.storage.keys import sample_name
from pipeline.storage.listing import list_files
from pipeline.storage.uri import check_inside, delete, exists, io_pool, is_dir, join, read_bytes, write_bytes


class Writer(Protocol):
    output: OutputSpec

    @property
    def rows_per_call(self) -> int | None:
        """Rows the writing stage hands each call (None: the job's batch size)."""

    def target(self, style_id: str, key: str) -> str:
        """Where the output of input `key` (its name without extension) in style `style_id` goes."""

    def existing(self) -> ObjectIndex | None:
        """What is there already, listed once per run on the driver (None: it cannot tell, and
        every output is made); the plan looks each target up in it, with no request per output."""

    def write(self, rows: list[dict[str, Any]], encoded: bool, concurrency: int = 1) -> None:
        """Write the pending rows' outputs, up to `concurrency` at a time; each row gets its
        status, output_uri or error, write_ms."""


def output_file(row: dict[str, Any], encoded: bool, output: OutputSpec) -> bytes:
    """The output file of a stylized row: as the model actor encoded it, or encoded here."""
    if encoded:
        return row["pixels"]
    image = Image.frombytes("RGB", (row["width"], row["height"]), row["pixels"])
    return encode(image, output.format, output.quality)


def not_written(row: dict[str, Any], exc: Exception) -> None:
    """Mark a stylized row's output as failed to write, with the reason."""
    row.update(status=ERROR, error=f"writing {row['target']}: {describe(exc)}")


def encode_outputs(rows: list[dict[str, Any]], output: OutputSpec, cores: Executor) -> None:
    """The pending rows' pixels encoded into their output files, in place, on `cores`' threads
    (Pillow encodes without the GIL); a row that cannot be encoded is not written, with the reason."""

    def one(row: dict[str, Any]) -> None:
        try:
            row["pixels"] = output_file(row, False, output)
        except Exception as exc:
            not_written(row, exc)

    list(cores.map(one, [row for row in rows if row["status"] == PENDING]))


VIDEO_FORMAT = "mp4"  # what videos are written as, whatever the images' --format


@dataclass(frozen=True)
class FileWriter:
    """One object per output, at a deterministic key (`naming`: `keys.output_key` or `keys.augmented_key`),
    named with the output's format, or `extension` (VIDEO_FORMAT for the videos' plan)."""

    output: OutputSpec
    naming: Callable[[str, str, str, str], str]
    rows_per_call: int | None = None
    extension: str | None = None

    def target(self, style_id: str, key: str) -> str:
        return self.naming(self.output.uri, style_id, key, self.extension or self.output.format)

    def existing(self) -> ObjectIndex:
        """The images' and the videos' outputs: one listing serves both plans of a run."""
        return ObjectIndex.build(self.output.uri, (f".{self.output.format}", f".{VIDEO_FORMAT}"))

    def write(self, rows: list[dict[str, Any]], encoded: bool, concurrency: int = 1) -> None:
        # Encoded here one at a time (the task's CPU share), uploaded `concurrency` at a time.
        def failed(row: dict[str, Any], exc: Exception, start: float) -> None:
            not_written(row, exc)
            row["write_ms"] = elapsed_ms(start)

        def upload(row: dict[str, Any], data: bytes, start: float) -> None:
            try:
                check_inside(row["target"], self.output.uri)
                write_bytes(row["target"], data)
            except Exception as exc:
                failed(row, exc, start)
            else:
                row.update(status=OK, output_uri=row["target"], write_ms=elapsed_ms(start))

        pool, uploads = io_pool(concurrency), []
        for row in rows:
            start = time.perf_counter()
            try:
                data = output_file(row, encoded, self.output)
            except Exception as exc:
                failed(row, exc, start)
                continue
            uploads.append(pool.submit(upload, row, data, start))
        for upload_done in uploads:
            upload_done.result()


@dataclass(frozen=True)
class ShardWriter:
    """WebDataset-style tar shards, one per call: per sample an image and a JSON sidecar (style,
    alpha, source), as WebDataset loaders read them. Shards are named per run, so a shard of a
    run that died is never taken for done: its samples are made again."""

    output: OutputSpec
    run_id: str
    rows_per_call: int | None = 1000

    def target(self, style_id: str, key: str) -> str:
        return sample_name(key, style_id)

    def existing(self) -> None:
        return None

    def write(self, rows: list[dict[str, Any]], encoded: bool, concurrency: int = 1) -> None:
        if not rows:
            return
        uri = join(self.output.uri, "shards", f"{self.run_id}-{uuid.uuid4().hex[:12]}.tar")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for row in rows:
                start = time.perf_counter()
                sidecar = {k: row[k] for k in ("style", "alpha", "input_uri", "rel_path")}
                members = (
                    (f"{row['target']}.{self.output.format}", output_file(row, encoded, self.output)),
                    (f"{row['target']}.json", json.dumps(sidecar).encode()),
                )
                for member, data in members:
                    info = tarfile.TarInfo(member)
                    info.size, info.mtime = len(data), int(time.time())
                    tar.addfile(info, io.BytesIO(data))
                row.update(shard_member=row["target"], write_ms=elapsed_ms(start))
        try:
            check_inside(uri, self.output.uri)
            write_bytes(uri, buffer.getvalue())
            for row in rows:
                row.update(status=OK, output_uri=uri)
        except Exception as exc:
            for row in rows:
                row.update(status=ERROR, error=f"writing {uri}: {describe(exc)}")


SHARD_INDEX = "index.json"  # in OUTPUT/shards/: the shards of the runs that finished


def shard_index(output: str) -> list[str]:
    """The shards (file names in OUTPUT/shards/) that finished runs wrote: the ones to read."""
    uri = join(output, "shards", SHARD_INDEX)
    if not exists(uri):
        return []
    try:
        names = json.loads(read_bytes(uri))["shards"]
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        names, why = None, describe(exc)
    else:
        why = "its shards are not a list of file names"
    if isinstance(names, list) and all(isinstance(name, str) for name in names):
        return names
    # Read before any work (remove_orphan_shards): taken as empty, it would have every finished run's shards deleted.
    raise StorageError(
        f"{uri}: unreadable shard index ({why}); restore it, or list the shards it should hold as "
        '{"shards": ["NAME.tar", ...]}'
    )


def record_shards(output: str, written: list[str]) -> None:
    """Add a finished run's shards to the index (under the run lock: one writer at a time)."""
    indexed = shard_index(output)
    names = sorted(set(indexed) | {posixpath.basename(uri) for uri in written})
    if names == sorted(indexed):
        return  # nothing new: the index is left as it is
    write_bytes(join(output, "shards", SHARD_INDEX), json.dumps({"shards": names}, indent=1).encode())


def remove_orphan_shards(output: str) -> int:
    """Delete the shards of runs that died before recording them (their samples are made again);
    returns how many. Readers that go by the index never see them either way."""
    folder = join(output, "shards")
    if not is_dir(folder):
        return 0
    indexed = set(shard_index(output))
    orphans = [uri for uri, rel in list_files(folder, (".tar",)) if "/" not in rel and rel not in indexed]
    for uri in orphans:
        delete(uri)
    return len(orphans)


def write_outputs(batch: pa.Table, *, writer: Writer, encoded: bool, concurrency: int = 1) -> pa.Table:
    """The writing stage: write the batch's pending outputs; the rows become manifest rows."""
    return written(batch.to_pylist(), writer, encoded, concurrency)


def written(rows: list[dict[str, Any]], writer: Writer, encoded: bool, concurrency: int = 1) -> pa.Table:
    """Write the pending ones of STYLIZED `rows`: the manifest rows."""
    writer.write([row for row in rows if row["status"] == PENDING], encoded, concurrency)
    return pa.Table.from_pylist(rows, schema=WRITTEN_SCHEMA)
