"""A contact sheet of content | output pairs, for people who would rather look than read."""

from __future__ import annotations

from PIL import Image

from pipeline.imaging.codec import decode, encode, format_of
from pipeline.storage.uri import read_bytes, write_bytes

THUMB = 192


def _thumb(uri: str, max_pixels: int) -> Image.Image:
    img = decode(read_bytes(uri), max_pixels)
    img.thumbnail((THUMB, THUMB))
    return img


def write_preview(pairs: list[tuple[str, str]], dest: str, max_pixels: int) -> None:
    """A grid with one row per sample: the content image, then its stylized output."""
    sheet = Image.new("RGB", (2 * THUMB, len(pairs) * THUMB), "white")
    for row, pair in enumerate(pairs):
        for col, uri in enumerate(pair):
            img = _thumb(uri, max_pixels)
            sheet.paste(img, (col * THUMB + (THUMB - img.width) // 2, row * THUMB + (THUMB - img.height) // 2))
    write_bytes(dest, encode(sheet, format_of(dest)))
