"""What to process: content images listed from a prefix or read from a list file, and styles."""

from __future__ import annotations

import io
import logging
import math
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import ConfigError, counted
from pipeline.imaging.codec import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from pipeline.storage.keys import STYLE_ROOM, Room, output_stems, relative_to, safe_relpath, slug, unique_names
from pipeline.storage.listing import list_files, stat_table
from pipeline.storage.uri import exists, is_dir, read_bytes, resolve, retrying, storage_error

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

LIST_FILE_EXTENSIONS = (".parquet", ".csv", ".txt")


def _uris_from_list_file(uri: str) -> pa.ChunkedArray:
    """A Parquet/CSV file with a `uri` column (else its first column), or text with one URI a line."""
    data = read_bytes(uri)
    if uri.lower().endswith(".txt"):
        lines = [line.strip() for line in utf8_text(data, uri).splitlines()]
        return pa.chunked_array([[line for line in lines if line and not line.startswith("#")]], pa.string())
    if not data.strip():
        uri_column([], uri)  # says there are no columns
    parquet = uri.lower().endswith(".parquet")
    table = _or_invalid(lambda: (pq.read_table if parquet else pacsv.read_csv)(io.BytesIO(data)), uri)
    column = table.column(uri_column(table.column_names, uri)).cast(pa.string())
    return column.filter(pc.invert(pc.or_kleene(pc.is_null(column), pc.equal(column, ""))))


@dataclass(frozen=True)
class ListFile:
    """A list file checked on the driver (there, readable, its URI column), for Ray Data to read
    once Ray runs (`list_file.read_inputs`): the driver never holds its rows."""

    uri: str
    column: str | None  # the URI column of a Parquet/CSV file; None for text, one URI a line
    root: str | None
    exclude: str | None
    room: Room | None = None  # what output names must fit (`keys.output_room`)


def check_list_file(
    uri: str, root: str | None = None, exclude: str | None = None, room: Room | None = None
) -> ListFile:
    """The list file's URI column, from its schema or header alone: a missing or unreadable file,
    or one with no columns, fails here in seconds."""
    filesystem, path = resolve(uri)
    if uri.lower().endswith(".parquet"):
        schema = retrying(lambda: _or_invalid(lambda: pq.read_schema(path, filesystem=filesystem), uri), uri)
        names = schema.names
    else:
        head = retrying(lambda: _head(filesystem, path), uri)
        if uri.lower().endswith(".txt"):
            utf8_text(head, uri, partial=len(head) == _HEAD_BYTES)  # the rest is read by the tasks
            return ListFile(uri, None, root, exclude, room)
        header = head.split(b"\n", 1)[0] + b"\n"
        names = _or_invalid(lambda: pacsv.read_csv(io.BytesIO(header)).column_names, uri) if head.strip() else []
    return ListFile(uri, uri_column(names, uri), root, exclude, room)


def uri_column(names: list[str], uri: str) -> str:
    """A Parquet or CSV list file's column of URIs: `uri`, else the first. A CSV whose first line is
    an entry (it has no header) is refused: that entry would be taken for the column's name, unread."""
    if not names:
        raise ConfigError(f"{uri}: the list file has no columns; give a 'uri' column")
    if "uri" in names:
        return "uri"
    first = names[0]
    if uri.lower().endswith(".csv") and ("/" in first or first.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)):
        raise ConfigError(
            f"{uri}: its first line ({first}) is an entry, not the columns' names; add a first line 'uri'"
        )
    return first


_HEAD_BYTES = 1 << 16  # enough for any header line a list file has


def _or_invalid(read: Callable[[], object], uri: str):
    try:
        return read()
    except pa.ArrowInvalid as exc:
        raise ConfigError(f"{uri}: not a list file this can read ({exc})") from None


def utf8_text(data: bytes, uri: str, partial: bool = False) -> str:
    """A text list file's lines as one string, less a leading byte-order mark (as Notepad saves
    UTF-8); ConfigError if it is not UTF-8. `partial`: `data` is the file's start, which may end
    inside a character."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if partial and exc.start >= len(data) - 3 and exc.reason == "unexpected end of data":
            return data[: exc.start].decode("utf-8-sig")
        raise ConfigError(
            f"{uri}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save the list as UTF-8"
        ) from None


def _head(filesystem: pafs.FileSystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as stream:
        return stream.read(_HEAD_BYTES)


def entry_uri(uri: str, list_file: str) -> str:
    """Relative entries in a list file are relative to the list file's folder."""
    if "://" in uri or uri.startswith("/"):
        return uri
    base = list_file.rsplit("/", 1)[0] if "/" in list_file else "."
    return f"{base}/{uri}"


def find_inputs(
    source: str,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    root: str | None = None,
    exclude: str | None = None,
    room: Room | None = None,
) -> pa.Table | ListFile:
    """What a job processes, found on the driver before Ray starts: the `list_inputs` table, or
    a checked list file (read later by Ray Data, as `Inputs.of` does)."""
    if source.lower().endswith(LIST_FILE_EXTENSIONS) and not is_dir(source):
        return check_list_file(source, root, exclude, room)
    return list_inputs(source, extensions, root, exclude, room)


@dataclass(frozen=True)
class Inputs:
    """The inputs of a job once Ray runs: a listed table (directories, single images), or the
    rows of a list file as a Ray Dataset (`list_file.read_inputs`); `count` of either."""

    count: int
    table: pa.Table | None = None
    rows: Callable[[float], ray.data.Dataset] | None = None  # the list file's rows, tasks of that many CPUs
    videos: pa.Table | None = None  # a list file's videos, for the videos' pipeline (a table's are split off)

    @classmethod
    def of(cls, found: pa.Table | ListFile) -> Inputs:
        if isinstance(found, pa.Table):
            return cls(found.num_rows, table=found)
        from pipeline.data.list_file import read_inputs

        return read_inputs(found)

    def blocks(self, batch_size: int) -> int:
        """How many blocks `dataset` makes: the most model calls a job over them runs at once."""
        from pipeline.data.cluster import block_rows

        return math.ceil(self.count / block_rows(self.count, batch_size))

    def dataset(self, batch_size: int, num_cpus: float = 1.0) -> ray.data.Dataset:
        """The inputs as the job's first Dataset, in blocks of `cluster.block_rows`; a list
        file's naming tasks take `num_cpus` each."""
        import ray

        from pipeline.data.cluster import block_rows, input_blocks

        if self.table is not None:
            return ray.data.from_arrow(input_blocks(self.table, batch_size))
        # Made before the model actors start (in tasks, into the object store): some of Ray's
        # read and repartition operators ask a whole CPU, which CPU model actors leave no node.
        rows = block_rows(self.count, batch_size)
        return self.rows(num_cpus).repartition(target_num_rows_per_block=rows).materialize()


def list_inputs(
    source: str,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    root: str | None = None,
    exclude: str | None = None,
    room: Room | None = None,
) -> pa.Table:
    """A table of (input_uri, rel_path, key, size, mtime_ns): every image to process, its path
    below the input prefix, its output name without extension (see `output_stems`: distinct
    for distinct inputs), and what incremental runs compare (null for entries of list files,
    which are not listed).

    `source` is a directory/prefix (listed recursively, extensions matched case-insensitively),
    a single image, or a list file (.parquet, .csv, .txt) of URIs (each URI once). rel_path is
    relative to `root` when given, else to the listed prefix, else the path inside its bucket.
    Anything under the prefix `exclude` (a job's output, inside its input) is left out. Output
    names fit `room` where given (`keys.output_room`).
    """
    extensions = tuple(e.lower() for e in extensions)
    if is_dir(source):
        stats = stat_table(source, extensions, skip=exclude)
        if root is not None:
            stats = stats.set_column(1, "rel", per_row(lambda u: relative_to(u, root), stats.column("uri")))
    elif source.lower().endswith(LIST_FILE_EXTENSIONS):
        uris = per_row(lambda u: entry_uri(u, source), _uris_from_list_file(source))
        stats = _unlisted(uris, per_row(lambda u: relative_to(u, root or ""), uris))
    elif exists(source):
        rel = relative_to(source, root or posixpath.dirname(source))
        stats = _unlisted(pa.chunked_array([[source]], pa.string()), pa.chunked_array([[rel]], pa.string()))
    else:
        raise storage_error(FileNotFoundError(source), source)  # says so if the bucket is missing
    stats = first_of_each(stats)
    if exclude is not None:
        inside = pc.starts_with(stats.column("uri"), exclude.rstrip("/") + "/")
        if pc.any(inside).as_py():
            log.warning("%s: left out %s under the output %s", source, counted(pc.sum(inside).as_py(), "file"), exclude)
            stats = stats.filter(pc.invert(inside))
    if not stats.num_rows:
        raise ConfigError(f"{source}: no input images (extensions {', '.join(extensions)})")
    rels = per_row(safe_relpath, stats.column("rel"))
    return pa.table(
        {
            "input_uri": stats.column("uri"),
            "rel_path": rels,
            "key": output_stems(rels, stats.column("uri"), room=room),
            "size": stats.column("size"),
            "mtime_ns": stats.column("mtime_ns"),
        }
    )


_VIDEO_NAME = "(" + "|".join(re.escape(e) for e in VIDEO_EXTENSIONS) + ")$"  # as `codec.is_video` tells them


def names_video(uris: pa.ChunkedArray | pa.Array) -> pa.BooleanArray | pa.ChunkedArray:
    """Which of `uris` name videos (by extension), in Arrow: no Python string per input."""
    return pc.match_substring_regex(pc.utf8_lower(uris), _VIDEO_NAME)


def split_videos(inputs: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The listing's images and its videos."""
    videos = names_video(inputs.column("input_uri"))
    return inputs.filter(pc.invert(videos)), inputs.filter(videos)


_CHUNK_ROWS = 65_536  # rows turned into Python strings at a time


def per_row(fn: Callable[[str], str], column: pa.ChunkedArray) -> pa.ChunkedArray:
    """`fn` of each string of `column`, _CHUNK_ROWS at a time: never the whole column as Python strings."""
    chunks = (column.slice(i, _CHUNK_ROWS).to_pylist() for i in range(0, len(column), _CHUNK_ROWS))
    return pa.chunked_array([pa.array([fn(v) for v in chunk], pa.string()) for chunk in chunks], pa.string())


def first_of_each(rows: pa.Table, column: str = "uri") -> pa.Table:
    """Each URI in `column` once (a list file may name one twice): its first row, in their order."""
    if pc.count_distinct(rows.column(column)).as_py() == rows.num_rows:
        return rows
    order = rows.append_column("row", pa.array(range(rows.num_rows), pa.int64()))
    first = order.group_by(column).aggregate([("row", "min")]).column("row_min")
    return rows.take(pc.take(first, pc.sort_indices(first)))


def _unlisted(uris: pa.ChunkedArray, rels: pa.ChunkedArray) -> pa.Table:
    """Inputs named rather than listed: no size or modification time to compare."""
    nulls = pa.nulls(len(uris), pa.int64())
    return pa.table({"uri": uris, "rel": rels, "size": nulls, "mtime_ns": nulls})


def style_ids(rels: list[str], uris: list[str]) -> list[str]:
    """Stable, unique ids for style images: the path below their prefix without extension,
    made one safe path segment (`slug`); ids that meet are told apart by a hash of the image's URI.
    Each is its own slug: no two share an output folder."""
    return unique_names([slug(posixpath.splitext(rel)[0]) for rel in rels], uris, room=STYLE_ROOM)


def is_bank(ref: str) -> bool:
    """Style references ending in .parquet are banks (style images are never Parquet)."""
    return ref.lower().endswith(".parquet")


def _there(ref: str) -> tuple[str, str]:
    if not exists(ref):
        raise ConfigError(f"--style {ref}: not found; give a style image, a folder or prefix of them, or a style bank")
    return ref, ref


def list_styles(refs: tuple[str, ...]) -> list[tuple[str, str]]:
    """Each --style (an image or a prefix of images) -> unique (style_id, uri) pairs."""
    pairs = [pair for ref in refs for pair in (list_files(ref, IMAGE_EXTENSIONS) if is_dir(ref) else [_there(ref)])]
    if not pairs:
        raise ConfigError(f"no style images in {', '.join(refs)}")
    pairs = list(dict(pairs).items())  # an image named twice is one style
    rels = [posixpath.basename(uri) if uri == rel else rel for uri, rel in pairs]
    uris = [uri for uri, _ in pairs]
    return list(zip(style_ids(rels, uris), uris, strict=True))
