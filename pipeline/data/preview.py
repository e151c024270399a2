"""A contact sheet of content | style | output, labelled, for people who would rather look than read."""

from __future__ import annotations

import posixpath

from PIL import Image, ImageDraw, ImageFont

from pipeline.imaging.codec import decode, encode, format_of, max_file_bytes
from pipeline.storage.uri import read_bytes, write_bytes

THUMB = 192
LABEL = 18  # px of caption under each picture


def thumbnail(uri: str, max_pixels: int, side: int = THUMB) -> Image.Image | None:
    """A small copy of the image at `uri`; None if it cannot be read (a preview never fails a run)."""
    try:
        img = decode(read_bytes(uri, max_file_bytes(max_pixels)), max_pixels)
    except Exception:
        return None
    img.thumbnail((side, side))
    return img


def sample_columns(sample: tuple[str, str, str], sources: dict[str, list[str]]) -> list[tuple[str | None, str]]:
    """(uri, caption) of each picture of a sample (input_uri, style, output_uri): content, style, output."""
    content, style, output = sample
    style_images = sources.get(style, [])
    return [
        (content, posixpath.basename(content)),
        (style_images[0] if len(style_images) == 1 else None, style),
        (output, "output"),
    ]


def write_preview(
    samples: list[tuple[str, str, str]], sources: dict[str, list[str]], dest: str, max_pixels: int
) -> None:
    """A grid with one row per sample: the content image, the style image, the output, each captioned."""
    font = ImageFont.load_default()
    cell = THUMB + LABEL
    sheet = Image.new("RGB", (3 * THUMB, len(samples) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for row, sample in enumerate(samples):
        for col, (uri, caption) in enumerate(sample_columns(sample, sources)):
            left, top = col * THUMB, row * cell
            img = thumbnail(uri, max_pixels) if uri else None
            if img is not None:
                sheet.paste(img, (left + (THUMB - img.width) // 2, top + (THUMB - img.height) // 2))
            draw.text((left + 4, top + THUMB + 2), _fit(draw, caption, font, THUMB - 8), fill="black", font=font)
    write_bytes(dest, encode(sheet, format_of(dest)))


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """The caption, cut with an ellipsis to fit under a picture."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
