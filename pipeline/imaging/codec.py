"""Image decoding, resizing and encoding: bytes in, RGB images out, and back.

Decoding is defensive: every failure an input file can cause (empty, truncated, not an
image, a header claiming billions of pixels) becomes an `ImageError` with a one-line
reason, and every odd-but-valid image (EXIF-rotated, grayscale, palette, alpha, CMYK,
16-bit) becomes plain 8-bit RGB. Resizing matches torchvision's `Resize` and `CenterCrop`
on PIL images, as the reference test scripts use. No torch here: the decoding and writing
workers import this module, and start in a fraction of a second without it.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import ConfigError, ImageError, describe

# Pillow's own default limit (about 89 MP). We check it ourselves, before decoding, so
# the limit is a flag (--max-pixels) and the message says what to do.
MAX_PIXELS = 89_478_485
Image.MAX_IMAGE_PIXELS = None  # Pillow's check is one limit for the whole process, not one per call

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# The Pillow formats of IMAGE_EXTENSIONS, the only ones `decode` opens, whatever a file is named: others
# (ICO, ICNS) decode an embedded image of any size inside Image.open or load, before the size check.
PILLOW_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
# Videos (imaging/video.py); here so that listings and flags need not import PyAV.
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
VIDEO_QUALITY = 20  # x264 CRF: 0 lossless, 51 worst; 17-23 look like the source
SEGMENT_SECONDS = 10.0  # videos are cut into keyframe-aligned segments of about this length

FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}

# Each scan of a JPEG is a pass over the whole image: libjpeg's progressive files have 10 (6 in grayscale);
# 256 is nvImageCodec's default limit, after cure53's audit of libjpeg-turbo (a pass at 89 MP takes ~8 ms).
MAX_JPEG_SCANS = 256
# The next marker: entropy-coded data escapes each 0xFF byte as FF 00 and holds restart markers (FF D0-D7).
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def is_video(path: str) -> bool:
    """A video by its name's extension (imaging/video.py reads them)."""
    return path.lower().endswith(VIDEO_EXTENSIONS)


def max_file_bytes(max_pixels: int) -> int:
    """The most bytes an image file may have: what `max_pixels` take uncompressed at 16 bits per channel
    with alpha (8 bytes a pixel, TIFF's widest), and never under 1 GiB; a larger one is not an image
    worth reading whole into memory (a sparse file, /dev/zero under an image's name)."""
    return max(2**30, 8 * max_pixels)


def decode(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Encoded bytes -> an upright 8-bit RGB image, or ImageError saying why not.

    Whatever a crafted or damaged file makes Pillow raise (odd TIFF tag types, a MemoryError)
    ends here as an ImageError: one bad file is one error, never a crash."""
    return loaded(opened(data, max_pixels))


def loaded(img: Image.Image) -> Image.Image:
    """An `opened` image decoded: upright 8-bit RGB, or ImageError (the file is cut short or damaged)."""
    try:
        with warnings.catch_warnings():  # Pillow warns about some truncated files; we raise instead
            warnings.simplefilter("ignore")
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except Exception as exc:
        raise ImageError(f"corrupt or truncated {img.format or 'image'} ({describe(exc)})") from None


def opened(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """`decode`'s checks of the header alone (a format it opens, within `max_pixels`, JPEG scans), in a
    fraction of a millisecond: the image, its pixels not yet decoded, or ImageError."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)  # reads the header only
    except UnidentifiedImageError:
        raise ImageError("not an image, or not a JPEG, PNG, WebP, BMP, TIFF or GIF") from None
    except Exception as exc:
        raise ImageError(f"unreadable image header ({describe(exc)})") from None
    width, height = img.size
    check_pixels(width, height, max_pixels)
    if img.format in ("JPEG", "MPO"):
        check_scans(data)
    return img


def check_pixels(width: int, height: int, max_pixels: int, after: str = "") -> None:
    """Refuse an image of more than `max_pixels` pixels, before any memory is spent on it."""
    if width <= 0 or height <= 0:
        raise ImageError(f"{width}x{height}: an image needs at least one pixel")
    if width * height <= max_pixels:
        return
    if after:
        raise ImageError(
            f"{after} would make it {width}x{height}, {width * height:,} pixels, over the limit of {max_pixels:,}; "
            "lower --content-size/--style-size, or set --max-side"
        )
    raise ImageError(
        f"{width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,} "
        "(a decompression bomb?); raise --max-pixels if the file is trusted"
    )


def check_scans(data: bytes, most: int = MAX_JPEG_SCANS) -> None:
    """Refuse a JPEG of more than `most` scans (SOS markers) before it is decoded. Marker segments are
    skipped by their lengths, so an EXIF thumbnail's scans (in APP1) are not counted; the count stops at
    the first image's end (an MPO's others are not decoded)."""
    scans, at = 0, 2
    while (found := _NEXT_MARKER.search(data, at)) is not None:
        at, marker = found.start(), data[found.start() + 1]
        if marker == 0xD9:  # EOI
            return
        if marker == 0x01:  # TEM: a marker without a length
            at += 2
            continue
        scans += marker == 0xDA
        if scans > most:
            raise ImageError(
                f"a JPEG of more than {most} scans, each a pass over the whole image (a decompression bomb?); "
                "re-encode it if the file is trusted"
            )
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")


def plain_jpeg_size(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, int] | None:
    """(W, H) of a JPEG that any JPEG decoder (nvJPEG, torchvision's) turns into the image `decode`
    makes: complete (ends in its EOI marker), three-channel, upright (no EXIF rotation), within
    `max_pixels` and `check_scans`. None for anything else, which then goes through `decode`, made for
    every case. Reads the markers only."""
    if not data.startswith(b"\xff\xd8") or not data.endswith(b"\xff\xd9"):
        return None
    try:
        img = Image.open(io.BytesIO(data), formats=("JPEG",))
        upright = img.getexif().get(0x0112, 1) == 1
        check_scans(data)
    except Exception:  # anything odd takes the Pillow path, which says what is wrong with it
        return None
    if img.format != "JPEG" or img.mode != "RGB" or not upright or img.width * img.height > max_pixels:
        return None
    return img.size


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; high-bit-depth scaled to 8 bits, transparency over white."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        values = np.asarray(img).astype(np.float64)
        if img.mode != "F":  # 16-bit samples (Pillow opens 16-bit PNG/TIFF as I or I;16)
            values = values / 257.0
        img = Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB")


def shorter_to(width: int, height: int, size: int) -> tuple[int, int]:
    """(W, H) with the shorter side scaled to `size` (0 keeps the size), as torchvision's Resize(size)."""
    if size == 0:
        return width, height
    short, long = min(width, height), max(width, height)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a size x size centre crop, placed as torchvision's CenterCrop places it."""
    top, left = round((height - size) / 2.0), round((width - size) / 2.0)
    return left, top, left + size, top + size


def longer_at_most(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(W, H) scaled down, keeping the aspect ratio, so that the longer side is at most `max_side` (0: no limit)."""
    if max_side == 0 or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class SizePlan:
    """How a width x height image is sized for the model: the shorter side scaled first, then a
    centre crop (`crop`, a box in the scaled image) or the longer side capped (`capped`).
    Pillow (`prepare`) and the device path (`device_codec.prepare_on_device`) both follow it."""

    scaled: tuple[int, int]
    crop: tuple[int, int, int, int] | None
    capped: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        """The (W, H) the model gets."""
        if self.crop is None:
            return self.capped
        left, top, right, bottom = self.crop
        return right - left, bottom - top


# The smallest side the model takes: VGG's three max-pools (ceil mode) leave relu4_1's input at
# ceil(side / 8), and its reflection padding of 1 needs 2 pixels there.
MIN_SIDE = 9


def check_plan(plan: SizePlan, max_pixels: int) -> None:
    """Refuse a sizing the model cannot take: over `max_pixels` once scaled, or under MIN_SIDE on a side."""
    check_pixels(*plan.scaled, max_pixels, after="resizing")
    width, height = plan.size
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            f"{width}x{height} as sized for the model: too small, each side needs {MIN_SIDE} pixels at least; "
            "raise --content-size/--style-size or --max-side"
        )


def size_plan(width: int, height: int, size: int, crop: bool = False, max_side: int = 0) -> SizePlan:
    scaled = shorter_to(width, height, size)
    if crop:
        return SizePlan(scaled, crop_box(*scaled, size), scaled)
    return SizePlan(scaled, None, longer_at_most(*scaled, max_side))


def output_size(width: int, height: int, size: int, crop: bool = False, max_side: int = 0) -> tuple[int, int]:
    """The (W, H) that `prepare` makes of a width x height image."""
    return size_plan(width, height, size, crop, max_side).size


def _resized(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    return img if img.size == size else img.resize(size, Image.BILINEAR)


def format_of(path: str) -> str:
    """'jpg', 'png' or 'webp' from a file name, or ConfigError."""
    ext = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    if ext not in FORMATS:
        raise ConfigError(f"{path}: cannot tell the output format; end the name in .jpg, .png or .webp")
    return "jpg" if ext == "jpeg" else ext


# The longest side each format can hold (JPEG's and WebP's headers; PNG's is far beyond memory).
_FORMAT_SIDE = {"JPEG": 65_500, "WEBP": 16_383}


def check_encodable(width: int, height: int, fmt: str) -> None:
    """Refuse an image longer than its output format can hold, in words (libjpeg says only
    'broken data stream')."""
    pil_format = FORMATS[fmt]
    limit = _FORMAT_SIDE.get(pil_format)
    if limit is not None and max(width, height) > limit:
        raise ImageError(
            f"{width}x{height} is over {pil_format}'s limit of {limit:,} pixels a side; set --max-side, "
            "or write --format png"
        )


def encode(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    """RGB image -> encoded bytes in `fmt` (jpg, png, webp)."""
    check_encodable(*img.size, fmt)
    buffer = io.BytesIO()
    pil_format = FORMATS[fmt]
    options = {"quality": quality} if pil_format in ("JPEG", "WEBP") else {}
    img.save(buffer, pil_format, **options)
    return buffer.getvalue()


def prepare(data: bytes, size: int, crop: bool = False, max_pixels: int = MAX_PIXELS, max_side: int = 0) -> Image.Image:
    """Decode, scale the shorter side to `size`, then centre-crop to size x size or cap the longer side.

    `max_pixels` bounds the image after resizing too: a 1 x 40000 strip scaled to a shorter side
    of 512 would be 10 G pixels."""
    return fit(decode(data, max_pixels), size, crop, max_pixels, max_side)


def fit(
    img: Image.Image, size: int, crop: bool = False, max_pixels: int = MAX_PIXELS, max_side: int = 0
) -> Image.Image:
    """`prepare`'s sizing of a decoded image (or a video frame)."""
    return sized(img, size_plan(*img.size, size, crop, max_side), max_pixels)


def sized(img: Image.Image, plan: SizePlan, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A decoded image resized and cropped as `plan` says, once `check_plan` passes it."""
    check_plan(plan, max_pixels)
    img = _resized(img, plan.scaled)
    if plan.crop is not None:
        return img.crop(plan.crop)
    return _resized(img, plan.capped)
