"""The styles of a job, reduced once, on the driver, to what the model actors need.

A `StyleSet` is each style's relu4_1 mean and std (S x 512 floats each: small even for
thousands of styles), from a style bank or from the style images, encoded here once. The
model actors get it through the object store and never read a style image. The one
exception is `--preserve-color coral`, which recolours each style image to each content
image before encoding it: then the set carries the style images' pixels instead.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config import Controls, ModelConfig, Sizing
from pipeline.data.bank import StyleBank, load_bank
from pipeline.data.listing import is_bank, list_styles
from pipeline.errors import ImageError, describe
from pipeline.imaging.codec import max_file_bytes
from pipeline.imaging.tensors import to_tensor
from pipeline.model.checkpoint import load_encoder
from pipeline.model.functional import blend_stats, cat_stats
from pipeline.model.loader import load_style_encoder
from pipeline.storage.uri import read_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One style of a job: a single style image, or several blended with weights."""

    style_id: str
    uris: tuple[str, ...]
    weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class StyleSet:
    """What the model actors hold of the styles: statistics as (S, 512) float32 arrays, or for
    coral the style images (HxWx3 uint8) with their blend weights."""

    ids: tuple[str, ...]
    mean: np.ndarray | None
    std: np.ndarray | None
    images: tuple[tuple[np.ndarray, ...], ...] | None = None
    weights: tuple[tuple[float, ...] | None, ...] | None = None
    sources: tuple[tuple[str, ...], ...] = ()  # each style's images, where known (not for banks)

    @property
    def coral(self) -> bool:
        return self.images is not None

    def source_map(self) -> dict[str, list[str]]:
        """Style id -> the style images it was made from (for previews and reports)."""
        return {style_id: list(uris) for style_id, uris in zip(self.ids, self.sources, strict=False)}


def variants(styles: list[tuple[str, str]], weights: tuple[float, ...] | None) -> list[Variant]:
    """Each (style_id, uri) style image is its own style, unless `weights` blend them into one."""
    if weights is None:
        return [Variant(style_id, (uri,)) for style_id, uri in styles]
    key = ",".join(f"{sid}={w:g}" for (sid, _), w in zip(styles, weights, strict=True))
    blend_id = "blend-" + hashlib.sha256(key.encode()).hexdigest()[:8]
    return [Variant(blend_id, tuple(uri for _, uri in styles), tuple(weights))]


def style_tensor(uri: str, sizing: Sizing) -> torch.Tensor:
    """A style image as the jobs encode it: read, decoded, resized to --style-size, (3, H, W)."""
    try:
        return to_tensor(sizing.style_image(read_bytes(uri, max_file_bytes(sizing.max_pixels))))
    except Exception as exc:
        raise ImageError(f"style {uri}: {describe(exc)}") from None


def from_bank(bank: StyleBank) -> StyleSet:
    flat = bank.mean.shape[0], bank.mean.shape[1]
    return StyleSet(tuple(bank.ids), bank.mean.reshape(flat).numpy(), bank.std.reshape(flat).numpy())


def encode_styles(found: list[Variant], model: ModelConfig, sizing: Sizing, coral: bool = False) -> StyleSet:
    """The variants' statistics, each style image read and encoded once (here, on the CPU)."""
    images = {uri: style_tensor(uri, sizing) for uri in sorted({u for v in found for u in v.uris})}
    ids, sources = tuple(v.style_id for v in found), tuple(v.uris for v in found)
    if coral:
        pixels = {uri: (t.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy() for uri, t in images.items()}
        blends = tuple(tuple(pixels[u] for u in v.uris) for v in found), tuple(v.weights for v in found)
        return StyleSet(ids, None, None, *blends, sources=sources)
    # fp16 convolutions are not native on CPUs; their statistics are float32 either way.
    encoder = load_style_encoder(model.encoder, "cpu", "fp32" if model.precision == "fp16" else model.precision)
    stats = {uri: encoder.style_stats(t[None]) for uri, t in images.items()}
    blended = []
    for v in found:
        mean, std = cat_stats([stats[u] for u in v.uris])
        blended.append((mean, std) if v.weights is None else blend_stats(mean, std, torch.tensor(v.weights)))
    mean, std = cat_stats(blended)
    return StyleSet(ids, mean.flatten(1).cpu().numpy(), std.flatten(1).cpu().numpy(), sources=sources)


def stylize_styles(refs: tuple[str, ...], controls: Controls, model: ModelConfig, sizing: Sizing) -> StyleSet:
    """`adain stylize`'s styles: the one style bank among `refs`, or the style images they name
    (`refs` and `controls` as `preflight.check_styles` passed them)."""
    banks = [ref for ref in refs if is_bank(ref)]
    if not banks:
        found = list_styles(refs)
        coral = controls.preserve_color == "coral"
        return encode_styles(variants(found, controls.weights_for(len(found))), model, sizing, coral)
    bank = load_bank(banks[0], load_encoder(model.encoder).sha256)
    if bank.style_size != sizing.style_size:
        log.warning("the style bank was indexed at --style-size %d; its statistics are used", bank.style_size)
    return from_bank(bank)


def augment_styles(ref: str, model: ModelConfig, sizing: Sizing) -> StyleSet:
    """`adain augment`'s styles, sorted by id (the draws index into them): a bank or style images."""
    if is_bank(ref):
        styles = from_bank(load_bank(ref, load_encoder(model.encoder).sha256))
    else:
        styles = encode_styles(variants(list_styles((ref,)), None), model, sizing)
    order = np.argsort(np.array(styles.ids, dtype=object), kind="stable")
    assert styles.mean is not None and styles.std is not None
    sources = tuple(styles.sources[i] for i in order) if styles.sources else ()
    return StyleSet(tuple(styles.ids[i] for i in order), styles.mean[order], styles.std[order], sources=sources)
