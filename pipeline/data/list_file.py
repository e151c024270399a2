"""A list file's inputs read by Ray Data, the driver holding one hash per row at most.

    read_parquet / read_csv / read_text -> map_batches(listing rows)     (the tasks)
    pass 1: each row's hash of its lower-cased plain stem  -> the driver  (8 bytes a row)
    stems that meet (each duplicated URI among them) -> those rows gathered and named on the
    driver by `output_stems`, as the whole list would name them -> the job's Dataset: every
    other image's row as it is, these rows dropped from the stream and their named images added
    once; its videos (by extension) gathered in a filtered pass, for the videos' pipeline.

A plain stem no other row has stays the output name, unless a renamed input takes it on the way
(`output_stems`' `taken`): those rows are gathered too, until none is. Two stems sharing a hash
only make their rows be named on the driver, exactly. Stems are fitted to the output's room
(`keys.fitted_stems`, as `output_stems` fits them) before they are hashed: a shortened name and
one named to equal it meet here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.exceptions import UserCodeException
from ray.exceptions import RayError

from pipeline.data.listing import (
    Inputs,
    ListFile,
    csv_options,
    entry_uri,
    first_of_each,
    list_uris,
    names_video,
    per_row,
    scan_list_file,
    split_videos,
)
from pipeline.errors import ConfigError, counted, describe
from pipeline.storage.index import name_hashes
from pipeline.storage.keys import Room, fitted_stems, output_stems, plain_stems, relative_to, safe_relpath
from pipeline.storage.uri import resolve

log = logging.getLogger(__name__)

_BATCH_ROWS = 65_536  # list entries a task turns into listing rows at a time


def read_inputs(found: ListFile) -> Inputs:
    """The list file's images as a Dataset and its videos as a table, named as `list_inputs`
    names them; each URI once."""
    try:
        with _failures_untold():
            hashes, videos = _stem_hashes(found)
            named, gathered, involved = named_on_driver(hashes, lambda wanted: _gather(found, wanted), found.room)
            images, named_videos = split_videos(named)
            listed_videos = _videos(found, involved) if videos else LISTING_SCHEMA.empty_table()
    except (RayError, UserCodeException) as exc:  # a row the tasks cannot read: one line, no traceback
        # Ray's errors keep only the text of the tasks' own: read the list here to name the row and why.
        scan_list_file(found.uri, found.column)
        # Ray Data's text reader decodes UTF-8 in its own code, which its error reports only as text.
        reason = "not UTF-8 text; save the list as UTF-8" if "UnicodeDecodeError" in str(exc) else _reason(exc)
        raise ConfigError(f"{found.uri}: the list file cannot be read: {reason}") from None
    # The stream's images are the list's less those gathered to the driver, which come back named, each once.
    count = len(hashes) - videos - split_videos(gathered)[0].num_rows + images.num_rows
    all_videos = pa.concat_tables([listed_videos, named_videos])
    if not count and not all_videos.num_rows:
        raise ConfigError(f"{found.uri}: no input images (the list file names none)")
    return Inputs(count, rows=functools.partial(_job_rows, found, involved, images), videos=all_videos)


@contextlib.contextmanager
def _failures_untold() -> Iterator[None]:
    """Ray Data's log of a failed read (its traceback, on the terminal) held back, as the failure
    is told in one line; --verbose (logging at INFO) keeps it."""
    logger = logging.getLogger("ray.data")
    level = logger.level
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _job_rows(found: ListFile, dropped: np.ndarray, named: pa.Table, num_cpus: float) -> ray.data.Dataset:
    """The job's listing rows: the stream's images less those named on the driver, and those once.
    Its tasks take `num_cpus` each, the job's I/O share: the model actors hold the rest."""
    rows = _listed(found, num_cpus).map_batches(
        _kept, fn_kwargs={"found": found, "dropped": dropped}, num_cpus=num_cpus, **_TASK
    )
    return rows.union(ray.data.from_arrow(named)) if named.num_rows else rows


def _reason(exc: BaseException) -> str:
    """The innermost cause of a task's failure, in one line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return describe(getattr(exc, "cause", None) or exc)


_TASK = {"batch_format": "pyarrow", "batch_size": _BATCH_ROWS}
LISTING_SCHEMA = pa.schema(
    [("input_uri", pa.string()), ("rel_path", pa.string()), ("key", pa.string()),
     ("size", pa.int64()), ("mtime_ns", pa.int64())]
)  # fmt: skip


def _listed(found: ListFile, num_cpus: float = 1.0) -> ray.data.Dataset:
    """The list file's entries (one column), read by Ray Data through the storage's filesystem."""
    filesystem, path = resolve(found.uri)
    read = {"filesystem": filesystem, "num_cpus": num_cpus}
    # A Parquet list's other columns, however wide or damaged, are never read: Ray Data pushes the
    # selection into the read (no operator of its own, which would ask a whole CPU).
    if found.column is None:
        return ray.data.read_text(path, **read)
    if found.uri.lower().endswith(".parquet"):
        return ray.data.read_parquet(path, **read).select_columns([found.column])
    return ray.data.read_csv(path, **read, **csv_options(found.column))


def entries(batch: pa.Table, found: ListFile) -> pa.Table:
    """A batch of list-file entries -> listing rows, `key` the plain stem fitted to the output
    (`keys.fitted_stems`: the output name unless it meets another), and `inside`: under the output, left out."""
    # text: one URI a line, '#' comments, perhaps a byte-order mark first
    uris = list_uris(batch.column(found.column or "text"), found.uri)
    uris = per_row(lambda u: entry_uri(u, found.uri), uris)
    rels = per_row(safe_relpath, per_row(lambda u: relative_to(u, found.root or ""), uris))
    nulls = pa.nulls(len(uris), pa.int64())
    inside = pc.starts_with(uris, found.exclude.rstrip("/") + "/") if found.exclude else pa.nulls(len(uris), pa.bool_())
    keys = fitted_stems(plain_stems(rels), found.room)
    columns = {"input_uri": uris, "rel_path": rels, "key": keys, "size": nulls, "mtime_ns": nulls}
    return pa.table(columns | {"inside": pc.fill_null(inside, False)})


def hashed(rows: pa.Table) -> np.ndarray:
    """The high 64 bits of each row's lower-cased plain stem's hash."""
    return name_hashes(pc.utf8_lower(rows.column("key")).to_pylist())[0]


def _hash_rows(batch: pa.Table, found: ListFile) -> dict[str, np.ndarray]:
    rows = entries(batch, found)
    inside = rows.column("inside").to_numpy(zero_copy_only=False)
    video = names_video(rows.column("input_uri")).to_numpy(zero_copy_only=False)
    return {"hash": hashed(rows), "inside": inside, "video": video}


def _stem_hashes(found: ListFile) -> tuple[np.ndarray, int]:
    """Pass 1: the stem hash of every entry not under the output, in the driver as NumPy, and
    how many of those entries are videos."""
    batches = _listed(found).map_batches(_hash_rows, fn_kwargs={"found": found}, **_TASK)
    parts, inside, videos = [], 0, 0
    for part in batches.iter_batches(batch_format="numpy", batch_size=None):
        parts.append(part["hash"][~part["inside"]])  # a copy: the block itself is let go
        inside += int(part["inside"].sum())
        videos += int((part["video"] & ~part["inside"]).sum())
    if inside:
        log.warning("%s: left out %s under the output %s", found.uri, counted(inside, "file"), found.exclude)
    return (np.concatenate(parts) if parts else np.empty(0, np.uint64)), videos


def _kept(batch: pa.Table, found: ListFile, dropped: np.ndarray, videos: bool = False) -> pa.Table:
    """The listing rows the job takes from the stream: not under the output, not named on the
    driver; its images, or (`videos`) its videos."""
    rows = entries(batch, found)
    keep = pc.and_(pc.invert(rows.column("inside")), pc.equal(names_video(rows.column("input_uri")), videos))
    if len(dropped):
        keep = pc.and_(keep, pa.array(~np.isin(hashed(rows), dropped)))
    return rows.filter(keep).drop_columns(["inside"])


def _gathered(batch: pa.Table, found: ListFile, wanted: np.ndarray) -> pa.Table:
    rows = entries(batch, found)
    rows = rows.filter(pc.invert(rows.column("inside"))).drop_columns(["inside"])
    return rows.filter(pa.array(np.isin(hashed(rows), wanted)))


def named_on_driver(
    hashes: np.ndarray, gather: Callable[[np.ndarray], pa.Table], room: Room | None = None
) -> tuple[pa.Table, pa.Table, np.ndarray]:
    """From every row's stem hash (sorted here, in place) and `gather` (the rows of some hashes):
    the rows whose stems meet, and those a renaming reaches, named as the whole list would name
    them (each URI once); the entries they were in the list; their stems' hashes."""
    ordered = hashes
    ordered.sort()  # stems that meet lie side by side
    involved = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    gathered = gather(involved)
    while True:
        named = first_of_each(gathered, "input_uri")
        taken: set[str] = set()
        keys = output_stems(named.column("rel_path"), named.column("input_uri"), taken, room)
        reached = np.setdiff1d(_found_in(name_hashes(sorted(taken))[0], ordered), involved)
        if not len(reached):
            return named.set_column(2, "key", keys), gathered, involved
        involved = np.union1d(involved, reached)
        gathered = pa.concat_tables([gathered, gather(reached)])


def _found_in(values: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """The `values` that the sorted array `ordered` holds (no copy of it)."""
    at = np.minimum(np.searchsorted(ordered, values), max(len(ordered) - 1, 0))
    return values[ordered[at] == values] if len(ordered) else values[:0]


def _gather(found: ListFile, wanted: np.ndarray) -> pa.Table:
    """The listing rows whose stem hash is one of `wanted` (a filtered pass; none if none is)."""
    return _collected(found, _gathered, wanted=wanted) if len(wanted) else LISTING_SCHEMA.empty_table()


def _videos(found: ListFile, dropped: np.ndarray) -> pa.Table:
    """The list's videos but those whose stem hash is one of `dropped` (named on the driver): a filtered pass."""
    return _collected(found, _kept, dropped=dropped, videos=True)


def _collected(found: ListFile, fn: Callable[..., pa.Table], **kwargs: Any) -> pa.Table:
    """What `fn` keeps of the list file's entries, read by the tasks, as one table on the driver."""
    rows = _listed(found).map_batches(fn, fn_kwargs={"found": found, **kwargs}, **_TASK)
    return pa.concat_tables([LISTING_SCHEMA.empty_table(), *rows.iter_batches(batch_format="pyarrow", batch_size=None)])
