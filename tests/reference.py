"""An independent float64 reference for the AdaIN model, written from the formulas.

It shares no code with `pipeline`: it builds pytorch-AdaIN's published layouts (the
full VGG to relu5_4, the decoder), saves random weights in them, and computes features,
AdaIN and decoded images with explicit float64 operations.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# pytorch-AdaIN net.py's vgg: module index of each 3x3 conv, and its channels, to relu5_4.
VGG_CONVS = {
    2: (3, 64), 5: (64, 64), 9: (64, 128), 12: (128, 128), 16: (128, 256), 19: (256, 256),
    22: (256, 256), 25: (256, 256), 29: (256, 512), 32: (512, 512), 35: (512, 512),
    38: (512, 512), 42: (512, 512), 45: (512, 512), 48: (512, 512), 51: (512, 512),
}  # fmt: skip
VGG_POOLS_AFTER = {6, 13, 26, 39}  # ReLU indices followed by a max-pool (at index + 1)
RELU_X_1 = {"relu1_1": 3, "relu2_1": 10, "relu3_1": 17, "relu4_1": 30}
# pytorch-AdaIN net.py's decoder: conv module index -> channels; "U" marks upsampling.
DECODER_CONVS = {
    1: (512, 256), 5: (256, 256), 8: (256, 256), 11: (256, 256), 14: (256, 128),
    18: (128, 128), 21: (128, 64), 25: (64, 64), 28: (64, 3),
}  # fmt: skip
DECODER_UPSAMPLE_BEFORE = {5, 18, 25}


def _conv_weight(gen: torch.Generator, cin: int, cout: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    # He-normal, so activations keep their scale through the random network.
    weight = torch.randn(cout, cin, k, k, generator=gen) * (2.0 / (cin * k * k)) ** 0.5
    bias = torch.randn(cout, generator=gen) * 0.01
    return weight, bias


def random_vgg_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in vgg_normalised.pth's layout (modules 0..52), random weights."""
    gen = torch.Generator().manual_seed(seed)
    state = {"0.weight": torch.eye(3).flip(0).view(3, 3, 1, 1) + 0.05 * torch.randn(3, 3, 1, 1, generator=gen)}
    state["0.bias"] = -0.5 + 0.1 * torch.randn(3, generator=gen)
    for index, (cin, cout) in VGG_CONVS.items():
        state[f"{index}.weight"], state[f"{index}.bias"] = _conv_weight(gen, cin, cout, 3)
    return state


def random_decoder_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """A state dict in decoder.pth's layout, random weights giving outputs around 0.5."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for index, (cin, cout) in DECODER_CONVS.items():
        state[f"{index}.weight"], state[f"{index}.bias"] = _conv_weight(gen, cin, cout, 3)
    state["28.weight"] = state["28.weight"] * 0.2
    state["28.bias"] = torch.full((3,), 0.5)
    return state


def torchvision_vgg19_state(seed: int = 2) -> dict[str, torch.Tensor]:
    """A state dict in torchvision's vgg19 layout (features + classifier), random weights."""
    gen = torch.Generator().manual_seed(seed)
    plan = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
    state, index, cin = {}, 0, 3
    for item in plan:
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"], state[f"features.{index}.bias"] = _conv_weight(gen, cin, int(item), 3)
        cin, index = int(item), index + 2
    state["classifier.0.weight"] = torch.zeros(16, 8)  # shapes don't matter to the encoder
    state["classifier.0.bias"] = torch.zeros(16)
    return state


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    if weight.shape[-1] == 3:
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
    return F.conv2d(x, weight.double(), bias.double())


def vgg_features(state: dict[str, torch.Tensor], x: torch.Tensor, normalise: bool = False) -> dict[str, torch.Tensor]:
    """relu1_1..relu4_1 in float64 from a vgg_normalised-layout state dict."""
    x = x.double()
    if normalise:  # torchvision weights: ImageNet normalisation instead of module 0
        mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
        x = (x - mean) / std
    else:
        x = _conv(x, state["0.weight"], state["0.bias"])
    out = {}
    for index in range(2, 31):
        if index in VGG_CONVS:  # conv at `index`, its ReLU at `index + 1`
            x = F.relu(_conv(x, state[f"{index}.weight"], state[f"{index}.bias"]))
            out.update({name: x for name, relu in RELU_X_1.items() if relu == index + 1})
        elif index - 1 in VGG_POOLS_AFTER:
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    return out


def decode(state: dict[str, torch.Tensor], feat: torch.Tensor) -> torch.Tensor:
    x = feat.double()
    for index, (_, cout) in DECODER_CONVS.items():
        if index in DECODER_UPSAMPLE_BEFORE:
            x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        x = _conv(x, state[f"{index}.weight"], state[f"{index}.bias"])
        if cout != 3:
            x = F.relu(x)
    return x


def mean_std(feat: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) -> per-channel mean and sqrt(unbiased var + eps), float64 numpy."""
    flat = feat.reshape(feat.shape[0], feat.shape[1], -1).astype(np.float64)
    mean = flat.mean(axis=2)
    var = flat.var(axis=2, ddof=1)
    return mean[..., None, None], np.sqrt(var + eps)[..., None, None]


def adain(content: np.ndarray, style_mean: np.ndarray, style_std: np.ndarray) -> np.ndarray:
    mean, std = mean_std(content)
    return (content - mean) / std * style_std + style_mean
