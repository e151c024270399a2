"""Fault drills for training runs, installed through `pipeline.train.loop.STEP_HOOKS`."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import ray.cloudpickle

from pipeline.train import loop

# The workers get the drill by value: they need not be able to import this test package.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass(frozen=True)
class CrashDrill:
    """The worker of rank `rank` dies (os._exit, a real process death) when it reaches
    `iteration`, once; the marker file records that it happened. `delay_s` lets the
    controller register the last checkpoint first, as in a crash some time after it."""

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


@contextlib.contextmanager
def step_hook(hook: Callable[[int, int], None]) -> Iterator[None]:
    """Run `hook(iteration, rank)` before every step of the training runs started meanwhile."""
    loop.STEP_HOOKS.append(hook)
    try:
        yield
    finally:
        loop.STEP_HOOKS.remove(hook)
