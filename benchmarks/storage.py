"""Object-store requests and their latency: `adain stylize` against an embedded S3 server.

    python benchmarks/storage.py --images 200 --latencies 0,20,50
    python benchmarks/storage.py --list-entries 10000000

Latency mode: N small JPEGs and one style image on moto's S3 server, reached through the
tests' fault proxy (tests/faults.py), which adds a fixed delay to every request, as a remote
bucket's round trip would; the whole job (`run_stylize`: listing, styles, the pipeline, the
manifest) runs once per latency into a fresh output prefix, on one local Ray, after one
warm-up run (Ray's worker processes started) that is not counted. Printed per
latency: the job's wall time, outputs/s, the ratio to the zero-latency time, and the requests
the proxy saw per output, by kind (GET, PUT, HEAD, LIST = a GET with list-type, other).

List mode: a list file of N URIs (nothing is read or stylized), then, on one local Ray, each
step's time and the driver's peak RSS over it: checking the list file (its schema, before Ray),
`Inputs.of` (Ray Data reads it: pass 1, one stem hash per row to the driver, names that meet
resolved), the job's input Dataset iterated to its end (each batch counted in the tasks), an
index of N existing outputs (`ObjectIndex`, as a re-run lists them), and planning one block
against it; last, the driver's peak RSS over the whole run (ru_maxrss).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project (and its tests' proxy)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # throughput.py and scale.py, next to this file

import boto3
import pyarrow as pa
import ray
from scale import driver_peak, driver_rss, reset_driver_peak
from throughput import make_images, random_weights

from pipeline.config import ModelConfig, OutputSpec, Scale, Sizing, StylizeConfig
from pipeline.data.cluster import connect
from pipeline.data.listing import Inputs, find_inputs
from pipeline.data.plan import EveryStyle, Plan, plan_inputs
from pipeline.data.stylize import run_stylize
from pipeline.data.writers import FileWriter
from pipeline.storage.index import ObjectIndex
from pipeline.storage.keys import output_key
from tests.conftest import free_port
from tests.faults import FaultProxy

KINDS = ("GET", "PUT", "HEAD", "LIST", "other")
BUCKET = "bench"


def kind(method: str, path: str) -> str:
    if method == "GET" and "list-type" in parse_qs(path.partition("?")[2]):
        return "LIST"
    return method if method in KINDS else "other"


def start_s3() -> str:
    """moto's S3 server on 127.0.0.1, with the credentials the SDKs want; its endpoint."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return f"http://127.0.0.1:{port}"


def upload(s3, folder: Path, prefix: str) -> None:
    for path in sorted(folder.iterdir()):
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.name}", Body=path.read_bytes())


def latency_mode(args: argparse.Namespace, work: Path) -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    endpoint = start_s3()
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=BUCKET)
    make_images(work / "photos", args.images, args.size)
    make_images(work / "style", 1, max(args.size, 64), seed=9)
    upload(s3, work / "photos", "photos")
    upload(s3, work / "style", "style")
    encoder, decoder = random_weights(work)
    proxy = FaultProxy(endpoint).start()
    os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint  # before Ray starts: its workers inherit it
    connect("local")  # a Ray of its own, started as the jobs start one

    print(f"{args.images} images {args.size}x{args.size}, 1 style, --io-concurrency {args.io_concurrency}")
    header = f"{'latency':>8} {'seconds':>8} {'outputs/s':>10} {'x zero':>7} " + " ".join(f"{k:>6}" for k in KINDS)
    print(header + f" {'per output':>10} {'first output':>12}")
    zero = None
    for run, ms in enumerate(["warm-up", *args.latencies]):  # the first run also starts Ray's workers: not counted
        proxy.clear()
        if ms != "warm-up" and ms:
            proxy.delay(args.delay_method, args.delay_path, seconds=ms / 1000, times=None)
        cfg = StylizeConfig(
            input=f"s3://{BUCKET}/photos/",
            styles=(f"s3://{BUCKET}/style/",),
            output=OutputSpec(f"s3://{BUCKET}/out-{run}/", "jpg", 90),
            model=ModelConfig(encoder, decoder, "cpu", "fp32"),
            sizing=Sizing(content_size=args.size, style_size=args.size),
            scale=Scale(batch_size=args.batch_size, io_concurrency=args.io_concurrency),
        )
        start = time.perf_counter()
        summary = run_stylize(cfg)
        seconds = time.perf_counter() - start
        if ms == "warm-up":
            continue
        outputs = max(1, summary["ok"])
        zero = zero or seconds
        kinds = Counter(kind(s.method, s.path) for s in proxy.seen())
        per_output = " ".join(f"{kinds[k] / outputs:>6.2f}" for k in KINDS)
        total = sum(kinds.values()) / outputs
        rate = outputs / seconds
        first = summary["first_rows_s"] or float("nan")
        line = f"{ms:>6}ms {seconds:>8.1f} {rate:>10.1f} {seconds / zero:>7.2f} {per_output}"
        print(f"{line} {total:>10.2f} {first:>11.1f}s")
    proxy.stop()


def list_mode(args: argparse.Namespace, work: Path) -> None:
    n = args.list_entries
    list_file = work / f"inputs.{args.list_format}"
    start = time.perf_counter()
    write_list(list_file, n)
    size_mb, seconds = list_file.stat().st_size / 1e6, time.perf_counter() - start
    print(f"list file: {n:,} URIs, {size_mb:.0f} MB ({seconds:.0f} s to write)")
    if not ray.is_initialized():  # the tests' run has its session's
        connect("local")  # a Ray of its own, started as the jobs start one
    print(f"driver RSS at the start (Ray running): {driver_rss() / 1e6:.0f} MB")

    root = f"s3://{BUCKET}/photos"
    found = measured("check the list file (driver, before Ray)", lambda: find_inputs(str(list_file), root=root))
    inputs = measured("pass 1 and names (Ray Data reads it)", lambda: Inputs.of(found))
    print(f"  inputs: {inputs.count:,}")
    listed = measured("the job's Dataset, every row counted in the tasks", lambda: counted(inputs, args.batch_size))
    print(f"  rows: {listed:,}")
    # Every input's output there already, listed in pages of a thousand as S3 returns them.
    pages = (
        ([f"s0/part{i // 5000:05d}/img{i:08d}.jpg" for i in range(k, min(n, k + 1000))], [0] * min(1000, n - k))
        for k in range(0, n, 1000)
    )
    index = measured("index of N existing outputs", lambda: ObjectIndex.from_pages(f"s3://{BUCKET}/out", pages))
    print(f"  index: {len(index):,} entries, {(index.high.nbytes * 3) / 1e6:.0f} MB")
    plan = Plan(EveryStyle(("s0",)), FileWriter(OutputSpec(f"s3://{BUCKET}/out", "jpg"), output_key))
    first = inputs.dataset(args.batch_size).limit(args.batch_size)
    block = pa.concat_tables(first.iter_batches(batch_format="pyarrow", batch_size=None))
    start = time.perf_counter()
    planned = plan_inputs(block, plan, index)
    seconds = time.perf_counter() - start
    done = sum(all(row["done"]) for row in planned)
    print(f"planning one block against it: {len(planned)} rows ({done} done) in {seconds * 1e3:.0f} ms")
    print(f"driver peak RSS over the whole run: {peak_rss() / 1e6:.0f} MB")


def counted(inputs: Inputs, batch_size: int) -> int:
    """Iterate the job's input Dataset to its end, each block reduced to its row count in the tasks."""
    sizes = inputs.dataset(batch_size).map_batches(
        lambda block: {"rows": [block.num_rows]}, batch_format="pyarrow", batch_size=None
    )
    return sum(int(b["rows"].sum()) for b in sizes.iter_batches(batch_format="numpy", batch_size=None))


def measured(what: str, action):
    gc.collect()
    reset_driver_peak()
    before = driver_rss()
    start = time.perf_counter()
    result = action()
    print(f"{what}: {time.perf_counter() - start:.1f} s, driver peak RSS {driver_peak() / 1e6:.0f} MB "
          f"({(driver_peak() - before) / 1e6:+.0f} MB over its start)")  # fmt: skip
    return result


def peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_list(path: Path, n: int) -> None:
    """N URIs in folders of 5,000, as a .txt (one a line) or a Parquet file with a `uri` column."""
    uris = (f"s3://{BUCKET}/photos/part{i // 5000:05d}/img{i:08d}.jpg" for i in range(n))
    if path.suffix == ".txt":
        with path.open("w") as handle:
            for k in range(0, n, 100_000):
                handle.write("\n".join(next(uris) for _ in range(min(100_000, n - k))) + "\n")
        return
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, pa.schema([("uri", pa.string())])) as writer:
        for k in range(0, n, 1_000_000):
            writer.write_table(pa.table({"uri": [next(uris) for _ in range(min(1_000_000, n - k))]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=32, help="side of the generated JPEGs and --content-size")
    parser.add_argument("--latencies", default="0,20,50", help="milliseconds added to every request")
    parser.add_argument("--io-concurrency", type=int, default=16)
    parser.add_argument("--delay-method", help="delay only requests of this method (default: all)")
    parser.add_argument("--delay-path", default="", help="delay only requests whose path contains this")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--list-entries", type=int, help="list mode: a list file of this many URIs")
    parser.add_argument("--list-format", default="txt", choices=["txt", "parquet"])
    args = parser.parse_args()
    args.latencies = [int(ms) for ms in args.latencies.split(",")]
    work = Path(tempfile.mkdtemp(prefix="adain-storage-"))
    try:
        list_mode(args, work) if args.list_entries else latency_mode(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
