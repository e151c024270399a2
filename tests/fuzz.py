"""A corpus of mutated image files: valid JPEG, PNG, TIFF, WebP, GIF and BMP files with bits
flipped, cut short, their headers and tags rewritten. Deterministic for a seed."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from tests import images

FORMATS = {"jpg": "JPEG", "png": "PNG", "tif": "TIFF", "webp": "WEBP", "gif": "GIF", "bmp": "BMP"}
# TIFF field types: a tag whose type is rewritten to another makes Pillow read odd values.
_TIFF_TYPES = (2, 5, 7, 10, 11, 12, 16, 1, 0, 99)


def _valid(ext: str, rng: np.random.Generator) -> bytes:
    width, height = (int(v) for v in rng.integers(24, 56, size=2))
    img = Image.fromarray(images.gradient(width, height, int(rng.integers(1 << 30))), "RGB")
    buffer = io.BytesIO()
    img.save(buffer, FORMATS[ext])
    return buffer.getvalue()


def _flip_bits(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(len(out)))
        out[i] ^= 1 << int(rng.integers(8))
    return bytes(out)


def _truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


def _header(data: bytes, rng: np.random.Generator) -> bytes:
    """Random bytes over the first 64: magic numbers, sizes, chunk lengths."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        i = int(rng.integers(min(64, len(out))))
        out[i] = int(rng.integers(256))
    return bytes(out)


def _sizes(data: bytes, ext: str, rng: np.random.Generator) -> bytes:
    """The image's stated width and height rewritten: zero, huge, a 1-pixel-high strip."""
    width, height = [(0, 0), (1, 60000), (60000, 1), (65535, 65535), (1, 1)][int(rng.integers(5))]
    out = bytearray(data)
    if ext == "png" and len(out) >= 24:
        out[16:24] = struct.pack(">II", width, height)
    elif ext == "bmp" and len(out) >= 26:
        out[18:26] = struct.pack("<ii", width, height)
    elif ext == "gif" and len(out) >= 10:
        out[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    elif ext == "jpg":
        sof = out.find(b"\xff\xc0")
        if sof >= 0 and len(out) > sof + 9:
            out[sof + 5 : sof + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
    else:
        return _header(data, rng)
    return bytes(out)


def _tiff_tags(data: bytes, rng: np.random.Generator) -> bytes:
    """Tags of the first IFD given other types and counts (the TypeError of odd tag types)."""
    out = bytearray(data)
    if out[:2] not in (b"II", b"MM") or len(out) < 8:
        return _header(data, rng)
    order = "<" if out[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", out[4:8])
    if ifd + 2 > len(out):
        return _header(data, rng)
    (count,) = struct.unpack(order + "H", out[ifd : ifd + 2])
    entries = [ifd + 2 + 12 * i for i in range(count) if ifd + 14 + 12 * i <= len(out)]
    # The strip offsets given another type: Pillow's TypeError; other tags: odd sizes and counts.
    strips = [e for e in entries if struct.unpack(order + "H", out[e : e + 2])[0] in (273, 279)]
    for _ in range(int(rng.integers(1, 4))):
        if not entries:
            break
        pool = strips if strips and rng.random() < 0.5 else entries
        entry = pool[int(rng.integers(len(pool)))]
        if rng.random() < 0.7:
            out[entry + 2 : entry + 4] = struct.pack(order + "H", _TIFF_TYPES[int(rng.integers(len(_TIFF_TYPES)))])
        else:
            out[entry + 4 : entry + 8] = struct.pack(order + "I", int(rng.integers(0, 1 << 31)))
    return bytes(out)


def corpus(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """`count` (file name, bytes) pairs: mutations of valid files, formats in turn."""
    rng = np.random.default_rng(seed)
    files = []
    for n in range(count):
        ext = list(FORMATS)[n % len(FORMATS)]
        data = _valid(ext, rng)
        kind = int(rng.integers(5))
        if kind == 0:
            mutated = _flip_bits(data, rng)
        elif kind == 1:
            mutated = _truncate(data, rng)
        elif kind == 2:
            mutated = _header(data, rng)
        elif kind == 3:
            mutated = _sizes(data, ext, rng)
        else:
            mutated = _tiff_tags(data, rng) if ext == "tif" else _flip_bits(_truncate(data, rng) or data, rng)
        if ext == "tif" and kind in (2, 3):  # TIFFs get their tags rewritten more often: Pillow's odd corner
            mutated = _tiff_tags(mutated, rng)
        files.append((f"fuzz{n:04d}.{ext}", mutated))
    return files


def write_corpus(folder: Path, count: int, good: int, seed: int = 0) -> list[str]:
    """The corpus and `good` valid images written into `folder`; returns the file names."""
    rng = np.random.default_rng(seed + 1)
    names = []
    for name, data in corpus(count, seed):
        images.write(folder / name, data)
        names.append(name)
    for n in range(good):
        ext = list(FORMATS)[n % len(FORMATS)]
        images.write(folder / f"good{n:03d}.{ext}", _valid(ext, rng))
        names.append(f"good{n:03d}.{ext}")
    return names


# List files: valid text, CSV and Parquet lists mutated as files are damaged and hand-edited.
LIST_ENTRIES = ["a.jpg", "d/b.png", "/abs/c.jpg", "s3://bkt/e.jpg", "caf\u00e9.jpg", "x y.png", "v.mp4"]


def _valid_list(ext: str, rng: np.random.Generator) -> bytes:
    # A third of the text and CSV lists run past the 64 KiB the driver reads first: their faults are the tasks'.
    size = 6000 if ext != "parquet" and rng.random() < 0.35 else int(rng.integers(1, 12))
    entries = [LIST_ENTRIES[int(i)] for i in rng.integers(len(LIST_ENTRIES), size=size)]
    if ext == "txt":
        return ("# inputs\n" + "\n".join(entries) + "\n").encode()
    if ext == "csv":
        return ("n,uri\n" + "".join(f"{i},{e}\n" for i, e in enumerate(entries))).encode()
    return _parquet_list(entries, rng)


def _parquet_list(entries: list[str], rng: np.random.Generator) -> bytes:
    """A Parquet list whose URI column is of a type drawn at random, beside others, in row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kinds = [
        lambda: pa.array(entries, pa.string()),
        lambda: pa.array(entries, pa.large_string()),
        lambda: pa.array(entries).dictionary_encode(),
        lambda: pa.array([e.encode() for e in entries], pa.binary()),
        lambda: pa.array([b"\xff" + e.encode() for e in entries], pa.binary()),
        lambda: pa.array([[e] for e in entries]),
        lambda: pa.array([{"u": e} for e in entries]),
        lambda: pa.array(range(len(entries)), pa.int64()),
        lambda: pa.nulls(len(entries)),
        lambda: pa.array([e if i % 2 else None for i, e in enumerate(entries)], pa.string()),
        lambda: pa.array(["", "  ", *entries][: len(entries)], pa.string()),
        lambda: pa.array([f" {e}\u00a0" for e in entries], pa.string()),  # keys that begin or end with a space
        lambda: pa.array([*entries[:-1], "a.jpg\nb.jpg"], pa.string()),  # an entry holding a line break
    ]
    uri = kinds[int(rng.integers(len(kinds)))]()
    columns = [("n", pa.array(range(len(entries)), pa.int64())), ("uri", uri)]
    if rng.random() < 0.3:
        columns.reverse()
    if rng.random() < 0.15:
        columns.append(("uri", uri))  # the column named twice
    if rng.random() < 0.2:
        columns = [(name if name != "uri" else "path", values) for name, values in columns]  # no 'uri': the first
    table = pa.Table.from_arrays([values for _, values in columns], names=[name for name, _ in columns])
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=int(rng.integers(1, 8)))
    return buffer.getvalue()


def _lines(data: bytes, rng: np.random.Generator) -> bytes:
    """Lines duplicated, dropped or swapped."""
    lines = data.split(b"\n")
    for _ in range(int(rng.integers(1, 4))):
        i, j = (int(v) for v in rng.integers(len(lines), size=2))
        kind = int(rng.integers(3))
        if kind == 0:
            lines.insert(i, lines[j])
        elif kind == 1 and len(lines) > 1:
            del lines[i]
        else:
            lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def _inserted(data: bytes, rng: np.random.Generator) -> bytes:
    """Bytes a hand edit or a wrong encoding leaves: quotes, commas, NULs, Latin-1, a BOM, blanks, a huge line."""
    pieces = [b'"', b'"', b",", b",,", b"\x00", b"\xe9", b"\xef\xbb\xbf", b"\n   \n", b'\n""\n', b"\r"]
    pieces.append(b"\n" + b"x" * (2 << 20))
    piece = pieces[int(rng.integers(len(pieces)))]
    at = 0 if piece == b"\xef\xbb\xbf" else int(rng.integers(len(data) + 1))
    return data[:at] + piece + data[at:]


def _columns_reordered(data: bytes, rng: np.random.Generator) -> bytes:
    """A CSV's fields swapped on every line, or on some only (a ragged edit)."""
    lines = data.split(b"\n")
    every = rng.random() < 0.5
    return b"\n".join(
        b",".join(reversed(line.split(b","))) if every or rng.random() < 0.3 else line for line in lines
    )


def _line_ends(data: bytes, rng: np.random.Generator) -> bytes:
    """Lines ended as other systems end them: '\r' alone (old Mac, Excel's export) or '\r\n'."""
    return data.replace(b"\n", b"\r" if rng.random() < 0.5 else b"\r\n")


def list_corpus(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """`count` (file name, bytes) pairs: text, CSV and Parquet lists, valid and mutated, in turn."""
    rng = np.random.default_rng(seed)
    files = []
    for n in range(count):
        ext = ("txt", "csv", "parquet")[n % 3]
        data = _valid_list(ext, rng)
        kind = int(rng.integers(8))
        if len(data) > 1 << 16 and rng.random() < 0.5:  # a long list: mostly a fault put in past its head
            kind = 3
        if kind == 0:
            data = _flip_bits(data, rng)
        elif kind == 1:
            data = _truncate(data, rng)
        elif kind == 2 and ext != "parquet":
            data = _lines(data, rng)
        elif kind == 3:
            data = _inserted(data, rng)
        elif kind == 4 and ext == "csv":
            data = _columns_reordered(data, rng)
        elif kind == 6 and ext != "parquet":
            data = _line_ends(data, rng)
        elif kind == 7 and ext != "parquet":
            data += "caf\u00e9".encode()[:-1]  # cut inside its last character
        files.append((f"list{n:04d}.{ext}", data))  # kind 5 (and the rest): left valid
    return files
