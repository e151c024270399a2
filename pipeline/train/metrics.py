"""What people watch during training: metrics.jsonl, and TensorBoard when it is installed.

Rank 0 writes a row every --log-every iterations. Rows are appended: in place on local
storage; on object stores, which cannot append, the file is uploaded whole at most every
`upload_every_s` and at each checkpoint, so its cost stays linear in the run's length.
Rows are never dropped: after a restart, the iterations redone since the last checkpoint
appear again, with the `resumed_from` iteration that says which attempt wrote them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from pipeline.storage.uri import exists, join, read_bytes, resolve, scheme, write_bytes
from pipeline.train.losses import LossTerms

METRICS_FILE = "metrics.jsonl"  # in the run directory: one JSON object per logged iteration
_SCALARS = ("lr", "samples_per_s", "skipped_images")  # besides the loss_* columns


class MetricsLog:
    """metrics.jsonl in the run directory, and TensorBoard event files under tensorboard/."""

    def __init__(self, run_uri: str, upload_every_s: float = 30.0) -> None:
        self.uri = join(run_uri, METRICS_FILE)
        self.tensorboard_uri = join(run_uri, "tensorboard")
        self.local = scheme(run_uri) == "file"
        self.upload_every_s, self._uploaded = upload_every_s, time.monotonic()
        if self.local:
            path = resolve(self.uri)[1]
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._file = open(path, "a")  # noqa: SIM115 - held open for the whole run
            self.tensorboard_dir = resolve(self.tensorboard_uri)[1]
        else:
            self._text = read_bytes(self.uri).decode() if exists(self.uri) else ""
            # In the worker's working directory: Ray Train's per-run folder, cleaned up with it.
            self.tensorboard_dir = tempfile.mkdtemp(prefix="adain-tensorboard-", dir=os.getcwd())
        self.tensorboard = _tensorboard_writer(self.tensorboard_dir)

    def add(self, row: dict[str, Any], sync: bool = False) -> None:
        """Record a row; `sync` (at checkpoints) makes it reach the object store now."""
        line = json.dumps(row) + "\n"
        if self.local:
            self._file.write(line)
            self._file.flush()
        else:
            self._text += line
        if self.tensorboard is not None:
            for key, value in row.items():
                if key.startswith("loss_") or key in _SCALARS:
                    self.tensorboard.add_scalar(key, value, row["iteration"])
        if sync or time.monotonic() - self._uploaded >= self.upload_every_s:
            self.sync()

    def sync(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.flush()
        if self.local:
            return
        write_bytes(self.uri, self._text.encode())
        if self.tensorboard is not None:
            for entry in os.scandir(self.tensorboard_dir):
                with open(entry.path, "rb") as handle:
                    write_bytes(join(self.tensorboard_uri, entry.name), handle.read())
        self._uploaded = time.monotonic()

    def close(self) -> None:
        self.sync()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.local:
            self._file.close()
        else:
            shutil.rmtree(self.tensorboard_dir, ignore_errors=True)


def _tensorboard_writer(directory: str) -> Any:
    """A SummaryWriter into `directory`, or None without tensorboard or tensorboardX."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            return None
    return SummaryWriter(directory)


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


def iteration_line(row: dict[str, Any], max_iter: int) -> str:
    """One logged iteration as the driver prints it: losses and throughput."""
    losses = ", ".join(f"{k.removeprefix('loss_')} {v:.4g}" for k, v in row.items() if k.startswith("loss_"))
    return f"adain: train iteration {row['iteration']}/{max_iter}: {losses}, {row['samples_per_s']:.1f} samples/s"
