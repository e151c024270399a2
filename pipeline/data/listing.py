"""What to process: content images listed from a prefix or read from a list file, and styles."""

from __future__ import annotations

import io
import itertools
import logging
import math
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import ConfigError, counted, describe
from pipeline.imaging.codec import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from pipeline.storage.keys import STYLE_ROOM, Room, output_stems, relative_to, safe_relpath, slug, unique_names
from pipeline.storage.listing import list_files, stat_table
from pipeline.storage.uri import exists, is_dir, open_input, read_bytes, resolve, retrying, storage_error

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

LIST_FILE_EXTENSIONS = (".parquet", ".csv", ".txt")


MAX_URI = 1 << 16  # characters: far past any path or key (S3 takes 1,024 bytes)


def _uris_from_list_file(uri: str) -> pa.ChunkedArray:
    """A Parquet/CSV file with a `uri` column (else its first column), or text with one URI a line."""
    data = read_bytes(uri)
    if uri.lower().endswith(".txt"):
        return _entries_of(pa.chunked_array([utf8_text(data, uri).splitlines()], pa.string()), uri)
    if not data.strip():
        uri_column([], uri)  # says there are no columns
    if uri.lower().endswith(".parquet"):
        parquet = _or_invalid(lambda: pq.ParquetFile(io.BytesIO(data)), uri)
        column = uri_column(parquet.schema_arrow.names, uri)
        check_uri_type(parquet.schema_arrow.field(column).type, uri, column)
        table = _or_invalid(lambda: parquet.read(columns=[column]), uri)  # as the jobs' tasks read it
        return _entries_of(table.column(column), uri)
    column = uri_column(_or_invalid(lambda: _csv_names(data[:_HEAD_BYTES]), uri), uri)
    for _ in _scan_lines(uri, [data]):  # a line not UTF-8 or too long, by its number
        pass
    return pa.chunked_array(list(_csv_entries(uri, column, data)), pa.string())  # parsed once, as the tasks parse it


def list_uris(column: pa.ChunkedArray | pa.Array, source: str) -> pa.ChunkedArray | pa.Array:
    """The entries of the list file `source` as its readers all take them: as strings, null and
    empty ones left out; in a text list (one URI a line) each line's surrounding whitespace
    trimmed and blank lines and '#' comments left out too. A CSV or Parquet entry is taken
    exactly: an S3 key may begin or end with a space. ConfigError: an entry that is not UTF-8 or
    holds a line break (a CSV quote not closed swallows the lines after it)."""
    try:
        uris = column.cast(pa.string())
    except pa.ArrowInvalid:  # binary entries, not UTF-8
        raise ConfigError(f"an entry is not UTF-8 text ({_first_non_utf8(column)!r}); save the list as UTF-8") from None
    text = source.lower().endswith(".txt")
    if text:
        uris = pc.utf8_trim_whitespace(pc.utf8_trim(uris, "\ufeff"))  # a byte-order mark, then the spaces after it
    skipped = pc.or_(pc.equal(uris, ""), pc.starts_with(uris, "#")) if text else pc.equal(uris, "")
    uris = uris.filter(pc.invert(pc.or_kleene(pc.is_null(uris), skipped)))
    line_break = _QUOTE_OPEN if source.lower().endswith(".csv") else _LINE_BREAK
    for test, fault in ((_holds_line_break, line_break), *_FAULTS):
        odd = test(uris)
        if pc.any(odd).as_py():
            entry = uris.filter(odd)[0].as_py()
            raise ConfigError(f"an entry ({entry[:80]!r}{'...' if len(entry) > 80 else ''}) {fault}")
    return uris


# What no URI holds, and what it means: each a ConfigError naming the first entry that does.
_QUOTE_OPEN = "holds a line break: a CSV quote left open; close it"
_LINE_BREAK = "holds a line break, which no URI holds; write the entry on one line"


def _holds_line_break(uris: Any) -> Any:
    return pc.match_substring_regex(uris, "[\r\n]")


_FAULTS: tuple[tuple[Callable[[Any], Any], str], ...] = (
    (lambda u: pc.match_substring(u, "\x00"), "holds a NUL byte (UTF-16 text?); save the list as UTF-8"),
    (lambda u: pc.greater(pc.utf8_length(u), MAX_URI), f"is longer than {MAX_URI >> 10} KiB; give one URI an entry"),
)


def _first_non_utf8(column: pa.ChunkedArray | pa.Array) -> bytes:
    for value in column.to_pylist():  # only on the failure's path
        try:
            value.decode("utf-8")
        except (UnicodeDecodeError, AttributeError):
            return value[:80]
    return b""


# The types a URI column may have: text, bytes holding UTF-8 (as some writers store strings), a
# dictionary of either, or nulls only (no entries).
_TEXT = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary, pa.types.is_null)
_TEXT += tuple(getattr(pa.types, name) for name in ("is_string_view", "is_binary_view") if hasattr(pa.types, name))


def check_uri_type(kind: pa.DataType, uri: str, column: str) -> None:
    """Refuse a URI column that does not hold text (a number, a list, a struct): its values are not URIs."""
    value = kind.value_type if pa.types.is_dictionary(kind) else kind
    if not any(test(value) for test in _TEXT):
        raise ConfigError(f"{uri}: its column {column!r} holds {kind}, not URIs; write the URIs as strings")


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
    """The list file's URI column, from its schema or its first lines alone: a missing or
    unreadable file, one with no columns or the wrong type of URI column, or a CSV whose first
    lines Arrow cannot read, fails here in seconds."""
    filesystem, path = resolve(uri)
    if uri.lower().endswith(".parquet"):
        retrying(lambda: _head(filesystem, path), uri)  # the storage's errors: missing, denied, unreachable
        schema = _or_invalid(lambda: pq.read_schema(path, filesystem=filesystem), uri)  # then the file's
        column = uri_column(schema.names, uri)
        check_uri_type(schema.field(column).type, uri, column)
        return ListFile(uri, column, root, exclude, room)
    head = retrying(lambda: _head(filesystem, path), uri)
    if uri.lower().endswith(".txt"):
        utf8_text(head, uri, partial=len(head) == _HEAD_BYTES)  # the rest is read by the tasks
        column = None
    else:
        column = uri_column(_or_invalid(lambda: _csv_names(head), uri) if head.strip() else [], uri)
    # The lines the head holds whole, read as the tasks will read them (the rest is theirs).
    scan_list_file(uri, column, head[: _last_line_end(head) + 1] if len(head) == _HEAD_BYTES else head)
    return ListFile(uri, column, root, exclude, room)


def _csv_names(head: bytes) -> list[str]:
    return pacsv.read_csv(io.BytesIO(_LINE_END.split(head, 1)[0] + b"\n")).column_names


def uri_column(names: list[str], uri: str) -> str:
    """A Parquet or CSV list file's column of URIs: `uri`, else the first. A CSV whose first line is
    an entry (it has no header) is refused: that entry would be taken for the column's name, unread."""
    if not names:
        raise ConfigError(f"{uri}: the list file has no columns; give a 'uri' column")
    column = "uri" if "uri" in names else names[0]
    if names.count(column) > 1:
        raise ConfigError(f"{uri}: {names.count(column)} columns are named {column!r}; name the URI column once")
    if column == "uri":
        return column
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
    except UnicodeDecodeError as exc:  # Arrow decodes column names only when they are asked for
        raise ConfigError(
            f"{uri}: its column names are not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save the list as UTF-8"
        ) from None
    except (pa.ArrowInvalid, OSError) as exc:
        # Metadata Arrow cannot decode is an OSError too ("Couldn't deserialize thrift"), once the file was read.
        if isinstance(exc, (FileNotFoundError, PermissionError)):
            raise
        raise ConfigError(f"{uri}: not a list file this can read ({describe(exc)})") from None


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


_CSV_BLOCK = 4 << 20  # bytes Arrow parses at a time: a CSV line must fit in one block
MAX_LINE = 1 << 20  # no URI is this long; a longer line is a file that is not a list
_SCAN_ROWS = 65_536  # a Parquet list's entries checked at a time


def csv_options(column: str) -> dict[str, Any]:
    """How every reader of a CSV list takes it: its URI column as text, never a number Arrow guessed."""
    return {
        "read_options": pacsv.ReadOptions(block_size=_CSV_BLOCK, use_threads=False),
        "convert_options": pacsv.ConvertOptions(column_types={column: pa.string()}),
    }


def scan_list_file(uri: str, column: str | None, data: bytes | None = None) -> None:
    """Read a list file as the tasks read it, a block at a time (or `data`, its bytes), and raise
    ConfigError naming the first thing they cannot take and where: a line that is not UTF-8 or is
    too long, a CSV row with another number of fields, a Parquet row group that cannot be read,
    an entry that is not text. The driver holds one block, however long the list."""
    if uri.lower().endswith(".parquet"):
        return _scan_parquet(uri, column or "uri")
    texts = _scan_lines(uri, _chunks(uri, data))
    if column is None:  # one pass: each chunk's lines checked as they are decoded
        for line, lines in _numbered(text.splitlines() for text in texts):  # as Ray's read_text splits them
            _entries_of(pa.array(lines, pa.string()), uri, f"lines {line + 1}-{line + len(lines)}")
        return
    for _ in texts:
        pass
    if data is not None and not data.strip():
        return  # no whole line in the head: the tasks read it
    for _ in _csv_entries(uri, column, data):
        pass


def _csv_entries(uri: str, column: str, data: bytes | None = None) -> Iterator[pa.Array]:
    """A CSV list's entries (`list_uris`), a block at a time, parsed as the tasks parse it (`csv_options`);
    ConfigError naming the first row Arrow cannot read, or the first entry no URI is."""
    try:
        with _opened(uri, data) as stream:
            for row, batch in _numbered(pacsv.open_csv(stream, **csv_options(column))):
                yield _entries_of(batch.column(column), uri, f"rows {row + 1}-{row + batch.num_rows}")
    except pa.ArrowInvalid as exc:
        reason = (str(exc).strip() or "not CSV").splitlines()[0]  # Arrow's: the row's number and text
        raise ConfigError(f"{uri}: the list file cannot be read: {reason}; fix that row") from None


def _scan_parquet(uri: str, column: str) -> None:
    with open_input(uri) as stream:
        parquet = _or_invalid(lambda: pq.ParquetFile(stream), uri)
        if column not in parquet.schema_arrow.names:
            return
        check_uri_type(parquet.schema_arrow.field(column).type, uri, column)
        for group in range(parquet.num_row_groups):
            batches = parquet.iter_batches(_SCAN_ROWS, row_groups=[group], columns=[column])  # as the tasks read it
            try:
                for batch in batches:  # a row group may hold the whole list: a batch of it at a time
                    _entries_of(batch.column(column), uri, f"row group {group}")
            except (pa.ArrowException, OSError) as exc:
                raise ConfigError(
                    f"{uri}: the list file cannot be read: row group {group} ({describe(exc)}); write the list again"
                ) from None


def _entries_of(values: pa.ChunkedArray, uri: str, where: str = "") -> pa.ChunkedArray:
    """`list_uris` of the list file `uri`'s `values`, which lie `where` in it."""
    try:
        return list_uris(values, uri)
    except ConfigError as exc:
        raise ConfigError(f"{uri}: the list file cannot be read: {where}{': ' if where else ''}{exc}") from None


def _numbered(batches: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    """Each batch of rows (or lines) with how many came before it."""
    row = 0
    for batch in batches:
        yield row, batch
        row += len(batch)


_LINE_END = re.compile(rb"\r\n|\r|\n")  # as Arrow's CSV reader and Python's splitlines end lines


def _last_line_end(data: bytes) -> int:
    """Where the last line end in `data` lies (-1: none); a '\r' at its end is not
    one yet, as a '\n' may follow it."""
    return max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1))


def _scan_lines(uri: str, chunks: Iterable[bytes]) -> Iterator[str]:
    """Each chunk's whole lines, decoded; ConfigError at the first line that is not UTF-8 or is
    longer than MAX_LINE, by its number. A line ends at '\n', '\r\n' or a lone '\r' (old Mac text)."""
    line, carry = 1, b""
    for chunk in itertools.chain(chunks, [None]):  # None: the end, where the last line needs no end
        data = carry + (chunk or b"")
        cut = len(data) if chunk is None else _last_line_end(data) + 1
        whole, carry = data[:cut], data[cut:]
        try:
            text = whole.decode("utf-8")  # whole lines: a character cut short is one the file cuts
        except UnicodeDecodeError as exc:
            at = line + len(_LINE_END.findall(whole, 0, exc.start))
            raise ConfigError(
                f"{uri}: the list file cannot be read: not UTF-8 text (byte 0x{whole[exc.start]:02x} on line {at}); "
                "save the list as UTF-8"
            ) from None
        start = 0
        for end in _LINE_END.finditer(whole):
            if end.start() - start > MAX_LINE:
                break
            line, start = line + 1, end.end()
        else:
            if len(data.removesuffix(b"\r")) - start <= MAX_LINE:  # the line not ended yet, so far
                yield text
                continue
        raise ConfigError(
            f"{uri}: the list file cannot be read: line {line} is longer than {MAX_LINE >> 20} MiB; "
            "a list holds one URI a line"
        )


def _chunks(uri: str, data: bytes | None) -> Iterator[bytes]:
    if data is not None:
        yield data
        return
    with _opened(uri, None) as stream:
        while chunk := stream.read(_CSV_BLOCK):
            yield chunk


def _opened(uri: str, data: bytes | None) -> Any:
    if data is not None:
        return pa.BufferReader(data)
    filesystem, path = resolve(uri)
    return retrying(lambda: filesystem.open_input_stream(path), uri)


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
