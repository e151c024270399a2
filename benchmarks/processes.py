"""Whole processes, side by side on the same files: the reference loop, `adain transfer`, `adain stylize`.

    python benchmarks/processes.py --images 120 --size 256 --precision bf16
    python benchmarks/processes.py --images 480 --size 256 --precision bf16 --skip-reference

Each command runs as a process of its own from its start to its exit, as a user runs it, so
every start-up cost counts: the interpreter and imports, loading the weights, Ray starting,
the actors starting. On the same generated JPEGs, one style, the same random weights:
  1. reference - pytorch-AdaIN's test.py way, written plainly (benchmarks/throughput.py's
                 `baseline`): fp32, one image at a time, the style encoded again for every pair;
  2. transfer  - `adain transfer IN STYLE -o OUT` (one process, no Ray);
  3. stylize   - `adain stylize --input IN --style STYLE --output OUT` (a local Ray).
Prints seconds and images/s of each and the ratios the README quotes, `--repeat` times in
alternation (the machine's load drifts; alternating keeps the comparison fair).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import make_images, random_weights

REFERENCE = """
import sys, torch
from pathlib import Path
from benchmarks.throughput import baseline
src, style, size, enc, dec, out = sys.argv[1:7]
files = sorted(Path(src).iterdir())
baseline(files, Path(style), int(size), enc, dec, Path(out), torch.device("cpu"))
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... exited {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--skip-reference", action="store_true", help="only transfer and stylize")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="adain-processes-"))
    try:
        encoder, decoder = random_weights(work)
        src, style = work / "in", work / "style.jpg"
        make_images(src, args.images, args.size)
        make_images(work / "styles", 1, args.size, seed=99)
        shutil.move(work / "styles" / "img000000.jpg", style)
        root = str(Path(__file__).resolve().parents[1])
        env = os.environ | {"PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        adain = [sys.executable, "-m", "pipeline.cli"]
        common = ["--encoder", encoder, "--decoder", decoder, "--precision", args.precision]
        sizes = ["--content-size", str(args.size), "--style-size", str(args.size)]
        commands = {
            "transfer": lambda out: [*adain, "transfer", str(src), str(style), "-o", out, *common, *sizes],
            "stylize": lambda out: [
                *adain, "stylize", "--input", str(src), "--style", str(style), "--output", out,
                *common, *sizes, "--batch-size", str(args.batch_size),
            ],
        }  # fmt: skip
        if not args.skip_reference:
            commands["reference"] = lambda out: [
                sys.executable, "-c", REFERENCE, str(src), str(style), str(args.size), encoder, decoder, out
            ]
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for round_ in range(args.repeat):
            for name, command in commands.items():
                out = work / f"{name}-{round_}"
                seconds[name].append(timed(command(str(out)), env))
                shutil.rmtree(out, ignore_errors=True)

        shape = f"{args.images} images {args.size}x{args.size}, {args.precision}"
        print(f"\n{shape}, {os.cpu_count()} CPUs, whole processes")
        print(f"{'':10} {'seconds':>24} {'images/s':>9}")
        best = {name: min(values) for name, values in seconds.items()}
        for name, values in seconds.items():
            runs = " ".join(f"{v:.1f}" for v in values)
            print(f"{name:10} {runs:>24} {args.images / best[name]:9.2f}")
        print(f"stylize / transfer time   {best['stylize'] / best['transfer']:.2f}x (best of each)")
        if "reference" in best:
            print(f"reference / stylize time  {best['reference'] / best['stylize']:.2f}x")
            print(f"reference / transfer time {best['reference'] / best['transfer']:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
