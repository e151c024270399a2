"""CPU actor layouts side by side: the same `adain stylize` job with each --actors choice in turn.

    python benchmarks/actors.py --images 360 --size 256 --precision bf16 --repeat 4

Runs the job over the same generated JPEGs with every layout of `--layouts` in alternation
(`default`: one single-thread actor per core; a number N: `--actors N`, an even share of the
cores as each one's torch threads), all in one local Ray, so the machine's drift falls on
each alike. Prints, per run, the layout, its actors and threads, images/s, and the model
calls' own time inside the job in ms an image of the whole pool (the manifest's `model_ms`
over the actors: the job's rate if nothing but the model took time); last, each layout's mean
images/s and its ratio to the first layout's.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import make_images, random_weights
from pipeline.config import ModelConfig, OutputSpec, Scale, Sizing, StylizeConfig
from pipeline.data.cluster import block_rows, connect, model_stage
from pipeline.data.stylize import run_stylize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=360)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--layouts", default="1,default", help="comma-separated: default, or an actor count")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="adain-actors-"))
    try:
        encoder, decoder = random_weights(work)
        make_images(work / "in", args.images, args.size)
        make_images(work / "style", 1, args.size, seed=99)
        connect("local")  # a Ray of its own, never one already running here
        names = args.layouts.split(",")
        layouts = {name: Scale(None if name == "default" else int(name), args.batch_size) for name in names}
        calls = math.ceil(args.images / block_rows(args.images, args.batch_size))  # the job's input blocks
        rates: dict[str, list[float]] = {name: [] for name in layouts}
        cpus = ray.cluster_resources()["CPU"]
        print(f"{args.images} images {args.size}x{args.size}, {args.precision}, {cpus:g} CPUs")
        print(f"{'layout':>8} {'actors':>6} {'threads':>7} {'images/s':>9} {'model ms/image':>15}")
        for run in range(args.repeat):
            for name, scale in layouts.items():
                out = work / f"out-{name}-{run}"
                cfg = StylizeConfig(
                    input=str(work / "in"),
                    styles=(str(work / "style" / "img000000.jpg"),),
                    output=OutputSpec(str(out), "jpg", 90),
                    model=ModelConfig(encoder, decoder, "cpu", args.precision),
                    sizing=Sizing(content_size=args.size, style_size=args.size),
                    scale=scale,
                )
                actor_args, threads = model_stage(cfg.model, scale, calls)  # as the job sizes its pool
                actors = actor_args["compute"].max_size
                start = time.perf_counter()
                made = run_stylize(cfg)["ok"]
                rate = made / (time.perf_counter() - start)
                rates[name].append(rate)
                model_ms = pq.read_table(out / "_manifest", columns=["model_ms"]).column(0).to_pylist()
                per_image = sum(model_ms) / len(model_ms) / actors
                print(f"{name:>8} {actors:>6} {threads:>7} {rate:>9.2f} {per_image:>15.0f}", flush=True)
        first = sum(rates[names[0]]) / args.repeat
        for name, values in rates.items():
            mean = sum(values) / len(values)
            print(f"{name}: {mean:.2f} images/s, {mean / first:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
