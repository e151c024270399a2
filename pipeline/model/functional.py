"""The AdaIN math, as in the paper: small pure functions, tensors in and out, no I/O.

Feature maps are (N, C, H, W). Style statistics are a pair (mean, std) of (S, C, 1, 1)
tensors: a style is encoded once and its statistics reused for every content image.
Statistics are always computed in float32, whatever autocast does to the convolutions,
because a variance summed in bf16 loses most of its digits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-5

Stats = tuple[Tensor, Tensor]


def mean_std(feat: Tensor, mask: Tensor | None = None, eps: float = EPS) -> Stats:
    """Per-channel mean and std over H x W; std = sqrt(unbiased variance + eps).

    This is pytorch-AdaIN's `calc_mean_std`. With a mask (N, 1, H, W) of 0/1 the statistics
    are taken over the positions where the mask is 1 only (the spatial-control case).
    """
    n, c = feat.shape[:2]
    flat = feat.reshape(n, c, -1).float()
    if mask is None:
        mean = flat.mean(dim=2)
        var = flat.var(dim=2)
    else:
        weight = mask.reshape(n, 1, -1).float()
        count = weight.sum(dim=2)
        mean = (flat * weight).sum(dim=2) / count.clamp(min=1)
        var = ((flat - mean[..., None]) ** 2 * weight).sum(dim=2) / (count - 1).clamp(min=1)
    return mean.view(n, c, 1, 1), (var + eps).sqrt().view(n, c, 1, 1)


def adain(content_feat: Tensor, style_mean: Tensor, style_std: Tensor) -> Tensor:
    """Give the content features the style's per-channel mean and std (eq. 8 of the paper)."""
    return adain_with(content_feat, mean_std(content_feat), style_mean, style_std)


def adain_with(content_feat: Tensor, content_stats: Stats, style_mean: Tensor, style_std: Tensor) -> Tensor:
    """AdaIN normalising the content features by given statistics (for video: smoothed over time)."""
    content_mean, content_std = content_stats
    return (content_feat - content_mean) / content_std * style_std + style_mean


def smoothed_stats(mean: Tensor, std: Tensor, previous: Stats | None, s: float) -> Stats:
    """Exponential moving average over time of consecutive frames' statistics (N, C, 1, 1).

    Frame t gets m_t = s * m_(t-1) + (1 - s) * x_t, starting from `previous` (the last frame's
    smoothed statistics, (1, C, 1, 1)) or from the first frame's own. s = 0 leaves them as they
    are. Per-frame statistics jump with small content changes, and AdaIN turns each jump into a
    change of the whole frame's colours: the flicker of frame-by-frame stylization.
    """
    if not 0.0 <= s < 1.0:
        raise ValueError(f"smoothing {s}: must be in [0, 1)")
    if s == 0.0:
        return mean, std
    means, stds = [], []
    last = previous if previous is not None else (mean[:1], std[:1])
    for t in range(mean.shape[0]):
        last = (s * last[0] + (1 - s) * mean[t : t + 1], s * last[1] + (1 - s) * std[t : t + 1])
        means.append(last[0])
        stds.append(last[1])
    return torch.cat(means), torch.cat(stds)


def flicker(inputs: Tensor, outputs: Tensor) -> float:
    """Mean absolute frame-to-frame change of the outputs over the inputs' ((N, ...) frames in time
    order, N >= 2): 1 when the stylized video changes as much as its content does."""

    def change(frames: Tensor) -> Tensor:
        return (frames[1:].float() - frames[:-1].float()).abs().mean()

    return float(change(outputs) / change(inputs))


def cat_stats(stats: list[Stats]) -> Stats:
    """Stack several styles' statistics into one (S, C, 1, 1) pair."""
    return torch.cat([mean for mean, _ in stats]), torch.cat([std for _, std in stats])


def blend_stats(mean: Tensor, std: Tensor, weights: Tensor) -> Stats:
    """Mix S styles' statistics into one style, weights normalised to sum 1.

    AdaIN is affine in (mean, std), so AdaIN with blended statistics equals the blend of
    the per-style AdaIN outputs that pytorch-AdaIN computes, at the cost of one AdaIN.
    """
    w = (weights / weights.sum()).to(mean).view(-1, 1, 1, 1)
    return (w * mean).sum(dim=0, keepdim=True), (w * std).sum(dim=0, keepdim=True)


def masked_adain(content_feat: Tensor, mask: Tensor, fg: Stats, bg: Stats) -> Tensor:
    """Spatial control: foreground (mask 1) takes style `fg`, background takes style `bg`.

    Each region of the content features is normalised with that region's own statistics,
    as the original AdaIN-style does. `mask` is (N, 1, h, w) and is resized to the feature
    map with nearest neighbour.
    """
    mask = F.interpolate(mask.float(), size=content_feat.shape[-2:], mode="nearest")
    out = torch.zeros_like(content_feat, dtype=torch.float32)
    for region, (style_mean, style_std) in ((mask, fg), (1.0 - mask, bg)):
        region_mean, region_std = mean_std(content_feat, region)
        normalised = (content_feat - region_mean) / region_std * style_std + style_mean
        out = out + region * normalised
    return out


def mix(target: Tensor, content_feat: Tensor, alpha: float) -> Tensor:
    """Content-style trade-off: t = alpha * AdaIN + (1 - alpha) * content features."""
    return alpha * target + (1.0 - alpha) * content_feat


def _sqrtm(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive-definite matrix."""
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


def coral(source: Tensor, target: Tensor) -> Tensor:
    """Match the colour mean and covariance of image `source` (3, H, W) to image `target`.

    pytorch-AdaIN's colour preservation: the style image is recoloured to the content image
    before it is encoded. Same formula (unbiased std, covariance of the standardised pixels
    plus identity); computed in float64 for a stable matrix square root.
    """

    def standardise(img: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        flat = img.reshape(3, -1).double()
        # A flat channel (std 0) would divide by zero; it keeps its mean instead.
        mean, std = flat.mean(dim=1, keepdim=True), flat.std(dim=1, keepdim=True).clamp(min=1e-5)
        return (flat - mean) / std, mean, std

    src, _, _ = standardise(source)
    tgt, tgt_mean, tgt_std = standardise(target)
    eye = torch.eye(3, dtype=torch.float64)
    src_cov = src @ src.T + eye
    tgt_cov = tgt @ tgt.T + eye
    transferred = _sqrtm(tgt_cov) @ torch.linalg.inv(_sqrtm(src_cov)) @ src
    return (transferred * tgt_std + tgt_mean).reshape(source.shape).to(source.dtype)


# Full-range BT.601 (JPEG) RGB <-> YCbCr, the luma/chroma split used by luminance transfer.
_RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def keep_chroma(stylized: Tensor, content: Tensor) -> Tensor:
    """Luminance-only transfer: the stylized image's luma with the content image's chroma.

    Both are (N, 3, H, W) RGB in [0, 1]; works after the fact, so it needs nothing but the
    two images and combines with precomputed style statistics.
    """
    to_ycc = _RGB_TO_YCBCR.to(stylized.device)
    luma = torch.einsum("ij,njhw->nihw", to_ycc[:1], stylized.float())
    chroma = torch.einsum("ij,njhw->nihw", to_ycc[1:], content.float())
    ycc = torch.cat([luma, chroma], dim=1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_ycc), ycc)
