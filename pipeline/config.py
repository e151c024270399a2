"""Typed configuration, validated once where it enters (CLI flags, YAML) and passed inward."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConfigError
from pipeline.imaging.codec import MAX_PIXELS
from pipeline.model.checkpoint import DEFAULT_DECODER, DEFAULT_ENCODER
from pipeline.model.stylizer import PRECISIONS

PRESERVE_COLOR = ("coral", "luminance")


@dataclass(frozen=True)
class ModelConfig:
    """Which weights, where, at what precision."""

    encoder: str = DEFAULT_ENCODER
    decoder: str = DEFAULT_DECODER
    device: str = "auto"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision}: expected one of {', '.join(PRECISIONS)}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"--device {self.device}: expected auto, cpu or cuda")


@dataclass(frozen=True)
class Controls:
    """The user's controls over the result, as in the reference implementations."""

    alpha: float = 1.0
    style_weights: tuple[float, ...] | None = None
    preserve_color: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"--alpha {self.alpha}: must be between 0 and 1")
        if self.style_weights is not None and (any(w < 0 for w in self.style_weights) or sum(self.style_weights) <= 0):
            raise ConfigError("--style-weights: weights must be non-negative and not all zero")
        if self.preserve_color not in (None, *PRESERVE_COLOR):
            raise ConfigError(f"--preserve-color {self.preserve_color}: expected coral or luminance")


@dataclass(frozen=True)
class Sizing:
    """How images are resized before stylization (0 keeps the original size)."""

    content_size: int = 512
    style_size: int = 512
    crop: bool = False
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        if self.content_size < 0 or self.style_size < 0:
            raise ConfigError("--content-size/--style-size must be 0 (keep) or a positive number of pixels")
        if self.crop and (self.content_size == 0 or self.style_size == 0):
            raise ConfigError("--crop needs --content-size and --style-size above 0")
        if self.max_pixels <= 0:
            raise ConfigError("--max-pixels must be positive")
