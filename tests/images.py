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


def huge_header_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG file whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body
