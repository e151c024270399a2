"""Typed configuration, validated once where it enters (CLI flags, YAML) and passed inward."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError, counted
from pipeline.imaging.codec import (
    FORMATS,
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    MIN_SIDE,
    SEGMENT_SECONDS,
    VIDEO_EXTENSIONS,
    VIDEO_QUALITY,
    SizePlan,
    check_plan,
    loaded,
    opened,
    size_plan,
    sized,
)
from pipeline.model.precision import PRECISIONS, TRAINING_PRECISIONS
from pipeline.model.sources import DEFAULT_DECODER, DEFAULT_ENCODER, absolute_ref
from pipeline.storage.uri import MAX_CONNECTIONS, absolute, canonical, join

if TYPE_CHECKING:
    from PIL import Image

PRESERVE_COLOR = ("coral", "luminance")
# Run ids and run names become file names: one safe path segment, or refused.
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
JPEG_CODECS = ("auto", "tasks", "model")  # where JPEGs are decoded and encoded: Scale.jpeg_codec


@dataclass(frozen=True)
class ModelConfig:
    """Which weights, where, at what precision."""

    encoder: str = DEFAULT_ENCODER
    decoder: str = DEFAULT_DECODER
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False  # torch.compile the networks

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder", absolute_ref(self.encoder))
        object.__setattr__(self, "decoder", absolute_ref(self.decoder))
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
        weights = self.style_weights
        if weights is not None and not (all(0 <= w < math.inf for w in weights) and 0 < sum(weights) < math.inf):
            raise ConfigError("--style-weights: weights must be finite, non-negative and not all zero")
        if self.preserve_color not in (None, *PRESERVE_COLOR):
            raise ConfigError(f"--preserve-color {self.preserve_color}: expected coral or luminance")

    def weights_for(self, styles: int) -> tuple[float, ...] | None:
        """--style-weights, checked against the number of style images they blend."""
        if self.style_weights is not None and len(self.style_weights) != styles:
            given, wanted = counted(len(self.style_weights), "weight"), counted(styles, "style")
            raise ConfigError(f"--style-weights has {given} for {wanted}")
        return self.style_weights


@dataclass(frozen=True)
class Sizing:
    """How images are resized before stylization (0 keeps the original size)."""

    content_size: int = 512
    style_size: int = 512
    crop: bool = False
    max_pixels: int = MAX_PIXELS
    max_side: int = 0  # cap on the longer side after resizing, 0 for none

    def __post_init__(self) -> None:
        if self.content_size < 0 or self.style_size < 0:
            raise ConfigError("--content-size/--style-size must be 0 (keep) or a positive number of pixels")
        if self.crop and (self.content_size == 0 or self.style_size == 0):
            raise ConfigError("--crop needs --content-size and --style-size above 0")
        if self.max_pixels <= 0:
            raise ConfigError("--max-pixels must be positive")
        if self.max_side < 0:
            raise ConfigError("--max-side must be 0 (no limit) or a positive number of pixels")

    def content_plan(self, width: int, height: int) -> SizePlan:
        """How a width x height content image is sized for the model."""
        return size_plan(width, height, self.content_size, self.crop, self.max_side)

    def style_plan(self, width: int, height: int) -> SizePlan:
        """How a width x height style image is sized for the encoder (no --max-side: styles are not capped)."""
        return size_plan(width, height, self.style_size, self.crop)

    def style_image(self, data: bytes, whole: bool = True) -> Image.Image:
        """Style image bytes as the encoder gets them (the one place that says how styles are decoded and
        sized), or ImageError: decoded, then sized by `style_plan`. `whole=False` checks the header and
        its sizing only, `codec.decode`'s checks less the pixels', and returns the image undecoded."""
        img = opened(data, self.max_pixels)
        if not whole:
            check_plan(self.style_plan(*img.size), self.max_pixels)
            return img
        img = loaded(img)  # the plan is of the upright image: an EXIF rotation swaps its sides
        return sized(img, self.style_plan(*img.size), self.max_pixels)


@dataclass(frozen=True)
class Scale:
    """How the job maps onto the cluster."""

    actors: int | None = None  # model actors; default: one per GPU, or one per core on CPU clusters
    batch_size: int = 16
    cpus_per_actor: float | None = None  # default: 1 with a GPU; on CPU, a core's share less the I/O tasks'
    gpus_per_actor: float = 1.0
    io_cpus: float = 0.25  # CPUs asked by each decoding and writing task
    jpeg_codec: str = "auto"  # JPEGs decoded/encoded in the CPU tasks, or on the model's device; auto: model on GPUs
    io_concurrency: int = 16  # object-store requests each decoding and writing task keeps in flight

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ConfigError("--actors must be at least 1")
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")
        if (self.cpus_per_actor is not None and self.cpus_per_actor <= 0) or self.gpus_per_actor <= 0:
            raise ConfigError("--cpus-per-actor and --gpus-per-actor must be positive")
        if self.io_cpus <= 0:
            raise ConfigError("--io-cpus must be positive")
        if not 1 <= self.io_concurrency <= MAX_CONNECTIONS:
            raise ConfigError(f"--io-concurrency {self.io_concurrency}: must be between 1 and {MAX_CONNECTIONS}")
        if self.jpeg_codec not in JPEG_CODECS:
            raise ConfigError(f"--jpeg-codec {self.jpeg_codec}: expected one of {', '.join(JPEG_CODECS)}")


@dataclass(frozen=True)
class OutputSpec:
    """Where and how outputs are written."""

    uri: str
    format: str = "jpg"
    quality: int = 90
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.uri:
            raise ConfigError("--output is required: the prefix or directory to write to")
        object.__setattr__(self, "uri", absolute(self.uri))
        if self.format not in FORMATS:
            raise ConfigError(f"--format {self.format}: expected one of {', '.join(FORMATS)}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"--quality {self.quality}: must be between 1 and 100")


@dataclass(frozen=True)
class VideoSpec:
    """How videos are stylized and written: smoothing over time, x264's CRF, the segments' length."""

    temporal_smoothing: float = 0.0  # EMA weight of the content statistics over frames, 0 for none
    quality: int = VIDEO_QUALITY
    segment_seconds: float = SEGMENT_SECONDS
    decoder: str = "cpu"  # "device": TorchCodec on the model's device (NVDEC on a GPU), PyAV where it cannot

    def __post_init__(self) -> None:
        if self.decoder not in VIDEO_DECODERS:
            raise ConfigError(f"--video-decoder {self.decoder}: one of {', '.join(VIDEO_DECODERS)}")
        if not 0.0 <= self.temporal_smoothing < 1.0:
            raise ConfigError(f"--temporal-smoothing {self.temporal_smoothing}: must be at least 0 and below 1")
        if not 0 <= self.quality <= 51:
            raise ConfigError(f"--video-quality {self.quality}: x264's CRF, 0 (lossless) to 51 (worst)")
        if self.segment_seconds <= 0:
            raise ConfigError(f"--segment-seconds {self.segment_seconds}: must be positive")

    @property
    def lead_in(self) -> int:
        """Frames a segment's smoothing is warmed up on: until the frames before them weigh under 1e-3
        (s ** n), at most LEAD_IN_MAX; none without smoothing."""
        if self.temporal_smoothing == 0:
            return 0
        return min(LEAD_IN_MAX, math.ceil(math.log(1e-3) / math.log(self.temporal_smoothing)))


VIDEO_DECODERS = ("cpu", "device")
LEAD_IN_MAX = 300  # frames: each costs one encoder pass, and s above 0.977 would ask for more


def check_run_id(run_id: str | None) -> None:
    if run_id is not None and not _RUN_NAME.fullmatch(run_id):
        raise ConfigError(f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-', from a letter or digit on")


def check_apart(input: str, output: str) -> None:
    """An output equal to its input would be read back as input by the next run."""
    if canonical(input) == canonical(output):  # links resolved: `--input alias` for `--output real`
        raise ConfigError(f"--output {output} is the --input: give the outputs a prefix of their own")


@dataclass(frozen=True)
class StylizeConfig:
    """One run of the distributed stylization job."""

    input: str
    styles: tuple[str, ...]
    output: OutputSpec
    model: ModelConfig = ModelConfig()
    controls: Controls = Controls()
    sizing: Sizing = Sizing()
    scale: Scale = Scale()
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    input_root: str | None = None  # for list files: the prefix output keys are relative to
    address: str | None = None
    run_id: str | None = None
    preview: str | None = None
    video: VideoSpec = VideoSpec()

    def __post_init__(self) -> None:
        if not self.input:
            raise ConfigError("--input is required: a prefix, a directory or a list file of image URIs")
        if not self.styles:
            raise ConfigError("--style is required: one or more style images or prefixes")
        object.__setattr__(self, "input", absolute(self.input))
        object.__setattr__(self, "styles", tuple(absolute(style) for style in self.styles))
        check_run_id(self.run_id)
        check_apart(self.input, self.output.uri)


@dataclass(frozen=True)
class AugmentConfig:
    """One run of dataset augmentation: N styles per input image, drawn deterministically."""

    input: str
    styles: str  # style images (a prefix or an image) or a style bank (.parquet)
    output: OutputSpec
    per_image: int = 1
    alpha_range: tuple[float, float] = (1.0, 1.0)
    seed: int = 0
    shards: bool = False
    shard_size: int = 1000
    model: ModelConfig = ModelConfig()
    preserve_color: str | None = None
    sizing: Sizing = Sizing()
    scale: Scale = Scale()
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    input_root: str | None = None
    address: str | None = None
    run_id: str | None = None
    lock_ttl_s: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if not self.input or not self.styles:
            raise ConfigError("--input and --style are required")
        object.__setattr__(self, "input", absolute(self.input))
        object.__setattr__(self, "styles", absolute(self.styles))
        check_run_id(self.run_id)
        check_apart(self.input, self.output.uri)
        if self.per_image < 1:
            raise ConfigError(f"--per-image {self.per_image}: must be at least 1")
        if self.seed < 0:  # NumPy's generators take no negative seed: every input would fail
            raise ConfigError(f"--seed {self.seed}: must be 0 or more")
        low, high = self.alpha_range
        if not 0.0 <= low <= high <= 1.0:
            raise ConfigError(f"--alpha-range {low},{high}: need 0 <= LO <= HI <= 1")
        if self.shard_size < 1:
            raise ConfigError("--shard-size must be at least 1")
        if self.preserve_color not in (None, "luminance"):
            raise ConfigError("augment supports --preserve-color luminance only (coral needs each style image)")
        if self.lock_ttl_s <= 0:
            raise ConfigError("--lock-ttl must be positive")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data, scale, objective, schedule and where it all goes.

    Local paths are made absolute here, once: Ray Train runs each worker in its own
    working directory, where a relative path would mean something else.
    """

    content: str
    style: str
    storage: str
    name: str
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    loader_cpus: float | None = None  # CPUs per decoding task; None: 1 if the cluster has one spare, else 0
    batch_size: int = 8  # per worker
    max_iter: int = 160_000
    resize: int = 512
    crop: int = 256
    checkpoint_every: int = 10_000
    log_every: int = 100
    keep_checkpoints: int = 3
    max_failures: int = 3
    encoder: str = DEFAULT_ENCODER
    decoder: str | None = None  # initial decoder weights to fine-tune; None trains from scratch
    content_weight: float = 1.0
    style_weight: float = 10.0
    tv_weight: float = 0.0
    lr: float = 1e-4
    lr_decay: float = 5e-5
    precision: str = "fp32"
    export_pytorch_adain: bool = False
    resume: bool = False
    samples: int = 4  # rows of the sample grid saved with each checkpoint
    seed: int = 0
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    max_pixels: int = MAX_PIXELS
    address: str | None = None

    def __post_init__(self) -> None:
        for flag, value in (("--content", self.content), ("--style", self.style), ("--storage", self.storage)):
            if not value:
                raise ConfigError(f"{flag} is required")
            object.__setattr__(self, flag[2:], absolute(value))
        object.__setattr__(self, "encoder", absolute_ref(self.encoder))
        if self.decoder is not None:
            object.__setattr__(self, "decoder", absolute_ref(self.decoder))
        if not _RUN_NAME.fullmatch(self.name or ""):
            raise ConfigError(f"--name {self.name!r}: use letters, digits, '.', '_' and '-' (it names a directory)")
        positive = {
            "--workers": self.workers,
            "--cpus-per-worker": self.cpus_per_worker,
            "--batch-size": self.batch_size,
            "--max-iter": self.max_iter,
            "--resize": self.resize,
            "--crop": self.crop,
            "--checkpoint-every": self.checkpoint_every,
            "--log-every": self.log_every,
            "--keep-checkpoints": self.keep_checkpoints,
            "--lr": self.lr,
            "--max-pixels": self.max_pixels,
        }
        for flag, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{flag} {value}: must be positive")
        non_negative = {
            "--gpus-per-worker": self.gpus_per_worker,
            "--loader-cpus": self.loader_cpus or 0.0,
            "--max-failures": self.max_failures,
            "--content-weight": self.content_weight,
            "--style-weight": self.style_weight,
            "--tv-weight": self.tv_weight,
            "--lr-decay": self.lr_decay,
            "--samples": self.samples,
        }
        for flag, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{flag} {value}: must not be negative")
        if self.crop < MIN_SIDE:
            raise ConfigError(f"--crop {self.crop}: the model takes {MIN_SIDE} pixels a side at least")
        if self.crop > self.resize:
            raise ConfigError(f"--crop {self.crop} is larger than --resize {self.resize}; crops are cut from it")
        if self.resize**2 > self.max_pixels:  # every image is resized to resize x resize, whatever its own size
            raise ConfigError(
                f"--resize {self.resize}: {self.resize}x{self.resize} is more than --max-pixels {self.max_pixels}"
            )
        if self.precision not in TRAINING_PRECISIONS:
            raise ConfigError(f"--precision {self.precision}: expected one of {', '.join(TRAINING_PRECISIONS)}")
        if self.content_weight + self.style_weight + self.tv_weight == 0:
            raise ConfigError("--content-weight, --style-weight and --tv-weight are all 0: nothing to learn")

    @property
    def run_uri(self) -> str:
        """STORAGE/NAME: checkpoints, metrics, the exported decoder."""
        return join(self.storage, self.name)

    def learning_rate(self, step: int) -> float:
        """pytorch-AdaIN's `adjust_learning_rate`: lr / (1 + lr_decay * step), steps counted from 0."""
        return self.lr / (1.0 + self.lr_decay * step)
