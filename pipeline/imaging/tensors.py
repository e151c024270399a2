"""Between PIL images and tensors, as torchvision's `ToTensor` and `save_image` convert."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_tensor(img: Image.Image) -> Tensor:
    """RGB image -> (3, H, W) float32 in [0, 1], as torchvision's ToTensor."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div(255.0)


def to_image(tensor: Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB image, rounded as torchvision's save_image rounds."""
    pixels = tensor.detach().float().mul(255).add(0.5).clamp(0, 255).to("cpu", torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")


def mask_tensor(img: Image.Image, size: tuple[int, int]) -> Tensor:
    """A mask image -> (1, 1, H, W) float 0/1 at `size` (W, H): light pixels are foreground."""
    gray = img.convert("L").resize(size, Image.NEAREST)
    return torch.from_numpy(np.array(gray) > 127).float()[None, None]
