"""The AdaIN networks: VGG-19 encoder to relu4_1 and its mirror-image decoder.

Both are `nn.Sequential`s laid out module for module as pytorch-AdaIN's `net.py`, so that
its `vgg_normalised.pth` and `decoder.pth` state dicts load as they are (`0.weight`,
`2.weight`, ...). Reflection padding and ceil-mode pooling, as in the original.
"""

from __future__ import annotations

from torch import Tensor, nn

# VGG-19 channel plan up to relu4_1 ("M": 2x2 max-pool).
_VGG_PLAN: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512)
# Module index ranges ending at relu1_1, relu2_1, relu3_1 and relu4_1.
VGG_STAGES: tuple[tuple[int, int], ...] = ((0, 4), (4, 11), (11, 18), (18, 31))
STAGE_NAMES = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")

# Decoder channel plan from relu4_1 back to RGB ("U": nearest-neighbour x2 upsampling).
_DECODER_PLAN: tuple[tuple[int, int] | str, ...] = (
    (512, 256), "U", (256, 256), (256, 256), (256, 256), (256, 128), "U",
    (128, 128), (128, 64), "U", (64, 64), (64, 3),
)  # fmt: skip

ARCH_VERSION = "adain-vgg19-relu4_1/v1"


def _conv3x3(cin: int, cout: int, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3)]
    return [*layers, nn.ReLU()] if relu else layers


class Encoder(nn.Sequential):
    """Frozen VGG-19 to relu4_1. Input: RGB in [0, 1]; module 0 is the 1x1 conv that turns
    it into what the VGG weights expect (BGR in [0, 255] minus the mean, or ImageNet
    normalisation for torchvision's weights)."""

    def __init__(self) -> None:
        layers: list[nn.Module] = [nn.Conv2d(3, 3, 1)]
        cin = 3
        for item in _VGG_PLAN:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, 0, ceil_mode=True))
            else:
                layers += _conv3x3(cin, int(item))
                cin = int(item)
        super().__init__(*layers)
        self.requires_grad_(False)

    def features(self, x: Tensor) -> list[Tensor]:
        """relu1_1, relu2_1, relu3_1 and relu4_1, for the training losses."""
        feats = []
        for start, stop in VGG_STAGES:
            for layer in list(self)[start:stop]:
                x = layer(x)
            feats.append(x)
        return feats


class Decoder(nn.Sequential):
    """relu4_1 features back to RGB: no normalisation layers, no activation at the end."""

    def __init__(self) -> None:
        layers: list[nn.Module] = []
        for i, item in enumerate(_DECODER_PLAN):
            if item == "U":
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            else:
                cin, cout = item
                layers += _conv3x3(cin, cout, relu=i < len(_DECODER_PLAN) - 1)
        super().__init__(*layers)
