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
