"""The distributed stylization job end to end, on the session's local Ray instance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pipeline.config import ModelConfig, OutputSpec, Scale, Sizing, StylizeConfig
from pipeline.data.cluster import CpuPool, cpu_pool, input_blocks
from pipeline.data.stylize import run_stylize
from tests import images
from tests.conftest import S3Server, WeightFiles


def config(weights: WeightFiles, input: str, styles: tuple[str, ...], output: str, **kw) -> StylizeConfig:
    return StylizeConfig(
        input=input,
        styles=styles,
        output=OutputSpec(output, kw.pop("format", "png")),
        model=ModelConfig(str(weights.vgg), str(weights.decoder), "cpu"),
        sizing=Sizing(content_size=32, style_size=32),
        **kw,
    )


def test_local_directories(ray_cluster: str, weights: WeightFiles, tmp_path: Path) -> None:
    src = tmp_path / "in"
    images.write(src / "a.jpg", images.encoded(48, 40))
    images.write(src / "nested" / "b.PNG", images.encoded(40, 64, "PNG", seed=1))
    style = images.write(tmp_path / "styles" / "wave.jpg", images.encoded(32, 32, seed=2))
    out = tmp_path / "out"
    summary = run_stylize(config(weights, str(src), (str(style),), str(out)))
    assert summary["ok"] == 2 and summary["error"] == 0 and summary["skipped"] == 0
    assert Image.open(out / "wave" / "a.png").size == (38, 32)
    assert Image.open(out / "wave" / "nested" / "b.png").size == (32, 51)
    manifest = pd.read_parquet(out / "_manifest")
    assert len(manifest) == 2 and set(manifest.status) == {"ok"}
    assert json.loads((out / "_runs" / f"{summary['run_id']}.json").read_text())["ok"] == 2


def test_s3_prefixes(ray_cluster: str, weights: WeightFiles, s3_server: S3Server, bucket: str) -> None:
    s3 = s3_server.client()
    s3.put_object(Bucket=bucket, Key="photos/x.jpg", Body=images.encoded(40, 40))
    s3.put_object(Bucket=bucket, Key="photos/sub/y.webp", Body=images.encoded(40, 40, "WEBP", seed=3))
    s3.put_object(Bucket=bucket, Key="styles/one.png", Body=images.encoded(32, 32, "PNG", seed=4))
    s3.put_object(Bucket=bucket, Key="styles/two.png", Body=images.encoded(32, 32, "PNG", seed=5))
    cfg = config(weights, f"s3://{bucket}/photos", (f"s3://{bucket}/styles/",), f"s3://{bucket}/out", format="jpg")
    summary = run_stylize(cfg)
    assert (summary["ok"], summary["total"]) == (4, 4)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]}
    assert {"out/one/x.jpg", "out/one/sub/y.jpg", "out/two/x.jpg", "out/two/sub/y.jpg"} <= keys
    assert any(k.startswith("out/_manifest/") for k in keys)
    assert f"out/_runs/{summary['run_id']}.json" in keys


def test_io_stages_start_without_torch() -> None:
    """Decode/write workers import only their own module: torch would cost each of them about two
    CPU-seconds at start-up, taken from the model actor on a small node."""
    modules = "pipeline.data.decode, pipeline.data.plan, pipeline.data.writers"
    code = f"import sys, {modules}; print(sorted(m for m in ('torch', 'torchcodec') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_input_blocks_cover_the_listing_in_bounded_blocks() -> None:
    """Every input in exactly one block, in order; a batch per block at least (small jobs stream
    from their first batch), and few enough blocks that handing 10M inputs to Ray does not take minutes."""
    table = pa.table({"input_uri": [f"s3://b/{i:07d}.jpg" for i in range(100_000)]})
    blocks = input_blocks(table, batch_size=16)
    assert pa.concat_tables(blocks).equals(table)
    assert all(16 <= b.num_rows <= 1024 for b in blocks[:-1]) and len(blocks) <= 200
    small = input_blocks(table.slice(0, 40), batch_size=8)
    assert [b.num_rows for b in small] == [8] * 5


def fits(node: float, actors: int, cpus: float, io_cpus: float) -> bool:
    """`actors` of `cpus` CPUs each fit on a node of `node` CPUs beside two I/O tasks."""
    return actors * cpus + 2 * io_cpus <= node + 1e-9


@given(
    nodes=st.lists(st.integers(1, 96), min_size=1, max_size=5),
    io_cpus=st.sampled_from([0.1, 0.25, 0.5]),
    actors=st.none() | st.integers(1, 64),
    calls=st.none() | st.integers(1, 64),
)
def test_cpu_actors_fit_their_nodes_beside_the_io_tasks(
    nodes: list[int], io_cpus: float, actors: int | None, calls: int | None
) -> None:
    """CPU actor pools: by default one single-thread actor per core of every node; with --actors N,
    an even share of a node's cores each; never more actors than the job's calls at once. Every
    node keeps two I/O tasks' CPUs (list files are read by tasks), and the actors never ask for
    more threads than their node has cores."""
    pool = cpu_pool([float(n) for n in nodes], float(sum(nodes)), Scale(actors=actors, io_cpus=io_cpus), calls)
    smallest = min(nodes)
    assert pool.threads >= 1 and pool.cpus > 0
    assert pool.actors == min(actors or sum(nodes), calls or sum(nodes) + 64)
    if pool.actors == sum(nodes):
        assert pool.threads == 1
    if 2 * io_cpus > smallest / 2:
        return  # a node too small to keep the I/O share: the model takes half of it, at least
    # Ray can place them all: each node takes as many as fit beside its I/O tasks.
    room = sum(max(k for k in range(n + 1) if fits(n, k, pool.cpus, io_cpus)) for n in nodes)
    assert room >= min(pool.actors, sum(nodes) // pool.threads)
    per_node = -(-pool.actors // len(nodes))
    if per_node <= smallest:  # not more actors than cores: their threads share the cores, no more
        assert per_node * pool.threads <= smallest
        assert fits(smallest, per_node, pool.cpus, io_cpus)
    if actors == 1 and len(nodes) == 1:  # one actor holds the node, less the I/O share
        assert pool.threads == smallest and abs(pool.cpus - (smallest - 2 * io_cpus)) < 1e-9


def test_cpu_actors_sized_by_hand() -> None:
    """--cpus-per-actor C: C CPUs and ceil(C) torch threads each, as many as fit with their I/O share."""
    pool = cpu_pool([16.0, 16.0], 32.0, Scale(cpus_per_actor=3.5))
    assert (pool.actors, pool.cpus, pool.threads) == (8, 3.5, 4)
    assert cpu_pool([16.0], 16.0, Scale(actors=2, cpus_per_actor=4)).actors == 2
    assert cpu_pool([16.0], 16.0, Scale(cpus_per_actor=4), calls=2).actors == 2
    # A job of one call on a 2-CPU node: one actor, on both cores.
    assert cpu_pool([2.0], 2.0, Scale(), calls=1) == CpuPool(1, 1.5, 2)
