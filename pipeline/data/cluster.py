"""Where the work runs: joining the cluster, and sizing the model actor pool to it."""

from __future__ import annotations

import math
from typing import Any

import ray
import torch
from ray.data import ActorPoolStrategy

from pipeline.config import ModelConfig, Scale


def actor_resources(model: ModelConfig, scale: Scale) -> dict[str, Any]:
    """Ray arguments for the model actor pool.

    GPU actors when the cluster has GPUs (or --device cuda asks for them). On CPU clusters,
    one actor per node by default, holding the node's CPUs less two decoding/writing tasks'
    share (--io-cpus), and running one torch thread per CPU of the node: decoding and
    encoding happen in separate tasks, so the model never waits for them, and the cores
    are not oversubscribed beyond that small share.
    """
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0.0)
    if model.device.startswith("cuda") or (model.device == "auto" and gpus > 0):
        cpus = scale.cpus_per_actor or 1.0
        actors = scale.actors or max(1, int(gpus / scale.gpus_per_actor))
        return {"compute": ActorPoolStrategy(size=actors), "num_gpus": scale.gpus_per_actor, "num_cpus": cpus}
    cpus = scale.cpus_per_actor or max(1.0, worker_node_cpus() - 2 * scale.io_cpus)
    actors = scale.actors or max(1, int(resources.get("CPU", 1.0) // (cpus + 2 * scale.io_cpus)))
    return {"compute": ActorPoolStrategy(size=actors), "num_cpus": cpus}


def torch_threads(scale: Scale) -> int | None:
    """Torch threads for a CPU model actor: every core of its node, unless sized by hand."""
    if scale.cpus_per_actor is not None:
        return max(1, math.ceil(scale.cpus_per_actor))
    return max(1, int(worker_node_cpus()))


def worker_node_cpus() -> float:
    """CPUs of the smallest live node that has any: a head started with CPU 0 (as cluster.yaml's)
    runs no actors, so it must not size them."""
    return min((n["Resources"]["CPU"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")), default=1.0)


def connect(address: str | None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS); with neither, start a local Ray."""
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)


def model_stage(model: ModelConfig, scale: Scale) -> tuple[dict[str, Any], int | None]:
    """The model actors' Ray arguments and their torch threads (None: torch's default, on GPUs)."""
    resources = actor_resources(model, scale)
    return resources, None if "num_gpus" in resources else torch_threads(scale)


def set_threads(threads: int | None) -> None:
    """In a model actor: use exactly the cores it was sized for."""
    if threads is not None:
        torch.set_num_threads(threads)
