"""Listing files under a local directory or an object-store prefix, as Arrow columns."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipeline.errors import counted
from pipeline.storage.uri import (
    canonical,
    inside,
    is_remote,
    request_client,
    resolve,
    retrying,
    s3_call,
    scheme,
    storage_error,
    utf8,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileStat:
    """A listed file: what incremental runs compare to tell new and changed files apart."""

    uri: str
    rel: str  # path relative to the listed prefix
    size: int
    mtime_ns: int | None  # None where the store reports no modification time


def stat_table(uri: str, extensions: tuple[str, ...], skip: str | None = None) -> pa.Table:
    """Every file under a directory or prefix, recursively, whose name ends in one of
    `extensions` (case-insensitive), sorted: columns uri (in the same scheme as `uri`), rel
    (relative to `uri`), size, mtime_ns (null where the store reports none). Locally, no folder
    that is `skip` or lies in it, however reached (a job's output, through a link too).

    Columns are built straight from the listing and sorted by Arrow: no Python object per file
    is held past the listing."""
    filesystem, path = resolve(uri)
    if isinstance(filesystem, pafs.LocalFileSystem):
        table = _local_files(path, extensions, canonical(skip) if skip and scheme(skip) == "file" else None)
    else:
        selector = pafs.FileSelector(path, recursive=True)
        infos = retrying(lambda: filesystem.get_file_info(selector), uri)
        files = [i for i in infos if i.type == pafs.FileType.File and i.path.lower().endswith(extensions)]
        del infos
        paths = pa.array([info.path for info in files], pa.string())
        sizes = pa.array([info.size for info in files], pa.int64())
        mtimes = pa.array([info.mtime_ns for info in files], pa.int64())
        del files
        table = pa.table({"path": paths, "size": sizes, "mtime_ns": mtimes})
    table = table.sort_by("path")
    prefix = f"{scheme(uri)}://" if is_remote(uri) else ""
    base = len(path.rstrip("/")) + 1
    paths = table.column("path")
    return pa.table(
        {
            "uri": pc.binary_join_element_wise(prefix, paths, "") if prefix else paths,
            "rel": pc.utf8_slice_codeunits(paths, base),
            "size": table.column("size"),
            "mtime_ns": table.column("mtime_ns"),
        }
    )


def _local_files(root: str, extensions: tuple[str, ...], skip: str | None = None) -> pa.Table:
    """Files under a local directory, following symbolic links only where they stay inside it,
    and each directory once (a link loop is listed once, not forty levels deep); none in the
    real folder `skip`."""
    top = os.path.realpath(root)
    seen: set[tuple[int, int]] = set()
    paths: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    # what is left out, as (one, several): each count is said in the words that agree with it
    link = ("link leaving the input", "links leaving the input")
    loop = ("directory already listed (link loop)", "directories already listed (link loops)")
    not_utf8 = (
        "name that is not UTF-8 (rename it to include it)",
        "names that are not UTF-8 (rename them to include them)",
    )
    in_output = ("folder in the output (or link to it)", "folders in the output (or links to them)")
    skipped = dict.fromkeys((link, loop, not_utf8, in_output), 0)
    stack = [root]
    while stack:
        directory = stack.pop()
        info = os.stat(directory)
        if (info.st_dev, info.st_ino) in seen:
            skipped[loop] += 1
            continue
        seen.add((info.st_dev, info.st_ino))
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise storage_error(exc, directory) from exc
        for entry in entries:
            if not utf8(entry.name):
                skipped[not_utf8] += 1
                continue
            if entry.is_symlink() and not inside(os.path.realpath(entry.path), top):
                skipped[link] += 1
                continue
            try:
                if entry.is_dir():
                    if skip and inside(os.path.realpath(entry.path), skip):
                        skipped[in_output] += 1
                        continue
                    stack.append(entry.path)
                elif entry.is_file() and entry.name.lower().endswith(extensions):
                    stat = entry.stat()
                    paths.append(entry.path)
                    sizes.append(stat.st_size)
                    mtimes.append(stat.st_mtime_ns)
            except OSError:  # a dangling link, a file gone meanwhile
                continue
    for (one, several), count in skipped.items():
        if count:
            log.warning("%s: left out %s", root, counted(count, one, several))
    columns = {"path": (paths, pa.string()), "size": (sizes, pa.int64()), "mtime_ns": (mtimes, pa.int64())}
    return pa.table({name: pa.array(values, kind) for name, (values, kind) in columns.items()})


def stat_files(uri: str, extensions: tuple[str, ...]) -> list[FileStat]:
    """`stat_table` as a list, for listings of a size to hold as Python objects (styles, runs)."""
    return [FileStat(**row) for row in stat_table(uri, extensions).to_pylist()]


def list_files(uri: str, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
    """(uri, path relative to `uri`) of every file `stat_files` lists."""
    return [(stat.uri, stat.rel) for stat in stat_files(uri, extensions)]


Page = tuple[list[str], list[int | None]]  # paths relative to the listed prefix, and their mtime_ns


def iter_files(uri: str, extensions: tuple[str, ...]) -> Iterator[Page]:
    """Every file under a prefix or directory whose name ends in one of `extensions`
    (case-insensitive), a page at a time, so that memory never holds the whole listing: on S3 one
    LIST request per thousand objects, each retried on its own; locally a directory at a time."""
    filesystem, path = resolve(uri)
    extensions = tuple(e.lower() for e in extensions)
    root = path.rstrip("/")
    if scheme(uri) == "s3":
        yield from _s3_pages(uri, root + "/", extensions)
    elif isinstance(filesystem, pafs.LocalFileSystem):
        for folder, folders, names in os.walk(root):
            folders[:] = filter(utf8, folders)
            paths = [os.path.join(folder, n) for n in names if n.lower().endswith(extensions) and utf8(n)]
            stats = [(p, st) for p in paths if (st := _stat(p)) is not None]
            if stats:
                yield [p[len(root) + 1 :] for p, _ in stats], [st.st_mtime_ns for _, st in stats]
    else:
        table = stat_table(uri, extensions)
        yield table.column("rel").to_pylist(), table.column("mtime_ns").to_pylist()


def _stat(path: str) -> os.stat_result | None:
    """A listed file's stat, or None where there is none to take: a dangling link, a file removed
    since its folder was read, one this user may not see."""
    try:
        return os.stat(path)
    except OSError:
        return None


# Sub-prefixes listed at once, and how deep the listing splits into them (a prefix's folders
# are found with one delimited LIST a page; below DEPTH each folder is listed flat).
PREFIXES_IN_FLIGHT = 16
DEPTH = 2
PAGE_KEYS = 1000  # S3's most per LIST


def _s3_pages(uri: str, base: str, extensions: tuple[str, ...]) -> Iterator[Page]:
    """A prefix's pages, its folders listed in parallel (PREFIXES_IN_FLIGHT at a time, DEPTH
    levels down): millions of objects in many folders take about the largest folder's
    listing time, not the sum of all of them. At most 2 x PREFIXES_IN_FLIGHT pages wait in memory."""
    bucket, _, prefix = base.partition("/")
    client = request_client()

    def pages(folder: str, depth: int, found: Callable[[str, int], None]) -> Iterator[Page]:
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": folder, "MaxKeys": PAGE_KEYS}
        if depth < DEPTH:
            args["Delimiter"] = "/"
        while True:
            page = retrying(lambda args=args: s3_call(lambda: client.list_objects_v2(**args)), uri)
            for sub in page.get("CommonPrefixes", ()):
                found(sub["Prefix"], depth + 1)
            objects = [o for o in page.get("Contents", ()) if o["Key"].lower().endswith(extensions)]
            yield [o["Key"][len(prefix) :] for o in objects], [_ns(o["LastModified"]) for o in objects]
            if not page.get("IsTruncated"):
                return
            args = {**args, "ContinuationToken": page["NextContinuationToken"]}

    yield from _walked(pages, prefix)


_DONE = object()


def _walked(pages: Callable[..., Iterator[Page]], top: str) -> Iterator[Page]:
    """Run `pages(folder, depth, found)` for `top` and every folder it reports through `found`,
    on PREFIXES_IN_FLIGHT threads; their pages in the order they come. A failure in any stops all."""
    out: queue.Queue = queue.Queue(maxsize=2 * PREFIXES_IN_FLIGHT)
    stop = threading.Event()
    pending = [1]  # folders submitted and not finished, under `lock`
    lock = threading.Lock()
    pool = ThreadPoolExecutor(PREFIXES_IN_FLIGHT, thread_name_prefix="adain-list")

    def put(item: object) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def found(folder: str, depth: int) -> None:
        with lock:
            pending[0] += 1
        pool.submit(walk, folder, depth)

    def walk(folder: str, depth: int) -> None:
        try:
            for page in pages(folder, depth, found):
                if stop.is_set():
                    return
                put(page)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(exc)
        finally:
            with lock:
                pending[0] -= 1
                last = pending[0] == 0
            if last:
                put(_DONE)

    pool.submit(walk, top, 0)
    try:
        while (item := out.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _ns(when: datetime) -> int:
    """A listing's LastModified in nanoseconds since the epoch, exactly (no float in between)."""
    return (when - _EPOCH) // timedelta(microseconds=1) * 1000
