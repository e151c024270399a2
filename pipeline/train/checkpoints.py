"""Training checkpoints: what a run needs to go on exactly where it stopped, and a picture of how it is doing.

    checkpoint_00010000/state.pt      decoder, Adam state, iteration, config, losses, encoder sha256
    checkpoint_00010000/samples.jpg   content | style | output rows
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from pipeline.config import TrainConfig
from pipeline.imaging.codec import encode
from pipeline.imaging.tensors import to_image

STATE_FILE = "state.pt"  # in each checkpoint directory: decoder, optimiser, iteration
SAMPLES_FILE = "samples.jpg"  # in each checkpoint directory: content | style | output rows


def checkpoint_dir_name(iteration: int) -> str:
    """Checkpoint directories sort by name in iteration order: checkpoint_00001000."""
    return f"checkpoint_{iteration:08d}"


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
