"""The AdaIN training objective, as pytorch-AdaIN's `Net.forward` computes it.

    t      = AdaIN(relu4_1(content), stats(relu4_1(style)))      (alpha = 1 in training)
    g(t)   = decoder(t)
    L_c    = MSE(relu4_1(g(t)), t)
    L_s    = sum over relu1_1..relu4_1 of MSE(mean(g), mean(s)) + MSE(std(g), std(s))
    L      = w_c * L_c + w_s * L_s + w_tv * TV(g(t))

Means and stds are `mean_std` (unbiased variance + 1e-5, square root), in float32 whatever
autocast did to the convolutions. The encoder is frozen, so `t` and the style statistics
carry no gradient: only the decoder learns.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.model.functional import adain, mean_std
from pipeline.model.nets import Encoder


class LossTerms(NamedTuple):
    """The weighted loss terms of one batch, and the decoder's output for the sample grid."""

    content: Tensor
    style: Tensor
    tv: Tensor
    total: Tensor
    output: Tensor


def content_loss(output_feat: Tensor, target: Tensor) -> Tensor:
    """MSE between the output's relu4_1 features and the AdaIN target `t`."""
    return F.mse_loss(output_feat.float(), target.float())


def style_loss(output_feats: list[Tensor], style_feats: list[Tensor]) -> Tensor:
    """Sum over the layers of the MSE between the output's and the style's channel means and stds."""
    total = torch.zeros((), device=output_feats[0].device)
    for output_feat, style_feat in zip(output_feats, style_feats, strict=True):
        output_mean, output_std = mean_std(output_feat)
        style_mean, style_std = mean_std(style_feat)
        total = total + F.mse_loss(output_mean, style_mean) + F.mse_loss(output_std, style_std)
    return total


def tv_loss(images: Tensor) -> Tensor:
    """Anisotropic total variation: mean absolute difference of vertical plus horizontal neighbours."""
    images = images.float()
    vertical = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().mean()
    horizontal = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().mean()
    return vertical + horizontal


def adain_losses(
    encoder: Encoder,
    decoder: nn.Module,
    content: Tensor,
    style: Tensor,
    content_weight: float = 1.0,
    style_weight: float = 10.0,
    tv_weight: float = 0.0,
) -> LossTerms:
    """One forward pass of the training network on paired (N, 3, H, W) content and style batches."""
    with torch.no_grad():  # the frozen encoder: targets, not part of the graph
        style_feats = encoder.features(style)
        content_feat = encoder(content)
        target = adain(content_feat.float(), *mean_std(style_feats[-1]))
    output = decoder(target)
    output_feats = encoder.features(output)
    loss_c = content_weight * content_loss(output_feats[-1], target)
    loss_s = style_weight * style_loss(output_feats, style_feats)
    loss_tv = tv_weight * tv_loss(output) if tv_weight else torch.zeros((), device=output.device)
    return LossTerms(loss_c, loss_s, loss_tv, loss_c + loss_s + loss_tv, output.detach())
