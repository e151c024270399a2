"""Decoder training, read top to bottom: the config, one step, one checkpoint, the loop each worker runs.

The schedule is pytorch-AdaIN's `train.py`: Adam on the decoder only, step `i` (0-based)
at lr / (1 + lr_decay * i), content and style batches drawn endlessly and paired one to
one. Under Ray Train every worker runs `train_loop_per_worker` on its own shard of the
images; DDP averages the gradients, so N workers with batch B take the same step as one
worker with batch N * B. "Iteration k" means k steps are done: a checkpoint at iteration k
resumes with step k, at lr / (1 + lr_decay * k).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from pipeline.errors import ConfigError, ImageError
from pipeline.imaging.codec import IMAGE_EXTENSIONS, MAX_PIXELS, encode
from pipeline.imaging.tensors import pixels_to_batch, to_image
from pipeline.model.checkpoint import load_decoder, load_encoder
from pipeline.model.host import reuse_freed_memory
from pipeline.model.nets import Decoder, Encoder
from pipeline.model.sources import DEFAULT_ENCODER
from pipeline.storage.uri import absolute, exists, join, read_bytes, write_bytes
from pipeline.train.losses import LossTerms, adain_losses

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # fp16 would need loss scaling; bf16 does not
STATE_FILE = "state.pt"  # in each checkpoint directory: decoder, optimiser, iteration
SAMPLES_FILE = "samples.jpg"  # in each checkpoint directory: content | style | output rows
METRICS_FILE = "metrics.jsonl"  # in the run directory: one JSON object per logged iteration
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def checkpoint_dir_name(iteration: int) -> str:
    """Checkpoint directories sort by name in iteration order: checkpoint_00001000."""
    return f"checkpoint_{iteration:08d}"


# ---------------------------------------------------------------------------------------------
# the config


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
        if not _NAME.fullmatch(self.name or ""):
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
        if self.crop > self.resize:
            raise ConfigError(f"--crop {self.crop} is larger than --resize {self.resize}; crops are cut from it")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision}: expected one of {', '.join(PRECISIONS)}")
        if self.content_weight + self.style_weight + self.tv_weight == 0:
            raise ConfigError("--content-weight, --style-weight and --tv-weight are all 0: nothing to learn")

    @property
    def run_uri(self) -> str:
        """STORAGE/NAME: checkpoints, metrics, the exported decoder."""
        return join(self.storage, self.name)

    def learning_rate(self, step: int) -> float:
        """pytorch-AdaIN's `adjust_learning_rate`: lr / (1 + lr_decay * step), steps counted from 0."""
        return self.lr / (1.0 + self.lr_decay * step)


# ---------------------------------------------------------------------------------------------
# one step


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def train_step(
    encoder: Encoder,
    decoder: nn.Module,
    optimizer: torch.optim.Optimizer,
    content: Tensor,
    style: Tensor,
    cfg: TrainConfig,
    step: int,
) -> LossTerms:
    """Step `step` (0-based): set its learning rate, compute the losses, update the decoder.

    The loss terms returned are those of the batch before the update. With DDP the
    gradients are averaged across workers during `backward`.
    """
    for group in optimizer.param_groups:
        group["lr"] = cfg.learning_rate(step)
    with autocast(content.device, cfg.precision):
        terms = adain_losses(encoder, decoder, content, style, cfg.content_weight, cfg.style_weight, cfg.tv_weight)
    optimizer.zero_grad(set_to_none=True)
    terms.total.backward()
    optimizer.step()
    return terms


# ---------------------------------------------------------------------------------------------
# one checkpoint


def unwrap(model: nn.Module) -> nn.Module:
    """The decoder inside a DistributedDataParallel wrapper, or the model itself."""
    return getattr(model, "module", model)


def sample_grid(content: Tensor, style: Tensor, output: Tensor, rows: int) -> Image.Image:
    """One row per sample: content | style | output, the way a person checks training by eye."""
    rows = min(rows, content.shape[0])
    height, width = content.shape[-2:]
    grid = Image.new("RGB", (3 * width, rows * height), "white")
    for row in range(rows):
        for col, images in enumerate((content, style, output)):
            grid.paste(to_image(images[row].float().clamp(0, 1)), (col * width, row * height))
    return grid


def save_training_checkpoint(
    directory: str,
    decoder: nn.Module,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    cfg: TrainConfig,
    encoder_sha256: str,
    losses: dict[str, float],
    grid: Image.Image | None,
) -> None:
    """Everything a run needs to go on exactly where it stopped, plus a picture of how it is doing."""
    state = {
        "iteration": iteration,
        "decoder": {k: v.detach().cpu() for k, v in unwrap(decoder).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "encoder_sha256": encoder_sha256,
        "config": asdict(cfg),
        "losses": losses,
    }
    torch.save(state, os.path.join(directory, STATE_FILE))
    if grid is not None:
        with open(os.path.join(directory, SAMPLES_FILE), "wb") as handle:
            handle.write(encode(grid, "jpg"))


def load_training_state(data: bytes) -> dict[str, Any]:
    """A checkpoint's state.pt, loaded as data (weights_only): never code."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------
# data: endless batches from a dataset shard


def endless_batches(shard: Any, batch_size: int, what: str) -> Iterator[np.ndarray]:
    """(batch_size, H, W, 3) uint8 batches forever, re-reading the shard epoch after epoch.

    pytorch-AdaIN's InfiniteSamplerWrapper: batches run across epoch boundaries, and each
    epoch visits the images in a new order (new block order, shuffled within a buffer of
    8 batches), with new random crops (the dataset re-runs). All workers hold equally many
    images (Ray's equal split), so they all start a new epoch at the same step, which Ray
    Data's split requires.
    """
    pending: list[np.ndarray] = []
    while True:
        rows = 0
        batches = shard.iter_batches(
            batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=8 * batch_size
        )
        for batch in batches:
            images = batch["image"]
            rows += len(images)
            pending.extend(images)
            while len(pending) >= batch_size:
                yield np.stack(pending[:batch_size])
                del pending[:batch_size]
        if rows == 0:
            raise ImageError(f"no readable {what} images reached this worker; check the {what} prefix")


# ---------------------------------------------------------------------------------------------
# what people watch: metrics.jsonl, TensorBoard when installed


class MetricsLog:
    """Rank 0's record of the run in STORAGE/NAME: metrics.jsonl, rewritten whole (atomically, so
    object stores work too) at each row, and TensorBoard event files when tensorboard(X) is installed.

    Rows are never dropped: after a restart, the iterations redone since the last checkpoint
    appear again, with the `resumed_from` iteration that says which attempt wrote them.
    """

    def __init__(self, run_uri: str) -> None:
        self.uri = join(run_uri, METRICS_FILE)
        self.tensorboard_uri = join(run_uri, "tensorboard")
        self.text = read_bytes(self.uri).decode() if exists(self.uri) else ""
        self.tensorboard, self.tensorboard_dir = _tensorboard_writer()

    def add(self, row: dict[str, Any]) -> None:
        self.text += json.dumps(row) + "\n"
        write_bytes(self.uri, self.text.encode())
        if self.tensorboard is not None:
            for key, value in row.items():
                if key.startswith("loss_") or key in ("lr", "samples_per_s", "skipped_images"):
                    self.tensorboard.add_scalar(key, value, row["iteration"])
            self.tensorboard.flush()
            for entry in os.scandir(self.tensorboard_dir):
                with open(entry.path, "rb") as handle:
                    write_bytes(join(self.tensorboard_uri, entry.name), handle.read())

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            shutil.rmtree(str(self.tensorboard_dir), ignore_errors=True)


def _tensorboard_writer() -> tuple[Any, str | None]:
    """A SummaryWriter into a local folder (uploaded after each row), or (None, None) without TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            return None, None
    # In the worker's working directory: Ray Train's per-run folder in the Ray session, cleaned up with it.
    directory = tempfile.mkdtemp(prefix="adain-tensorboard-", dir=os.getcwd())
    return SummaryWriter(directory), directory


@dataclass
class Window:
    """Loss sums since the last metrics row; averaged over steps and, with DDP, over workers."""

    sums: Tensor | None = None
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, terms: LossTerms) -> None:
        values = torch.stack([terms.content, terms.style, terms.tv, terms.total]).detach().float()
        self.sums = values if self.sums is None else self.sums + values
        self.steps += 1

    def means(self, world_size: int) -> dict[str, float]:
        assert self.sums is not None
        sums = self.sums.clone()
        if world_size > 1:
            torch.distributed.all_reduce(sums)
        content, style, tv, total = (sums / (self.steps * world_size)).tolist()
        return {"loss_content": content, "loss_style": style, "loss_tv": tv, "loss_total": total}


@dataclass(frozen=True)
class CrashDrill:
    """Fault injection for tests and fire drills: the worker of rank `rank` dies (os._exit, a real
    process death) when it reaches `iteration`, once; the marker file records that it happened.
    `delay_s` lets the controller register the last checkpoint first, as in a crash some time after it."""

    iteration: int
    marker: str
    rank: int = 1
    delay_s: float = 1.0

    def __call__(self, iteration: int, rank: int) -> None:
        if iteration == self.iteration and rank == self.rank and not os.path.exists(self.marker):
            with open(self.marker, "w") as handle:
                handle.write(f"rank {rank} crashed at iteration {iteration}\n")
            time.sleep(self.delay_s)
            os._exit(1)


# ---------------------------------------------------------------------------------------------
# the loop each worker runs


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: resume from the latest checkpoint if there is one, then step
    to max_iter, logging every log_every iterations and checkpointing every checkpoint_every."""
    import ray
    import ray.train
    import ray.train.torch

    cfg: TrainConfig = config["cfg"]
    skipped = config["skipped"]  # the SkippedImages actor that the decoding tasks report to
    crash: CrashDrill | None = config.get("crash")
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        reuse_freed_memory()
    torch.manual_seed(cfg.seed)

    encoder = load_encoder(cfg.encoder)
    if encoder.sha256 != config["encoder_sha256"]:
        raise ConfigError(f"--encoder {cfg.encoder}: the weights changed while the run was starting")
    # channels_last: oneDNN's and cuDNN's fast convolution layout (about 1.5x with bf16 on CPU).
    # The frozen encoder keeps float32 weights: autocast handles it, and bf16 weights made the
    # backward pass through it slower on CPU.
    encoder_net = encoder.module.to(device, memory_format=torch.channels_last).eval()
    decoder = Decoder() if cfg.decoder is None else load_decoder(cfg.decoder).module
    state = None
    checkpoint = ray.train.get_checkpoint()  # a restarted worker group, or a resumed run
    if checkpoint is not None:
        with checkpoint.as_directory() as directory, open(os.path.join(directory, STATE_FILE), "rb") as handle:
            state = load_training_state(handle.read())
        decoder.load_state_dict(state["decoder"])
    decoder = decoder.to(device, memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(decoder.train())  # DDP when world_size > 1
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    start = state["iteration"] if state is not None else 0

    contents = endless_batches(ray.train.get_dataset_shard("content"), cfg.batch_size, "content")
    styles = endless_batches(ray.train.get_dataset_shard("style"), cfg.batch_size, "style")
    metrics = MetricsLog(cfg.run_uri) if rank == 0 else None
    window = Window()
    for iteration in range(start + 1, cfg.max_iter + 1):
        if crash is not None:
            crash(iteration, rank)
        content, style = pixels_to_batch(next(contents), device), pixels_to_batch(next(styles), device)
        terms = train_step(encoder_net, model, optimizer, content, style, cfg, iteration - 1)
        window.add(terms)

        save = iteration % cfg.checkpoint_every == 0 or iteration == cfg.max_iter
        if not (save or iteration % cfg.log_every == 0):
            continue
        row = {
            "iteration": iteration,
            "lr": cfg.learning_rate(iteration - 1),
            **window.means(world_size),
            "samples_per_s": window.steps * cfg.batch_size * world_size / (time.perf_counter() - window.started),
            "skipped_images": ray.get(skipped.count.remote()) if rank == 0 else 0,
            "workers": world_size,
            "resumed_from": start,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        window = Window()
        if metrics is not None:
            metrics.add(row)
        if save:
            with tempfile.TemporaryDirectory(prefix="adain-checkpoint-") as directory:
                saved = None
                if rank == 0:  # only rank 0 writes files; the others report metrics only
                    losses = {k: v for k, v in row.items() if k.startswith("loss_")}
                    grid = sample_grid(content, style, terms.output, cfg.samples) if cfg.samples else None
                    save_training_checkpoint(directory, model, optimizer, iteration, cfg, encoder.sha256, losses, grid)
                    saved = ray.train.Checkpoint.from_directory(directory)
                ray.train.report(row, checkpoint=saved, checkpoint_dir_name=checkpoint_dir_name(iteration))
    if metrics is not None:
        metrics.close()
