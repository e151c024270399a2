"""Decoder training, read top to bottom: one step, then the loop each worker runs.

The schedule is pytorch-AdaIN's `train.py`: Adam on the decoder only, step `i` (0-based)
at lr / (1 + lr_decay * i), content and style batches drawn endlessly and paired one to
one. Under Ray Train every worker runs `train_loop_per_worker` on its own shard of the
images; DDP averages the gradients, so N workers with batch B take the same step as one
worker with batch N * B. "Iteration k" means k steps are done: a checkpoint at iteration k
resumes with step k, at lr / (1 + lr_decay * k).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.imaging.tensors import pixels_to_batch
from pipeline.model.checkpoint import load_decoder, load_encoder
from pipeline.model.host import reuse_freed_memory
from pipeline.model.nets import Decoder, Encoder
from pipeline.model.precision import dtype
from pipeline.train.checkpoints import (
    STATE_FILE,
    checkpoint_dir_name,
    load_training_state,
    sample_grid,
    save_training_checkpoint,
)
from pipeline.train.data import endless_batches
from pipeline.train.losses import LossTerms, adain_losses
from pipeline.train.metrics import MetricsLog, Window


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype(precision))


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


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: resume from the latest checkpoint if there is one, then step
    to max_iter, logging every log_every iterations and checkpointing every checkpoint_every."""
    import ray
    import ray.train
    import ray.train.torch

    cfg: TrainConfig = config["cfg"]
    skipped = config["skipped"]  # the SkippedImages actor that the decoding tasks report to
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        reuse_freed_memory()
    torch.manual_seed(cfg.seed)

    encoder = load_encoder(cfg.encoder)
    if encoder.sha256 != config["encoder_sha256"]:
        raise ConfigError(f"--encoder {cfg.encoder}: the weights changed while the run was starting")
    # channels_last: oneDNN's and cuDNN's fast convolution layout.
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
            metrics.add(row, sync=save)
            if config.get("progress") is not None:  # the driver prints it as it comes
                config["progress"].put(row)
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
