"""What to process: content images listed from a prefix or read from a list file, and styles."""

from __future__ import annotations

import hashlib
import io
import posixpath

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.errors import ConfigError
from pipeline.imaging.codec import IMAGE_EXTENSIONS
from pipeline.storage.keys import output_stems, relative_to, safe_relpath, slug
from pipeline.storage.uri import exists, is_dir, list_files, read_bytes, storage_error

LIST_FILE_EXTENSIONS = (".parquet", ".csv", ".txt")


def _uris_from_list_file(uri: str) -> list[str]:
    """A Parquet/CSV file with a `uri` column (else its first column), or text with one URI a line."""
    data = read_bytes(uri)
    if uri.lower().endswith(".txt"):
        return [line.strip() for line in data.decode().splitlines() if line.strip() and not line.startswith("#")]
    table = pq.read_table(io.BytesIO(data)) if uri.lower().endswith(".parquet") else pacsv.read_csv(io.BytesIO(data))
    if table.num_columns == 0:
        raise ConfigError(f"{uri}: the list file has no columns; give a 'uri' column")
    column = table.column("uri") if "uri" in table.column_names else table.column(0)
    return [str(u) for u in column.to_pylist() if u]


def _absolute(uri: str, list_file: str) -> str:
    """Relative entries in a list file are relative to the list file's folder."""
    if "://" in uri or uri.startswith("/"):
        return uri
    base = list_file.rsplit("/", 1)[0] if "/" in list_file else "."
    return f"{base}/{uri}"


def list_inputs(source: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS, root: str | None = None) -> pa.Table:
    """A table of (input_uri, rel_path, key): every image to process, its path below the
    input prefix, and its output name without extension (see `output_stems`).

    `source` is a directory/prefix (listed recursively, extensions matched case-insensitively),
    a single image, or a list file (.parquet, .csv, .txt) of URIs. rel_path is relative to
    `root` when given, else to the listed prefix, else the path inside its bucket.
    """
    extensions = tuple(e.lower() for e in extensions)
    if is_dir(source) and root is None:
        pairs = list_files(source, extensions)
    else:
        if is_dir(source):
            uris = [u for u, _ in list_files(source, extensions)]
        elif source.lower().endswith(LIST_FILE_EXTENSIONS):
            uris = [_absolute(u, source) for u in _uris_from_list_file(source)]
        elif exists(source):
            uris = [source]
            root = root or posixpath.dirname(source)
        else:
            raise storage_error(FileNotFoundError(source), source)  # says so if the bucket is missing
        pairs = [(u, relative_to(u, root or "")) for u in uris]
    if not pairs:
        raise ConfigError(f"{source}: no input images (extensions {', '.join(extensions)})")
    uris, rels = zip(*pairs, strict=True)
    rels = [safe_relpath(rel) for rel in rels]
    return pa.table({"input_uri": list(uris), "rel_path": rels, "key": output_stems(rels)})


def list_styles(refs: tuple[str, ...]) -> list[tuple[str, str]]:
    """Each --style (an image or a prefix of images) -> unique (style_id, uri) pairs.

    The style id is the file's stem, made safe as a path segment; clashes get a short
    hash of the URI so that ids stay stable from run to run.
    """
    uris = [u for ref in refs for u in ([u for u, _ in list_files(ref, IMAGE_EXTENSIONS)] if is_dir(ref) else [ref])]
    if not uris:
        raise ConfigError(f"no style images in {', '.join(refs)}")
    stems = [slug(posixpath.splitext(posixpath.basename(u))[0]) for u in uris]
    return [
        (stem if stems.count(stem) == 1 else f"{stem}-{hashlib.sha256(u.encode()).hexdigest()[:6]}", u)
        for stem, u in zip(stems, uris, strict=True)
    ]
