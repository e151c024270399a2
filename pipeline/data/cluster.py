"""Where the work runs: joining the cluster, and sizing the model actor pool to it."""

from __future__ import annotations

from typing import Any

import ray
from ray.data import ActorPoolStrategy

from pipeline.config import ModelConfig, Scale


def actor_resources(model: ModelConfig, scale: Scale) -> dict[str, Any]:
    """GPU actors when the cluster has GPUs (or --device cuda asks for them), else CPU actors
    leaving one CPU for decoding and writing. Ray gives each actor one torch thread per CPU."""
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0.0)
    if model.device.startswith("cuda") or (model.device == "auto" and gpus > 0):
        actors = scale.actors or max(1, int(gpus / scale.gpus_per_actor))
        return {
            "compute": ActorPoolStrategy(size=actors),
            "num_gpus": scale.gpus_per_actor,
            "num_cpus": scale.cpus_per_actor,
        }
    actors = scale.actors or max(1, int((resources.get("CPU", 1.0) - 1) // scale.cpus_per_actor))
    return {"compute": ActorPoolStrategy(size=actors), "num_cpus": scale.cpus_per_actor}


def connect(address: str | None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS); with neither, start a local Ray."""
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
