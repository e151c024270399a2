"""Objects as files, for what is too large for `uri.read_bytes`/`write_bytes` (videos): a seekable
reader that fetches a block at a time, and streamed copies to and from local files. Same URIs,
retries and all-or-nothing writes as `storage.uri`."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator

import pyarrow.fs as pafs

from pipeline.storage.uri import (
    FILE_MODE,
    SINGLE_PUT_BYTES,
    open_input,
    regular_file_size,
    resolve,
    retrying,
    write_bytes,
)

# Reads of a seekable object go to the store a block at a time: PyAV's reads of a few KiB each
# would otherwise be one ranged GET each.
READ_BLOCK_BYTES = 4 * 1024 * 1024


@contextlib.contextmanager
def open_seekable(uri: str, block: int = READ_BLOCK_BYTES) -> Iterator[io.BufferedReader]:
    """A read-only, seekable file over an object or file, read `block` bytes at a time (ranged GETs
    on S3): a video is read as its demuxer seeks, never whole into memory."""
    with io.BufferedReader(open_input(uri), block) as reader:
        yield reader


def download_file(uri: str, dest: str) -> None:
    """Copy an object or file to the local path `dest`, streamed."""
    filesystem, path = resolve(uri)

    def copy() -> None:
        with filesystem.open_input_stream(path) as stream, open(dest, "wb") as out:
            shutil.copyfileobj(stream, out, READ_BLOCK_BYTES)

    retrying(copy, uri)


def upload_file(local: str, uri: str) -> None:
    """Write the local file `local` to `uri`, all or nothing as `write_bytes` writes, streamed: locally a
    copy beside the target, then a rename; on S3 one PUT up to SINGLE_PUT_BYTES, else a multipart upload
    (the object appears only when it completes)."""
    if os.path.getsize(local) <= SINGLE_PUT_BYTES:
        with open(local, "rb") as handle:
            write_bytes(uri, handle.read())
        return
    filesystem, path = resolve(uri)

    def write() -> None:
        if not isinstance(filesystem, pafs.LocalFileSystem):
            with open(local, "rb") as handle, filesystem.open_output_stream(path) as stream:
                shutil.copyfileobj(handle, stream, READ_BLOCK_BYTES)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(local, tmp)
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    retrying(write, uri)


@contextlib.contextmanager
def readable_source(uri: str) -> Iterator[str | io.BufferedReader]:
    """What a reader like PyAV opens for `uri`: a local file's path (it reads the file itself), else
    `open_seekable`."""
    filesystem, path = resolve(uri)
    if isinstance(filesystem, pafs.LocalFileSystem):
        regular_file_size(uri)  # a FIFO would hang the reader that opens it
        yield path
        return
    with open_seekable(uri) as reader:
        yield reader
