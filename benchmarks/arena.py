"""The model on a thread that is not its process's main one, with glibc's arenas and with one.

    python benchmarks/arena.py --size 256 --batch-size 8 --precision bf16 --rounds 5

A CPU model actor computes on the threads that take its calls (`job.OnOneNode` takes two
at once), and Ray Train runs the training loop on a thread of its own. glibc gives such a
thread a malloc arena whose heaps hold at most 64 MB, so a larger activation is mapped afresh
and faulted in again on every pass, whatever `host.reuse_freed_memory` sets. This times the
same forward passes, on the same tensors, in turn and `--rounds` times over (the machine's
speed drifts; alternating keeps the comparison fair):
  1. driver      - this process's main thread;
  2. actor       - a Ray actor's call thread, its process started as Ray starts any;
  3. one arena   - the same in an actor started with `cluster.ONE_ARENA_RUNTIME_ENV`, as the
                   model actors and Ray Train's CPU workers are.
Prints ms an image in each round, the median of each, and their ratios to the driver's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray
import torch

from benchmarks.throughput import random_weights
from pipeline.data.cluster import ONE_ARENA_RUNTIME_ENV, connect
from pipeline.model.host import set_threads
from pipeline.model.loader import load_model


class Passes:
    """The model on one batch of random content, timed."""

    def __init__(self, encoder: str, decoder: str, size: int, batch: int, precision: str, threads: int) -> None:
        set_threads(threads)
        self.model = load_model(encoder, decoder, "cpu", precision, False)
        self.content = torch.rand(batch, 3, size, size)
        self.style = self.model.style_stats(torch.rand(1, 3, size, size))
        self.model.stylize(self.content, self.style)  # oneDNN builds its kernels on the first pass

    def ms_per_image(self, passes: int) -> float:
        start = time.perf_counter()
        for _ in range(passes):
            self.model.stylize(self.content, self.style)
        return (time.perf_counter() - start) * 1000 / (passes * len(self.content))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--passes", type=int, default=3, help="forward passes a round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    threads = os.cpu_count() or 1
    encoder, decoder = random_weights(Path(tempfile.mkdtemp(prefix="adain-arena-")))
    shape = (encoder, decoder, args.size, args.batch_size, args.precision, threads)
    connect(None)  # a local Ray, or the one this process has joined already
    # Threaded actors, as the model actors are, so their calls run on threads of Ray's; no CPUs
    # reserved, so both fit beside each other, and they take turns with the driver.
    actor = ray.remote(num_cpus=0, max_concurrency=2)(Passes)
    places = {
        "driver": Passes(*shape).ms_per_image,
        "actor": actor.remote(*shape).ms_per_image.remote,
        "one arena": actor.options(runtime_env=ONE_ARENA_RUNTIME_ENV).remote(*shape).ms_per_image.remote,
    }
    ms: dict[str, list[float]] = {name: [] for name in places}
    for _ in range(args.rounds):
        for name, run in places.items():
            result = run(args.passes)
            ms[name].append(result if isinstance(result, float) else ray.get(result))

    print(f"\n{args.batch_size} images {args.size}x{args.size} a pass, {args.precision}, {threads} threads")
    driver = statistics.median(ms["driver"])
    for name, values in ms.items():
        rounds = " ".join(f"{v:.0f}" for v in values)
        median = statistics.median(values)
        print(f"{name:10} ms/image {rounds:>28}  median {median:6.1f}  {median / driver:.2f}x the driver's")


if __name__ == "__main__":
    main()
