"""JPEG decoding, resizing and encoding on the model's device, with TorchCodec's image codecs.

On a GPU these run on nvJPEG, beside the model, so the CPUs of a GPU node only move bytes;
on a CPU they run on libjpeg-turbo, the same code (TorchCodec bundles both; images need no
FFmpeg). Only JPEGs that `codec.plain_jpeg_size` accepts come here; everything else goes through
Pillow (`codec.prepare`), which handles every case. Resizing follows the same `codec.SizePlan`,
with torch's antialiased bilinear filter, which is built to match Pillow's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.imaging.codec import SizePlan
from pipeline.imaging.tensors import to_uint8

try:
    from torchcodec.decoders import decode_jpeg
    from torchcodec.encoders import JpegEncoder

    _UNAVAILABLE: str | None = None
except (ImportError, OSError, RuntimeError) as exc:  # e.g. TorchCodec's CUDA build beside a CPU-only torch
    _UNAVAILABLE = " ".join((f"{exc}: {exc.__cause__}" if exc.__cause__ else str(exc)).split())

# What TorchCodec raises for a file it cannot decode: the codec's error, or ValueError for empty bytes.
_DECODE_ERRORS = (RuntimeError, ValueError)


def unavailable() -> str | None:
    """Why TorchCodec cannot run in this process (not installed, or its libraries do not load), or None."""
    return _UNAVAILABLE


def decode_jpegs(data: list[bytes], device: torch.device) -> list[Tensor | None]:
    """JPEG bytes -> (3, H, W) uint8 RGB tensors on `device`, None where one cannot be decoded.

    One batched call (nvJPEG decodes the batch together); if it fails, each image alone, so
    one bad file costs only itself."""
    try:
        return list(decode_jpeg(list(data), mode="RGB", device=device))
    except _DECODE_ERRORS:
        pass
    images: list[Tensor | None] = []
    for one in data:
        try:
            images.append(decode_jpeg(one, mode="RGB", device=device))
        except _DECODE_ERRORS:
            images.append(None)
    return images


def _resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """(3, H, W) float -> (3, size[1], size[0]) with Pillow's BILINEAR filter (antialiased when shrinking)."""
    if (image.shape[-1], image.shape[-2]) == size:
        return image
    return F.interpolate(image[None], size=(size[1], size[0]), mode="bilinear", antialias=True)[0]


def prepare_on_device(image: Tensor, plan: SizePlan) -> Tensor:
    """A decoded (3, H, W) uint8 content image -> float in [0, 1], sized as `plan` says
    (`codec.size_plan` of its width and height: what Pillow's `codec.prepare` does)."""
    x = _resize(image.float().div_(255.0), plan.scaled)
    if plan.crop is not None:
        left, top, right, bottom = plan.crop
        return x[:, top:bottom, left:right]
    return _resize(x, plan.capped)


def encode_jpegs(images: Tensor, quality: int) -> list[bytes]:
    """(N, 3, H, W) in [0, 1] on any device -> JPEG bytes each, encoded where the images are,
    from pixels rounded as `tensors.to_uint8` rounds them."""
    pixels = list(to_uint8(images).contiguous())
    try:
        encoded = [JpegEncoder(p).to_tensor(quality=quality) for p in pixels]
    except RuntimeError:  # a TorchCodec built without this device's JPEG encoder: encode on the host
        encoded = [JpegEncoder(p.cpu()).to_tensor(quality=quality) for p in pixels]
    return [e.cpu().numpy().tobytes() for e in encoded]
