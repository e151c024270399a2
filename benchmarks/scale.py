"""Scale of `adain stylize`: many tiny images through the whole job, and what ten million would take.

    python benchmarks/scale.py --images 100000 --size 16 --work /tmp/adain-scale --rerun
    python benchmarks/scale.py --report-rows 100000,1000000,3000000,crafted --baseline HEAD~3

Generates N tiny JPEGs (in parallel, in folders of 5,000, kept in --work to be reused), one
style image and random He-init weights (throughput.py's helpers), then reports:

  - before the run, each alone: the listing (`list_inputs`: seconds, rows/s, the table's
    bytes, the driver's peak memory for it) and the hand-off of the input blocks to Ray
    (`ray.data.from_arrow(input_blocks(...))`, as the job does it: one `ray.put` and one
    metadata task per block), with the object store holding every block;
  - the job itself (`run_stylize`, one style, this machine's local Ray), untouched: outputs/s,
    and the time to the first output from its summary (`first_rows_s`: the first manifest
    rows reaching the driver, the listing and hand-off included, as the job does them again);
  - peak RSS of the driver (this process: VmHWM) apart from the whole Ray process tree
    (throughput.py's PeakRss; shared memory is counted once per process that maps it);
  - the object store: peak bytes and objects pinned, read every second from the raylet's
    own debug dump (logs/debug_state.txt): no gRPC or dashboard needed (`ray memory` needs
    grpcio). Blocks under 100 KB that tasks return are not in it: Ray keeps them in their
    owner's memory, the driver's RSS;
  - the manifest: parts, bytes, bytes per row;
  - with --rerun, a second run over the same outputs (every output exists: all skipped);
  - and, last, an extrapolation to --target images (default ten million), with GPU-hours at
    --gpu-rate images/s per GPU at 512x512 (an assumption unless measured).

The extrapolation needs a run long enough for the fixed costs (Ray's and the actors' start,
10-20 s) to be small: tens of thousands of images, not hundreds. Tiny images make the model's
share small, so the rates here are the pipeline's per-row overhead, which is what grows with N.

Report mode (--report-rows N,N,...): a generated manifest of N rows in parts of 50,000 (the writer's
flush_rows; 3% errors of a few reasons, a second run's rows over the first 10%, that run with no
summary; `crafted`: one part of 300 errors of 4 MB each, dictionary-encoded in a few KB), then
`adain report OUTPUT` and `adain report OUTPUT --errors` each in a fresh Python
process: seconds and peak RSS (VmHWM), beside a process that only imports the CLI; with
--baseline REF, the same for the project's `pipeline` as of git commit REF, in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project
sys.path.insert(0, str(Path(__file__).resolve().parent))  # throughput.py, next to this file

import pyarrow as pa
import ray
from throughput import MFLOP_PER_PIXEL, PeakRss, Sampling, make_images, random_weights

from pipeline.config import ModelConfig, OutputSpec, Scale, Sizing, StylizeConfig
from pipeline.data.cluster import connect, input_blocks
from pipeline.data.listing import list_inputs
from pipeline.data.manifest import table_bytes
from pipeline.data.rows import ROW_SCHEMA
from pipeline.data.stylize import run_stylize

TARGET = 10_000_000
SHORT_RUN_S = 120  # a run shorter than this may be mostly the fixed start-up (Ray, workers, actors)
FOLDER_SIZE = 5_000  # generated images per folder (and per generating task)
GPU_FLOPS_ASSUMED = 100e12  # sustained bf16 FLOP/s of one H100 assumed for the default --gpu-rate
DEFAULT_GPU_RATE = round(GPU_FLOPS_ASSUMED / (MFLOP_PER_PIXEL * 1e6 * 512 * 512), -1)  # ~390 images/s
GPU_RATE_NOTE = (
    f"ASSUMPTION, not measured: one H100 sustaining {GPU_FLOPS_ASSUMED / 1e12:.0f} TFLOP/s bf16 end to end "
    f"(about a tenth of its dense peak) at {MFLOP_PER_PIXEL} MFLOP/pixel = "
    f"{MFLOP_PER_PIXEL * 512 * 512 / 1e3:.0f} GFLOP per 512x512 image"
)


# ---------------------------------------------------------------------------------------------
# inputs, made once per --work directory


def _make_folder(job: tuple[str, int, int, int]) -> None:
    folder, count, size, seed = job
    make_images(Path(folder), count, size, seed=seed)


def generate(work: Path, count: int, size: int, procs: int) -> tuple[Path, float | None]:
    """N JPEGs of size x size under work/images-N-Spx/partKKKK/ (None seconds: reused)."""
    src = work / f"images-{count}-{size}px"
    done = work / f"images-{count}-{size}px.complete"
    if done.exists():
        return src, None
    shutil.rmtree(src, ignore_errors=True)
    start = time.perf_counter()
    jobs = [
        (str(src / f"part{k:04d}"), min(FOLDER_SIZE, count - first), size, k)
        for k, first in enumerate(range(0, count, FOLDER_SIZE))
    ]
    with multiprocessing.Pool(max(1, min(procs, len(jobs)))) as pool:
        pool.map(_make_folder, jobs, chunksize=1)
    done.write_text(f"{count} images {size}x{size}\n")
    return src, time.perf_counter() - start


def style_and_weights(work: Path, size: int) -> tuple[Path, str, str]:
    style = work / "style" / "img000000.jpg"
    if not style.exists():
        make_images(style.parent, 1, max(size, 64), seed=99)
    encoder, decoder = work / "vgg_normalised.pth", work / "decoder.pth"
    if not (encoder.exists() and decoder.exists()):
        random_weights(work)
    return style, str(encoder), str(decoder)


# ---------------------------------------------------------------------------------------------
# measuring


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        match = re.search(rf"^{field}:\s+(\d+) kB", handle.read(), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def driver_rss() -> int:
    return _status_kb("VmRSS")


def driver_peak() -> int:
    return _status_kb("VmHWM")


def reset_driver_peak() -> None:
    """Start VmHWM (this process's peak RSS) again from its current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass  # old kernel: the peak is then the process's lifetime peak


_STORE_FIELDS = {
    "bytes": re.compile(r"- pinned objects size: (\d+)"),
    "objects": re.compile(r"- num local plasma objects: (\d+)"),
    "spilled": re.compile(r"- num bytes currently spilled: (\d+)"),
}


def object_store(debug_state: Path) -> dict[str, int]:
    """The raylet's object-store figures: bytes of primary copies pinned, local objects, bytes spilled."""
    try:
        text = debug_state.read_text()
    except OSError:
        return {}
    found = {name: pattern.search(text) for name, pattern in _STORE_FIELDS.items()}
    return {name: int(match.group(1)) for name, match in found.items() if match}


class Sampler(Sampling):
    """Every `every` seconds: the driver's RSS and the object store's use."""

    def __init__(self, debug_state: Path, every: float) -> None:
        super().__init__()
        self.debug_state, self.every = debug_state, every
        self.timeline: list[dict[str, Any]] = []
        self.started = time.perf_counter()

    def sample(self) -> None:
        point = {"t": round(time.perf_counter() - self.started, 2), "driver_rss": driver_rss()}
        self.timeline.append({**point, **object_store(self.debug_state)})

    def peak(self, field: str) -> int:
        return max((point.get(field, 0) for point in self.timeline), default=0)


def measure_listing(src: Path) -> tuple[pa.Table, dict[str, Any]]:
    """list_inputs alone, in the driver, before Ray starts: time, table bytes, peak memory over the start.

    A listing of one folder first pays Arrow's first-use costs (about 50 MB, whatever the
    number of files), so that the figures per row are per row and scale with N."""
    list_inputs(str(min(src.iterdir())))
    gc.collect()
    reset_driver_peak()
    before = driver_rss()
    start = time.perf_counter()
    table = list_inputs(str(src))
    seconds = time.perf_counter() - start
    return table, {
        "rows": table.num_rows,
        "seconds": seconds,
        "table_bytes": table.get_total_buffer_size(),
        "peak_over_start": driver_peak() - before,
    }


def measure_blocks(table: pa.Table, batch_size: int, debug_state: Path, every: float) -> dict[str, Any]:
    """The job's hand-off of the listing to Ray, alone: `ray.data.from_arrow(input_blocks(...))`,
    after one block (which starts a worker, cold); then the object store with every block in it."""
    start = time.perf_counter()
    ray.data.from_arrow(input_blocks(table, batch_size)[:1])
    cold = time.perf_counter() - start
    start = time.perf_counter()
    blocks = input_blocks(table, batch_size)
    ds = ray.data.from_arrow(blocks)
    seconds = time.perf_counter() - start
    time.sleep(every * 1.5)  # let the raylet dump its state with every block in it
    store = object_store(debug_state)
    del ds  # held until here: its blocks stay in the object store while it lives
    return {
        "blocks": len(blocks),
        "rows_per_block": blocks[0].num_rows,
        "first_block_s": cold,
        "seconds": seconds,
        "per_block_s": seconds / len(blocks),
        "store": store,
    }


def run_once(cfg: StylizeConfig, debug_state: Path, every: float) -> dict[str, Any]:
    """One run_stylize call, as users run it, with the samplers beside it; its figures."""
    gc.collect()
    reset_driver_peak()
    rss_before = driver_rss()
    cpu = time.process_time()
    with Sampler(debug_state, every) as sampler, PeakRss() as tree:
        summary = run_stylize(cfg)
    cpu = time.process_time() - cpu - sampler.cpu - tree.cpu  # Ray's threads in this process included
    parts = list((Path(cfg.output.uri) / "_manifest").glob(f"{summary['run_id']}-*.parquet"))
    wall, first = summary["wall_s"], summary["first_rows_s"]
    return {
        "summary": summary,
        "rows_per_s": summary["total"] / wall,
        "after_first_rows_per_s": summary["total"] / max(wall - (first or 0), 1e-9),
        "driver_rss_before": rss_before,
        "driver_peak": driver_peak(),
        "driver_cpu_s": cpu,
        "tree_peak": tree.peak,
        "store_peak": sampler.peak("bytes"),
        "store_objects_peak": sampler.peak("objects"),
        "store_spilled_peak": sampler.peak("spilled"),
        "manifest_parts": len(parts),
        "manifest_bytes": sum(p.stat().st_size for p in parts),
        "timeline": sampler.timeline,
    }


# ---------------------------------------------------------------------------------------------
# report


def human(n: float, unit: str = "B") -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n:.0f} {unit}"


def duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def report(args: argparse.Namespace, gen_s: float | None, listing: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    n, fa, run = listing["rows"], listing["hand_off"], runs[0]
    s = run["summary"]
    wall, first = s["wall_s"], s["first_rows_s"]
    print(
        f"\nadain stylize at scale: {n:,} images {args.size}x{args.size} JPEG, 1 style, batch {args.batch_size}, "
        f"{args.precision} on {args.device}, {os.cpu_count()} CPUs, local Ray, inputs and outputs on local disk"
    )
    generated = "reused from --work" if gen_s is None else f"{duration(gen_s)} ({n / gen_s:,.0f} images/s)"
    print(f"generating the inputs: {generated}\n")
    rows = [
        ("listing alone (list_inputs)", f"{listing['seconds']:.2f} s", f"{n / listing['seconds']:,.0f} rows/s"),
        (
            "  its table / driver peak",
            human(listing["table_bytes"]),
            f"{listing['table_bytes'] / n:.0f} B/row held; driver +{human(listing['peak_over_start'])} at peak "
            f"({listing['peak_over_start'] / n:.0f} B/row)",
        ),
        (
            "blocks to Ray alone (from_arrow)",
            f"{fa['seconds']:.2f} s",
            f"{fa['blocks']:,} blocks of {fa['rows_per_block']:,} rows (input_blocks), "
            f"{1e3 * fa['per_block_s']:.1f} ms/block warm ({fa['first_block_s']:.1f} s for a first one, cold)",
        ),
        (
            "  object store with every block",
            human(fa["store"].get("bytes", 0)),
            f"{fa['store'].get('objects', 0):,} objects",
        ),
        (
            "run: outputs end to end",
            f"{wall:.1f} s",
            f"{run['rows_per_s']:,.1f} rows/s (ok {s['ok']:,}, error {s['error']:,}, skipped {s['skipped']:,})",
        ),
        ("  after the first output", "", f"{run['after_first_rows_per_s']:,.1f} rows/s"),
        (
            "  time to first output",
            "n/a" if first is None else f"{first:.1f} s",
            "" if first is None else f"{first / wall:.0%} of the run (summary's first_rows_s)",
        ),
        (
            "driver (this process) peak RSS",
            human(run["driver_peak"]),
            f"{human(run['driver_rss_before'])} before the run; CPU {run['driver_cpu_s']:.1f} s "
            f"= {1e3 * run['driver_cpu_s'] / s['total']:.2f} ms/row",
        ),
        (
            "Ray process tree peak RSS",
            human(run["tree_peak"]),
            "driver + raylet/GCS + workers (shared pages per process)",
        ),
        (
            "object store peak (pinned)",
            human(run["store_peak"]),
            f"{run['store_objects_peak']:,} objects at most, {human(run['store_spilled_peak'])} spilled at most",
        ),
        (
            "manifest",
            human(run["manifest_bytes"]),
            f"{run['manifest_parts']} parts, {run['manifest_bytes'] / s['total']:.1f} B/row",
        ),
    ]
    for rerun in runs[1:]:
        again = rerun["summary"]
        rows.append(
            (
                "re-run (every output exists)",
                f"{again['wall_s']:.1f} s",
                f"{rerun['rows_per_s']:,.1f} rows/s (skipped {again['skipped']:,}); "
                f"driver peak {human(rerun['driver_peak'])}",
            )
        )
    for name, value, note in rows:
        print(f"{name:34} {value:>11}  {note}")
    late = first is not None and first > wall / 2
    if late:
        print(
            f"NOTE: the first output came after {first / wall:.0%} of the run: outputs did not flow meanwhile"
            + (f" (or start-up filled most of this {wall:.0f} s run)" if wall < SHORT_RUN_S else "")
        )

    # --- extrapolation: linear in N (the listing's sort, N log N, barely more), except the
    # number of blocks, which input_blocks caps in rows per block
    t = args.target
    k = t / n
    rate = args.gpu_rate
    blocks = len(input_blocks(pa.table({"row": pa.nulls(t)}), args.batch_size))
    hand_off = fa["per_block_s"] * blocks
    # CPU time per row of the whole pipeline once it has its blocks (tiny images: mostly per-row overhead)
    core_s = (os.cpu_count() or 1) * (wall - listing["seconds"] - fa["seconds"]) / s["total"]
    driver_s = run["driver_cpu_s"] / s["total"]
    print(f"\nextrapolated to {t:,} images (from this run of {n:,}; local disk, one style):")
    if wall < SHORT_RUN_S:
        print(f"  (a run of {wall:.0f} s: fixed costs weigh in every figure below; use tens of thousands of images)")
    print(f"  listing: {duration(listing['seconds'] * k)} in the driver, before anything else starts")
    print(
        f"  driver memory for the listing: {human(listing['table_bytes'] * k)} held all run (Arrow table), "
        f"{human(listing['peak_over_start'] * k)} at peak while listing"
    )
    print(
        f"  input blocks: {blocks:,} (input_blocks at batch {args.batch_size}), put by the driver: "
        f"{human(fa['store'].get('bytes', 0) * k)} of object store; hand-off {duration(hand_off)} "
        f"at {1e3 * fa['per_block_s']:.1f} ms/block"
    )
    if first is not None:
        # after the hand-off, the actors' start (fixed), unless outputs waited for most inputs (grows with N)
        rest = max(first - listing["seconds"] - fa["seconds"], 0)
        grows = listing["seconds"] * k + hand_off
        if not late:
            print(
                f"  time to first output: {duration(grows + rest)} (listing and hand-off grow with N; "
                f"the rest, {duration(rest)}, is taken as fixed)"
            )
        elif wall < SHORT_RUN_S:  # start-up alone can fill a short run: one run cannot tell the two apart
            print(
                f"  time to first output: between {duration(grows + rest)} (the rest, {duration(rest)}, fixed: "
                f"start-up) and {duration(grows + rest * k)} (outputs waited for the inputs); this run of "
                f"{wall:.0f} s is too short to tell: run more --images"
            )
        else:
            print(
                f"  time to first output: {duration(grows + rest * k)} (listing and hand-off grow with N; the "
                f"rest, {duration(rest)}, too, as outputs waited for most inputs)"
            )
    print(
        f"  manifest: {human(run['manifest_bytes'] / s['total'] * t)}, "
        f"at least {-(-t // 50_000):,} parts (one per 50,000 rows or 30 s)"
    )
    print(f"  driver CPU: {duration(driver_s * t)} ({1 / driver_s:,.0f} rows/s at most through one driver)")
    print(
        f"  CPU per row: {1e3 * core_s:.1f} core-ms at {args.size}px (a floor for 512px, whose JPEG decoding "
        f"and encoding cost more) = {core_s * rate:.1f} cores per GPU at {rate:g} images/s"
    )
    print(f"  GPU rate: {rate:g} images/s per GPU at 512x512 ({GPU_RATE_NOTE if args.gpu_rate_default else 'given'})")
    print(f"  GPU-hours: {t / rate / 3600:,.1f} at {rate:g} images/s per GPU, 512x512")


# ---------------------------------------------------------------------------------------------
# report mode: `adain report` over a generated manifest of N rows

PART_ROWS = 50_000  # ManifestWriter's flush_rows
REASONS = ("not an image, or not a JPEG, PNG, WebP, BMP, TIFF or GIF", "corrupt or truncated JPEG (OSError: {})")


def manifest_part(first: int, n: int, run_id: str) -> bytes:
    """Rows first..first+n of run `run_id`: every 33rd an error, of a few reasons that name their file."""
    uris = [f"s3://photos/batch-{i // FOLDER_SIZE:05d}/IMG_{i:09d}.jpg" for i in range(first, first + n)]
    errors = [i % 33 == 0 for i in range(first, first + n)]
    columns = {
        "input_uri": uris,
        "rel_path": [u.split("/", 3)[3] for u in uris],
        "style": ["scream"] * n,
        "output_uri": [None if e else u.replace("photos", "stylized") for u, e in zip(uris, errors, strict=True)],
        "status": ["error" if e else "ok" for e in errors],
        "error": [REASONS[i % 2].format(u) if e else None for i, (u, e) in enumerate(zip(uris, errors, strict=True))],
        "width": [512] * n,
        "height": [512] * n,
        "encoder_sha256": ["e" * 64] * n,
        "decoder_sha256": ["d" * 64] * n,
        "model_ms": [3.5] * n,
    }
    rows = pa.table(
        {
            name: pa.array(columns.get(name, [None] * n), f.type)
            for name, f in zip(ROW_SCHEMA.names, ROW_SCHEMA, strict=True)
        }
    )
    return table_bytes(rows.append_column("run_id", pa.array([run_id] * n, pa.string())))


def write_manifest(out: Path, rows: int) -> None:
    """OUT/_manifest: a finished run of `rows` rows (its summary written) and an unfinished one over their first 10%."""
    (out / "_manifest").mkdir(parents=True)
    (out / "_runs").mkdir()
    runs = (("20260101T000000Z-000001", rows), ("20260102T000000Z-000002", rows // 10))
    for run_id, n in runs:
        for k, first in enumerate(range(0, n, PART_ROWS)):
            data = manifest_part(first, min(PART_ROWS, n - first), run_id)
            (out / "_manifest" / f"{run_id}-{k:05d}.parquet").write_bytes(data)
    run = {"run_id": runs[0][0], "started_at": "2026-01-01T00:00:00Z", "ok": rows, "error": 0, "skipped": 0}
    (out / "_runs" / f"{runs[0][0]}.json").write_text(json.dumps(run))


def write_crafted(out: Path, rows: int = 300, error_bytes: int = 4 << 20) -> None:
    """OUT/_manifest: one part no job writes, `rows` errors of `error_bytes` each, dictionary-encoded (a few KB)."""
    (out / "_manifest").mkdir(parents=True)
    error = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["x" * error_bytes]))
    uris = [f"/in/{i}.jpg" for i in range(rows)]
    table = pa.table({"run_id": ["r"] * rows, "input_uri": uris, "style": ["s"] * rows, "output_uri": [None] * rows})
    table = table.append_column("status", pa.array(["error"] * rows)).append_column("error", error)
    (out / "_manifest" / "r-00000.parquet").write_bytes(table_bytes(table))


REPORT_CHILD = """
import re, sys, time
from pipeline.cli import main
started = time.perf_counter()
if len(sys.argv) > 1:
    with open("/dev/null", "w") as sys.stdout:
        main(sys.argv[1:])
peak = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
sys.stderr.write(f"{time.perf_counter() - started} {int(peak) * 1024}\\n")
"""  # VmHWM, not ru_maxrss: Linux keeps the forking parent's peak in a child's ru_maxrss across exec


def measure_report(project: Path, argv: list[str]) -> tuple[float, int]:
    """Seconds and peak RSS of `adain ARGV` in a fresh process importing `project`'s pipeline."""
    env = {**os.environ, "PYTHONPATH": str(project)}
    done = subprocess.run([sys.executable, "-c", REPORT_CHILD, *argv], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"adain {' '.join(argv)} failed: {done.stderr.strip().splitlines()[-1:]}")
    seconds, peak = done.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(peak)


def report_mode(args: argparse.Namespace, work: Path) -> None:
    here = Path(__file__).resolve().parents[1]
    projects = [("this tree", here)]
    if args.baseline:
        old = work / "baseline"
        old.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(here), "archive", args.baseline, "pipeline"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        projects.insert(0, (f"baseline {args.baseline}", old))
    for label, project in projects:
        print(f"{label}: importing the CLI alone, peak RSS {human(measure_report(project, [])[1])}")
    for rows in args.report_rows.split(","):
        out = work / f"report-{rows}"
        started = time.perf_counter()
        write_crafted(out) if rows == "crafted" else write_manifest(out, int(rows))
        parts = sorted((out / "_manifest").iterdir())
        size = sum(p.stat().st_size for p in parts)
        what = "crafted part" if rows == "crafted" else f"{int(rows):,} rows"
        print(f"{what}: {len(parts)} parts, {human(size)}, {time.perf_counter() - started:.1f} s to write")
        for label, project in projects:
            for argv in (["report", str(out)], ["report", str(out), "--errors"]):
                seconds, peak = measure_report(project, argv)
                print(f"  {label}: adain {' '.join(argv[:1] + argv[2:])}: {seconds:.1f} s, peak RSS {human(peak)}")
        shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=16, help="side of the generated square JPEGs and --content-size")
    parser.add_argument("--batch-size", type=int, default=16, help="the job's --batch-size (default: the product's)")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--work", help="keep generated inputs and weights here and reuse them (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs (and a temp work dir)")
    parser.add_argument("--rerun", action="store_true", help="run again over the same outputs (all skipped)")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="processes generating the images")
    parser.add_argument("--sample-every", type=float, default=1.0, help="seconds between memory samples")
    parser.add_argument("--target", type=int, default=TARGET, help="images to extrapolate to")
    parser.add_argument(
        "--gpu-rate",
        type=float,
        default=None,
        help=f"images/s of one GPU at 512x512 for the GPU-hours (default {DEFAULT_GPU_RATE:g}: {GPU_RATE_NOTE})",
    )
    parser.add_argument("--json", help="also write every figure and the memory timelines here")
    parser.add_argument(
        "--report-rows",
        help="report mode: `adain report` over manifests of these many rows (N,N,...; crafted: 300 errors of 4 MB)",
    )
    parser.add_argument("--baseline", help="report mode: also measure the pipeline of this git commit")
    args = parser.parse_args()
    if args.report_rows:
        work = Path(tempfile.mkdtemp(prefix="adain-report-", dir=args.work))
        try:
            report_mode(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    args.gpu_rate_default = args.gpu_rate is None
    args.gpu_rate = args.gpu_rate or DEFAULT_GPU_RATE

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="adain-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="out-", dir=work))
    try:
        src, gen_s = generate(work, args.images, args.size, args.procs)
        style, encoder, decoder = style_and_weights(work, args.size)
        table, listing = measure_listing(src)

        # the raylet dumps its state (object store figures included) every --sample-every seconds
        os.environ.setdefault("RAY_debug_dump_period_milliseconds", str(int(args.sample_every * 1000)))
        # a Ray of its own: ray.init() with no address joins the latest cluster started on this
        # machine (/tmp/ray/ray_current_cluster), which may be someone else's; run_stylize keeps this one
        connect("local")  # as the jobs start a Ray: its workers at the driver's priority
        debug_state = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "debug_state.txt"
        listing["hand_off"] = measure_blocks(table, args.batch_size, debug_state, args.sample_every)
        del table
        cfg = StylizeConfig(
            input=str(src),
            styles=(str(style),),
            output=OutputSpec(str(out), "jpg", 90),
            model=ModelConfig(encoder, decoder, args.device, args.precision),
            sizing=Sizing(content_size=args.size, style_size=args.size),
            scale=Scale(batch_size=args.batch_size),
        )
        runs = [run_once(cfg, debug_state, args.sample_every) for _ in range(2 if args.rerun else 1)]
        report(args, gen_s, listing, runs)
        if args.json:
            figures = {"args": vars(args), "generate_s": gen_s, "listing": listing, "runs": runs}
            Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    finally:
        if args.keep:
            print(f"outputs: {out}")
        else:
            shutil.rmtree(out, ignore_errors=True)
            if not args.work:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
