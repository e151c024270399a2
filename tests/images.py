"""Real encoded test images: every Pillow mode, EXIF rotation, and broken files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An (H, W, 3) uint8 image with structure (gradients plus noise), not flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), (x + y) / max(width + height - 2, 1)], -1)
    return np.clip(base * 200 + rng.integers(0, 55, (height, width, 3)), 0, 255).astype(np.uint8)


def encoded(width: int = 64, height: int = 48, fmt: str = "JPEG", mode: str = "RGB", seed: int = 0) -> bytes:
    """An image of `mode` in `fmt`, as bytes."""
    img = Image.fromarray(gradient(width, height, seed), "RGB")
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)  # uint16 -> I;16
    elif mode != "RGB":
        img = img.convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def exif_rotated_jpeg(width: int = 64, height: int = 48) -> bytes:
    """A JPEG stored width x height whose EXIF orientation (6: rotate 90 CW) makes it upright
    height x width."""
    img = Image.fromarray(gradient(width, height), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    data = encoded(64, 64, "JPEG")
    return data[: len(data) // 2]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png(width: int, height: int, idat: bytes, color_type: int = 2) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def huge_header_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG file whose header claims width x height pixels (a decompression bomb)."""
    return _png(width, height, zlib.compress(b"\0" * 16))


def zeros_png(width: int, height: int) -> bytes:
    """A real width x height RGBA PNG of zeros: about 1000 times smaller than its pixels."""
    return _png(width, height, zlib.compress(b"\0" * ((1 + 4 * width) * height), 9), color_type=6)


def in_ico(png: bytes) -> bytes:
    """An ICO file holding `png` as its one image, its directory claiming 16 x 16."""
    return struct.pack("<HHHBBBBHHII", 0, 1, 1, 16, 16, 0, 0, 1, 32, len(png), 22) + png


def in_icns(png: bytes) -> bytes:
    """An ICNS file holding `png` as its 128 x 128 ('ic07') image."""
    entry = b"ic07" + struct.pack(">I", 8 + len(png)) + png
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(start, end, marker) of a JPEG's marker segments up to its EOI, a scan's with its entropy-coded data."""
    segments, at = [], 2
    while data[at + 1] != 0xD9:
        marker, end = data[at + 1], at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if marker == 0xDA:  # to the next marker: FF 00 is an escaped 0xFF, FF D0-D7 a restart
            while data[end] != 0xFF or data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                end += 1
        segments.append((at, end, marker))
        at = end
    return segments


def scan_bomb_jpeg(width: int = 64, height: int = 48, copies: int = 300) -> bytes:
    """A progressive RGB JPEG whose last first-pass AC scan (with the Huffman table before it) is there
    `copies` times: a few dozen bytes each, each a pass over the whole image for libjpeg."""
    buffer = io.BytesIO()
    Image.fromarray(gradient(width, height)).save(buffer, "JPEG", progressive=True, optimize=True)
    data = buffer.getvalue()
    segments = _jpeg_segments(data)
    for k, (start, end, marker) in enumerate(segments):
        header = start + 5 + 2 * data[start + 4]  # Ss, Se, Ah|Al after the scan's component list
        if marker == 0xDA and data[header] > 0 and data[header + 2] >> 4 == 0:
            chosen = (segments[k - 1][0] if segments[k - 1][2] == 0xC4 else start, end)
    scan = data[chosen[0] : chosen[1]]
    return data[:-2] + scan * copies + data[-2:]


def with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """`jpeg` with an APP1 segment holding `payload` (as EXIF holds a thumbnail) after its SOI."""
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]
