"""Where the work runs: joining the cluster, and sizing the model actor pool to it."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

from pipeline.config import ModelConfig, OutputSpec, Scale
from pipeline.data.preflight import WAIT_S, check_address
from pipeline.errors import ClusterError, ConfigError, counted
from pipeline.model.host import ONE_ARENA

T = TypeVar("T")
log = logging.getLogger(__name__)

ONE_ARENA_RUNTIME_ENV = {"env_vars": ONE_ARENA}  # for Ray processes whose model runs off the main thread


def model_stage(model: ModelConfig, scale: Scale, calls: int | None = None) -> tuple[dict[str, Any], int | None]:
    """The model actors' Ray arguments and their torch threads (None: torch's default, on GPUs).
    No more actors than `calls`, the most the job can make at once (its input blocks, where known):
    any more would start, load the model and wait.

    GPU actors when the cluster has GPUs (or --device cuda asks for them), each taking two
    calls at once on threads of its own, so that one batch's host work (Arrow to tensors, the
    upload, the download, JPEG bytes) overlaps the other's kernels. On CPU clusters, actors
    sized by `cpu_pool`, each decoding and writing in turn with its model (`job.OnOneNode`), so
    the cores are not oversubscribed; their processes start with one malloc arena
    (`host.ONE_ARENA`).
    """
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0.0)
    if model.device.startswith("cuda") or (model.device == "auto" and gpus > 0):
        cpus = scale.cpus_per_actor or 1.0
        actors = min(scale.actors or max(1, int(gpus / scale.gpus_per_actor)), calls or math.inf)
        check_fits({"GPU": actors * scale.gpus_per_actor}, f"{counted(actors, 'model actor')} on GPUs", "--device cpu")
        pool = ActorPoolStrategy(size=actors, max_concurrent_calls_per_actor=2, enable_true_multi_threading=True)
        return {"compute": pool, "num_gpus": scale.gpus_per_actor, "num_cpus": cpus}, None
    sized = cpu_pool(worker_nodes_cpus(), resources.get("CPU", 1.0), scale, calls)
    pool = ActorPoolStrategy(size=sized.actors)
    return {"compute": pool, "num_cpus": sized.cpus, "runtime_env": ONE_ARENA_RUNTIME_ENV}, sized.threads


@dataclass(frozen=True)
class CpuPool:
    actors: int
    cpus: float  # asked of Ray by each actor
    threads: int  # torch threads of each actor


def cpu_pool(node_cpus: list[float], total_cpus: float, scale: Scale, calls: int | None = None) -> CpuPool:
    """CPU model actors for worker nodes of `node_cpus` CPUs each (`total_cpus` in the cluster).

    By default one actor per core, each computing on one torch thread. A model on several
    threads meets them at the end of every operation, so work beside it (Ray's own processes,
    the other call's I/O) stalls every thread it preempts; single-thread actors only lose the
    time taken from them. With --actors N each actor gets an even share of a node's cores as
    threads; with --cpus-per-actor C, C CPUs and ceil(C) threads. Each node keeps two decoding
    or writing tasks' CPUs (--io-cpus) beside its actors, for the tasks that read list files
    and, with shards, decode and write. No more actors than `calls`; fewer actors take more
    threads each.
    """
    io = 2 * scale.io_cpus
    if scale.cpus_per_actor is not None:
        cpus = scale.cpus_per_actor
        actors = min(scale.actors or max(1, int(total_cpus // (cpus + io))), calls or math.inf)
        return CpuPool(actors, cpus, max(1, math.ceil(cpus)))
    node = min(node_cpus, default=1.0)  # the smallest node sizes the actors: every node must fit them
    actors = min(scale.actors or max(1, int(total_cpus)), calls or math.inf)
    per_node = math.ceil(actors / max(1, len(node_cpus)))
    threads = max(1, int(node) // per_node)
    # Each actor's share of the node once the I/O tasks' is set aside (at least half of it).
    cpus = threads * max(node - io, node / 2) / max(1, int(node))
    return CpuPool(actors, cpus, threads)


def check_fits(needed: dict[str, float], what: str, instead: str) -> None:
    """Refuse work the cluster cannot hold, where Ray would wait for it in silence: at once in a
    Ray this process started (no autoscaler will add nodes to it); joining a cluster, say in one
    line what the work waits for, as an autoscaler may yet add it (cluster.yaml's GPU nodes start at 0)."""
    have = ray.cluster_resources()
    short = {name: amount for name, amount in needed.items() if have.get(name, 0.0) < amount}
    if not short:
        return
    asked = ", ".join(f"{amount:g} {name}" for name, amount in short.items())
    there = ", ".join(f"{have.get(name, 0.0):g} {name}" for name in short)
    if _started_here():
        raise ClusterError(f"{what} would need {asked}, and this machine's Ray has {there}; pass {instead}")
    log.warning("%s: waiting for %s; the cluster has %s now (an autoscaler may add them; else stop and pass %s)",
                what, asked, there, instead)  # fmt: skip


def _started_here() -> bool:
    """Whether this process started the Ray it is connected to (a local one), not joined a cluster."""
    node = getattr(ray._private.worker.global_worker, "node", None)  # Ray has no public call for this
    return bool(node is not None and node.is_head())


def worker_nodes_cpus() -> list[float]:
    """CPUs of each live node that has any: a head started with CPU 0 (as cluster.yaml's)
    runs no actors, so it must not size them."""
    return [n["Resources"]["CPU"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]


def connect(address: str | None, wait_s: float = WAIT_S) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS); with neither, start a local Ray.

    Ray logs as much as the process's logging does (the CLI's --verbose); by default it keeps
    its progress tables and start-up lines to its log files, as the job reports progress itself."""
    if ray.is_initialized():
        return
    address = check_address(address, wait_s)
    level = logging.getLogger().getEffectiveLevel()
    verbose = level <= logging.INFO
    for name in ("ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(level)
    if not verbose:  # notices that a local Ray turned token authentication on, and that bars are off, as asked
        for name in ("ray._private.authentication.authentication_token_setup", "ray.data._internal.progress"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # Ray Data's advice when a pool has more actors than a job has blocks: a video job's
        # segments are known only as the job runs, and a short video leaves actors idle.
        warnings.filterwarnings("ignore", "The minimum number of concurrent actors", UserWarning)
    # A Ray this process starts runs its workers at the driver's priority, not niced to 15 as Ray's
    # default: the model actors are the job's work, and `adain transfer` computes at that priority too.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # A Ray this process starts has no dashboard (the job reports its own progress): its processes
    # only slow the start on a small machine. Joining a cluster, Ray ignores the flag.
    try:
        ray.init(
            address=address, log_to_driver=verbose, logging_level=max(level, logging.INFO), include_dashboard=False
        )
    except Exception as exc:
        if address in (None, "auto", "local"):
            _local_ray_failed(exc)
        if not isinstance(exc, (ConnectionError, ray.exceptions.AuthenticationError)):
            raise
        # Ray 2.60 clusters use token authentication, and Ray sends no token to an explicit address unasked.
        raise ClusterError(
            f"could not join the Ray cluster at {address} ({str(exc).strip().splitlines()[0]}); if it uses token "
            "authentication, set RAY_AUTH_MODE=token and its token (~/.ray/auth_token on the head) in "
            "~/.ray/auth_token or RAY_AUTH_TOKEN here"
        ) from None
    ray.data.DataContext.get_current().enable_progress_bars = verbose


def _local_ray_failed(exc: Exception) -> NoReturn:
    """A local Ray that did not start (a node timed out on a loaded machine, a temp dir it cannot use):
    what Ray said, in one line, and where its logs are, with what it started stopped."""
    ray.shutdown()
    said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    raise ClusterError(
        f"could not start a local Ray ({said}); check that this machine has CPU and memory to spare and that "
        f"{ray_temp_dir()} is writable, see the logs under it, or pass --address to join a running cluster"
    ) from None


def ray_temp_dir() -> str:
    """Where a local Ray keeps its sessions and logs: RAY_TMPDIR, else the system's temporary folder's ray/."""
    return os.path.join(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray")


def connect_while(address: str | None, work: Callable[[], T]) -> T:
    """`connect`, while `work` runs on a thread of its own; returns what `work` returns.

    The jobs encode their styles so: loading torch and the encoder keeps one core busy for
    seconds, and Ray's start is seconds of waiting on the processes it launches."""
    with ThreadPoolExecutor(1, thread_name_prefix="adain-styles") as pool:
        working = pool.submit(work)
        connect(address)
        return working.result()


def fetched(value: T | ray.ObjectRef) -> T:
    """`value`, or what it refers to when it is in the object store (what a task or actor was handed by `ray.put`)."""
    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def jpeg_on_model(
    scale: Scale, actor_args: dict[str, Any], output: OutputSpec, codec_error: str | None = None
) -> tuple[bool, int | None]:
    """Whether plain JPEG inputs are decoded on the model actors' device, and the quality JPEG
    outputs are encoded at there (None: in the writing tasks), per --jpeg-codec. By default on
    GPU actors, where nvJPEG frees the node's CPUs; on CPU actors, Pillow does it on the
    actor's own cores, for every format alike. Where TorchCodec cannot run
    (`codec_error`, as `device_codec.unavailable()` says), auto keeps JPEGs in the tasks."""
    if codec_error and scale.jpeg_codec == "model":
        raise ConfigError(
            f"--jpeg-codec model: TorchCodec cannot run here ({codec_error}); install the torchcodec "
            "build that matches your torch (CPU or CUDA), or use --jpeg-codec tasks"
        )
    if codec_error:
        return False, None
    on_model = "num_gpus" in actor_args if scale.jpeg_codec == "auto" else scale.jpeg_codec == "model"
    return on_model, output.quality if on_model and output.format == "jpg" else None


# Input blocks: a batch each at least (a block's outputs reach the driver when its last one is
# written, so small jobs stream from their first batch on), at most this many rows (each block
# costs the driver a `ray.put` and a metadata task, so millions of inputs in small blocks take
# minutes to hand over), aiming at this many blocks.
_MAX_BLOCK_ROWS = 1024
_TARGET_BLOCKS = 200


def block_rows(inputs: int, batch_size: int) -> int:
    """Rows per input block for a listing of `inputs` rows."""
    return max(batch_size, min(_MAX_BLOCK_ROWS, math.ceil(inputs / _TARGET_BLOCKS)))


def input_blocks(table: pa.Table, batch_size: int) -> list[pa.Table]:
    """The listing cut into the blocks handed to Ray Data."""
    rows = block_rows(table.num_rows, batch_size)
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)]


def rows_as_made(ds: ray.data.Dataset, actor_args: dict[str, Any]) -> Iterator[pa.Table]:
    """The job's rows (`ds`'s blocks) on the driver, each as soon as its call is done.

    No block is prefetched: Ray Data's iterator holds a block back until the one after it is
    ready too, so each call's rows (and the first output) reached the manifest and the progress
    one model call late. The driver only counts and records rows; prefetching gains it nothing.

    On CPU model actors, Ray Data's per-stage CPU reservation is off. It sets aside a share of the
    CPUs for each stage, upstream first; the CPU model actors hold all but two I/O tasks' share of
    each node, so the writing stage got less than one task's CPUs while decoding had inputs left,
    and outputs waited until every input was decoded. The setting is the dataset's own context,
    so other datasets in the process keep theirs.
    """
    if "num_gpus" not in actor_args:
        ds.context.op_resource_reservation_ratio = 0.0
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0)
