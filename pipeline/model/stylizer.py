"""Inference: encode styles once, then stylize batches of content images with the controls."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pipeline.errors import DeviceError
from pipeline.model.functional import (
    Stats,
    adain,
    adain_with,
    keep_chroma,
    masked_adain,
    mean_std,
    mix,
    smoothed_stats,
)
from pipeline.model.host import reuse_freed_memory
from pipeline.model.nets import Decoder, Encoder
from pipeline.model.precision import dtype

# On CPU, a model call's activations should stay in the caches: about this many pixels a call
# (see the README's Performance section). GPUs want the whole batch.
CPU_PIXELS_PER_CALL = 1 << 17


def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes the GPU when there is one; asking for 'cuda' without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {name}: no CUDA GPU is visible on this machine; use device cpu or auto")
    return torch.device(name)


class StyleTransfer(nn.Module):
    """The frozen encoder and the decoder on one device, run at one precision.

    Images are (N, 3, H, W) RGB in [0, 1]. Style images are reduced to their relu4_1
    statistics once (`style_stats`); `stylize` then needs only those statistics.
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder.eval(), decoder.eval()
        self.requires_grad_(False)
        self.device = torch.device(device)
        self.precision = precision
        # Reduced precision casts the weights themselves: no per-call weight casts as under
        # autocast. Statistics stay float32 (see functional.py).
        self.dtype = dtype(precision)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(self.device, self.dtype, memory_format=self.memory_format)
        if self.device.type == "cpu":
            reuse_freed_memory()
        if self.device.type == "cuda":
            # Let cuDNN time its algorithms once per input shape: jobs batch same-shape images,
            # so each shape is tuned once and then reused for the whole run.
            torch.backends.cudnn.benchmark = True
        if compile:
            # torch.compile fuses each ReLU and reflection padding into its neighbours; it compiles
            # once per input shape, so it pays on long runs. In place: the state dict stays as it is.
            self.encoder.compile()
            self.decoder.compile()
        self.identity: dict[str, str] = {}  # sha256 of the weights, set by the loader

    def images_per_call(self, height: int, width: int, batch_size: int) -> int:
        """How many height x width images to stylize in one call: `batch_size` on a GPU, and on
        the CPU only as many as fit CPU_PIXELS_PER_CALL (at least one)."""
        if self.device.type != "cpu":
            return batch_size
        return max(1, min(batch_size, CPU_PIXELS_PER_CALL // (height * width)))

    def _input(self, images: Tensor) -> Tensor:
        return images.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def style_stats(self, styles: Tensor) -> Stats:
        """relu4_1 mean and std of each style image: (S, 512, 1, 1) each, float32."""
        return mean_std(self.encoder(self._input(styles)))

    def _on_device(self, stats: Stats) -> Stats:
        mean, std = stats
        return mean.to(self.device), std.to(self.device)

    @torch.inference_mode()
    def stylize(
        self,
        content: Tensor,
        style: Stats,
        alpha: float | Tensor = 1.0,
        mask: Tensor | None = None,
        background: Stats | None = None,
        preserve_luminance: bool = False,
    ) -> Tensor:
        """Stylize a batch of same-size images; returns (N, 3, H, W) in [0, 1] on the device.

        `style` holds one row of statistics for the whole batch or one per image. With a
        `mask` (N, 1, H, W), mask 1 takes `style` and mask 0 takes `background`.
        `alpha` is a float or one value per image, shaped (N, 1, 1, 1).
        """
        x = self._input(content)
        feat = self.encoder(x)
        if mask is None:
            target = adain(feat, *self._on_device(style))
        elif background is None:
            raise ValueError("a mask needs two styles: foreground and background")
        else:
            target = masked_adain(feat, mask.to(self.device), self._on_device(style), self._on_device(background))
        return self._decode(target, feat, x, alpha, preserve_luminance)

    @torch.inference_mode()
    def stylize_frames(
        self,
        frames: Tensor,
        style: Stats,
        alpha: float = 1.0,
        smoothing: float = 0.0,
        previous: Stats | None = None,
        preserve_luminance: bool = False,
    ) -> tuple[Tensor, Stats]:
        """Stylize consecutive video frames, their content statistics smoothed over time
        (`smoothed_stats`) from `previous`; returns the frames and the statistics to carry to the next batch."""
        x = self._input(frames)
        feat = self.encoder(x)
        stats = smoothed_stats(*mean_std(feat), previous, smoothing)
        target = adain_with(feat, stats, *self._on_device(style))
        carried = stats[0][-1:], stats[1][-1:]
        return self._decode(target, feat, x, alpha, preserve_luminance), carried

    @torch.inference_mode()
    def warm_up(self, frames: Tensor, smoothing: float, previous: Stats | None = None) -> Stats:
        """The smoothed content statistics after `frames` (a segment's lead-in), encoded only, not decoded:
        the `previous` to start the segment's `stylize_frames` from."""
        stats = smoothed_stats(*mean_std(self.encoder(self._input(frames))), previous, smoothing)
        return stats[0][-1:], stats[1][-1:]

    @torch.inference_mode()
    def stylize_each(
        self,
        content: Tensor,
        styles: Sequence[Stats],
        alpha: float | Tensor | Sequence[float | Tensor] = 1.0,
        preserve_luminance: bool = False,
        members: Sequence[Sequence[int] | None] | None = None,
    ) -> list[Tensor]:
        """One output per style from a single encoding of the content batch.

        Each style's statistics have one row for the batch or one per image; `alpha` is one
        value for all, or one per style (each a float or a per-image (N, 1, 1, 1) tensor).
        `members`, one per style, names the content images that style is for (None: all of
        them); the style's statistics and alpha then have a row per member.
        """
        x = self._input(content)
        feat = self.encoder(x)
        alphas = alpha if isinstance(alpha, (list, tuple)) else [alpha] * len(styles)
        outputs = []
        for i, (stats, a) in enumerate(zip(styles, alphas, strict=True)):
            rows = None if members is None else members[i]
            f, xi = (feat, x) if rows is None else (feat[list(rows)], x[list(rows)])
            outputs.append(self._decode(adain(f, *self._on_device(stats)), f, xi, a, preserve_luminance))
        return outputs

    def _decode(self, target: Tensor, feat: Tensor, x: Tensor, alpha: float | Tensor, luminance: bool) -> Tensor:
        if isinstance(alpha, Tensor):
            alpha = alpha.to(self.device)
        out = self.decoder(mix(target, feat, alpha).to(self.dtype))
        # Ceil-mode pooling lets the decoder overshoot by up to 7 px: crop back to the input.
        out = out.float()[..., : x.shape[-2], : x.shape[-1]]
        if luminance:
            out = keep_chroma(out, x)
        return out.clamp(0.0, 1.0)
