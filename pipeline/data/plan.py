"""The plan: which outputs each input gets (style, alpha, target), and which of them are done.

stylize is "every style, one alpha" (`EveryStyle`); augment is "N styles and alphas drawn from
(seed, input path)" (`DrawnStyles`). The writer names each output's target once, here; what is
there already comes from one listing of the output per run (`Plan.existing`, on the driver),
which each target is looked up in; the job says when that question is asked (`Plan.resume`).
Torch-free: this runs in the decoding tasks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.data.writers import Writer
from pipeline.storage.index import ObjectIndex

# When outputs already there count as done: never (`--overwrite`, shards), for every input, or
# only for inputs no finished run recorded, when written since the input was (augment's resume).
RESUME_NEVER, RESUME_EXISTING, RESUME_NEW_INPUTS = None, "existing", "new-inputs"


def draw(
    seed: int, rel_path: str, n_styles: int, per_image: int, alpha_range: tuple[float, float]
) -> tuple[list[int], list[float]]:
    """The styles (indices into the sorted style ids) and alphas of one input: a pure function
    of (seed, input path), the same on every machine and every run."""
    path_hash = int.from_bytes(hashlib.sha256(rel_path.encode()).digest()[:8], "big")
    rng = np.random.default_rng([seed, path_hash])
    picks = rng.choice(n_styles, size=per_image, replace=False)
    low, high = alpha_range
    alphas = rng.uniform(low, high, size=per_image) if high > low else np.full(per_image, low)
    return picks.tolist(), alphas.astype(np.float32).tolist()


@dataclass(frozen=True)
class EveryStyle:
    """Every style for every input, at one alpha (`adain stylize`)."""

    style_ids: tuple[str, ...]
    alpha: float = 1.0

    def choose(self, rel_path: str) -> tuple[list[str], list[float]]:
        return list(self.style_ids), [self.alpha] * len(self.style_ids)


@dataclass(frozen=True)
class DrawnStyles:
    """`per_image` distinct styles per input and an alpha each, drawn by `draw` (`adain augment`)."""

    style_ids: tuple[str, ...]  # sorted: the draws index into them
    per_image: int
    alpha_range: tuple[float, float]
    seed: int

    def choose(self, rel_path: str) -> tuple[list[str], list[float]]:
        picks, alphas = draw(self.seed, rel_path, len(self.style_ids), self.per_image, self.alpha_range)
        return [self.style_ids[i] for i in picks], alphas


@dataclass(frozen=True)
class Plan:
    """How inputs become plan items: the styles chosen, the writer naming them, the resume rule."""

    styles: EveryStyle | DrawnStyles
    writer: Writer
    resume: str | None = RESUME_EXISTING

    def existing(self) -> ObjectIndex | None:
        """What is there already, listed once (on the driver); nothing is listed when no output
        can count as done."""
        return None if self.resume == RESUME_NEVER else self.writer.existing()

    def row(self, listed: dict[str, Any], existing: ObjectIndex | None = None) -> dict[str, Any]:
        """One listed input (input_uri, rel_path, key, mtime_ns, and `new` for augment) -> its plan;
        an output is done when `existing` (this plan's `existing()`) holds it, per the resume rule."""
        styles, alphas = self.styles.choose(listed["rel_path"])
        targets = [self.writer.target(style, listed["key"]) for style in styles]
        since = None
        check = self.resume == RESUME_EXISTING
        if self.resume == RESUME_NEW_INPUTS and listed.get("new", True):
            check, since = True, listed.get("mtime_ns")
        done = existing.written_since(targets, since) if check and existing is not None else [False] * len(targets)
        row = {k: listed.get(k) for k in ("input_uri", "rel_path", "mtime_ns")}
        return row | {"styles": styles, "alphas": alphas, "targets": targets, "done": done}


def plan_inputs(batch: pa.Table, plan: Plan, existing: ObjectIndex | None = None) -> list[dict[str, Any]]:
    """A batch of the listing -> its PLANNED rows (`rows.PLANNED_SCHEMA`), as the decoding stage goes on with them."""
    return [plan.row(listed, existing) for listed in batch.to_pylist()]
