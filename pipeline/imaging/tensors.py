"""Between pixels (PIL images, uint8 arrays) and tensors, as torchvision's `ToTensor` and `save_image` convert."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_tensor(img: Image.Image) -> Tensor:
    """RGB image -> (3, H, W) float32 in [0, 1], as torchvision's ToTensor."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div(255.0)


def pixels_to_batch(pixels: np.ndarray, device: torch.device) -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1] on `device`, channels_last, as ToTensor.

    The uint8 pixels cross to the GPU (a quarter of the float bytes) from pinned memory,
    asynchronously, and become float there. The NHWC buffer is already channels_last.
    """
    batch = torch.from_numpy(np.ascontiguousarray(pixels))
    if device.type == "cuda":
        batch = batch.pin_memory()
    batch = batch.to(device, non_blocking=True)
    return batch.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)


def to_uint8(images: Tensor) -> Tensor:
    """Floats in [0, 1] -> uint8, rounded as torchvision's save_image rounds, where the images are."""
    return images.detach().float().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def batch_to_pixels(images: Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8 on the host, rounded as save_image rounds.

    Rounded to uint8 where the images are (on the GPU), so only bytes come back."""
    return to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()


def to_image(tensor: Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB image, rounded as torchvision's save_image rounds."""
    return Image.fromarray(batch_to_pixels(tensor[None])[0], "RGB")


def mask_tensor(img: Image.Image, size: tuple[int, int]) -> Tensor:
    """A mask image -> (1, 1, H, W) float 0/1 at `size` (W, H): light pixels are foreground."""
    gray = img.convert("L").resize(size, Image.NEAREST)
    return torch.from_numpy(np.array(gray) > 127).float()[None, None]
