"""Decoder training on a Ray cluster: images in storage -> Ray Data -> TorchTrainer workers -> checkpoints.

    list (driver) -> read + decode + resize + random crop (Ray Data tasks, bad images dropped
    and counted) -> equal shards, one per worker -> DDP steps -> checkpoints and metrics in
    STORAGE/NAME -> the exported decoder, loadable by `adain transfer --decoder`.

Run layout, STORAGE/NAME/:
    run.json                      the config of each session of the run (first start, resumes)
    metrics.jsonl                 one row per logged iteration (losses, lr, samples/s, skipped images)
    checkpoint_00010000/          state.pt (decoder, optimiser, iteration) and samples.jpg
    decoder.pth                   the exported decoder, adain-ray format (with its encoder and config)
    decoder-pytorch-adain.pth     with --export-pytorch-adain: a plain state dict as pytorch-AdaIN saves it
    tensorboard/                  event files, when tensorboard or tensorboardX is installed
    checkpoint_manager_snapshot.json, .validate_storage_marker    Ray Train's own bookkeeping
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import sys
import threading
import time
from dataclasses import asdict
from typing import Any

import ray
import torch
from ray.util.queue import Empty

from pipeline.config import TrainConfig
from pipeline.data.cluster import ONE_ARENA_RUNTIME_ENV, check_fits, connect
from pipeline.errors import AdainError, ConfigError, counted
from pipeline.model.checkpoint import load_decoder, load_encoder, save_checkpoint
from pipeline.model.nets import Decoder
from pipeline.model.sources import naming_the_rest
from pipeline.storage.listing import list_files
from pipeline.storage.uri import check_writable, exists, join, read_bytes, write_bytes
from pipeline.train import loop
from pipeline.train.checkpoints import STATE_FILE, load_training_state
from pipeline.train.data import driver_queue, image_dataset, image_uris, loader_cpus, skipped_images_actor
from pipeline.train.metrics import METRICS_FILE, iteration_line

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
DECODER_FILE = "decoder.pth"
PYTORCH_ADAIN_FILE = "decoder-pytorch-adain.pth"
# Settings that change what a resumed run learns; a difference is reported, not refused.
_TRAINING_SETTINGS = (
    "content", "style", "batch_size", "resize", "crop", "encoder", "content_weight", "style_weight",
    "tv_weight", "lr", "lr_decay", "precision", "workers",
)  # fmt: skip


class TrainingError(AdainError):
    """Training stopped: the workers failed more often than --max-failures allows."""


# ---------------------------------------------------------------------------------------------
# runs: new, resumed, finished


def read_run(cfg: TrainConfig) -> dict[str, Any] | None:
    uri = join(cfg.run_uri, RUN_FILE)
    return json.loads(read_bytes(uri)) if exists(uri) else None


def check_run(cfg: TrainConfig, previous: dict[str, Any] | None, encoder_sha256: str) -> None:
    """A new run must not reuse a name (Ray would silently continue it); --resume needs a run to
    continue, trained with the same encoder."""
    ray_snapshot = exists(join(cfg.run_uri, "checkpoint_manager_snapshot.json"))
    if not cfg.resume and (previous is not None or ray_snapshot):
        raise ConfigError(
            f"{cfg.run_uri} already holds a run named {cfg.name}; pass --resume to continue it, or pick another --name"
        )
    if cfg.resume and previous is None and not ray_snapshot:
        raise ConfigError(f"--resume: no run named {cfg.name} in {cfg.storage}; nothing to continue")
    if cfg.resume and previous is not None:
        trained_for = previous["sessions"][-1]["encoder_sha256"]
        if trained_for != encoder_sha256:
            raise ConfigError(
                f"--resume: --encoder {cfg.encoder} is not the encoder run {cfg.name} was trained with "
                f"(sha256 {trained_for[:12]}); pass the same --encoder"
            )
        before = previous["sessions"][-1]["config"]
        for key in _TRAINING_SETTINGS:
            now = asdict(cfg)[key]
            if key in before and before[key] != now:
                log.warning("--resume: %s is %r now, %r before", key, now, before[key])


def write_run(cfg: TrainConfig, previous: dict[str, Any] | None, encoder_sha256: str) -> None:
    sessions = [] if previous is None else list(previous["sessions"])
    sessions.append(
        {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "resume": cfg.resume,
            "encoder_sha256": encoder_sha256,
            "ray_version": ray.__version__,
            "torch_version": torch.__version__,
            "config": asdict(cfg),
        }
    )
    write_bytes(join(cfg.run_uri, RUN_FILE), json.dumps({"name": cfg.name, "sessions": sessions}, indent=2).encode())


def latest_checkpoint(run_uri: str) -> str | None:
    """The newest complete checkpoint directory under a run (the highest iteration with a state.pt)."""
    names = sorted(
        posixpath.dirname(rel)
        for _, rel in list_files(run_uri, (STATE_FILE,))
        if posixpath.dirname(rel).startswith("checkpoint_") and "/" not in posixpath.dirname(rel)
    )
    return join(run_uri, names[-1]) if names else None


def export_decoder(checkpoint_uri: str, dest: str, pytorch_adain: str | None = None) -> dict[str, Any]:
    """Write a checkpoint's decoder in the adain-ray format at `dest` (and pytorch-AdaIN's plain
    state dict at `pytorch_adain`). Returns the metadata written: encoder sha256, config, iteration, losses."""
    state = load_training_state(read_bytes(join(checkpoint_uri, STATE_FILE)))
    decoder = Decoder()
    decoder.load_state_dict(state["decoder"])
    meta = {
        "encoder": state["encoder_sha256"],
        "config": state["config"],
        "iteration": state["iteration"],
        "losses": state["losses"],
        "checkpoint": checkpoint_uri,
    }
    save_checkpoint(dest, "decoder", decoder, meta)
    if pytorch_adain:
        buffer = io.BytesIO()
        torch.save(decoder.state_dict(), buffer)  # pytorch-AdaIN's decoder.pth: the Sequential's own keys
        write_bytes(pytorch_adain, buffer.getvalue())
    return meta


def _failure_reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line and not line.startswith(("File ", "Traceback", "["))]
    return (errors or lines or [type(exc).__name__])[-1]


def print_iterations(rows: Any, max_iter: int, stop: threading.Event) -> None:
    """Print each metrics row rank 0 puts on `rows` as it comes, until `stop` and the queue is empty."""
    while True:
        try:
            row = rows.get(timeout=0.5)
        except Empty:
            if stop.is_set():
                return
            continue
        except ray.exceptions.RayError:  # the queue is gone with the cluster: nothing more to print
            return
        print(iteration_line(row, max_iter), file=sys.stderr, flush=True)


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or continue training) the run STORAGE/NAME to max_iter, then export its decoder.

    Returns a summary: the iteration reached, final losses, where the decoder and metrics are.
    """
    started = time.time()
    check_writable(cfg.run_uri, "--storage")
    with naming_the_rest((cfg.decoder, "--decoder")):  # offline: every file to fetch named at once
        encoder = load_encoder(cfg.encoder)  # fail here, not on every worker, if the weights are unusable
    if cfg.decoder is not None:
        load_decoder(cfg.decoder)
    previous = read_run(cfg)
    check_run(cfg, previous, encoder.sha256)
    content_uris = image_uris(cfg.content, cfg, "--content")
    style_uris = image_uris(cfg.style, cfg, "--style")
    connect(cfg.address)
    gpus = {"GPU": cfg.workers * cfg.gpus_per_worker} if cfg.gpus_per_worker else {}
    check_fits({"CPU": cfg.workers * cfg.cpus_per_worker, **gpus}, counted(cfg.workers, "training worker"),
               "fewer --workers, --gpus-per-worker 0 or a smaller --cpus-per-worker")  # fmt: skip
    write_run(cfg, previous, encoder.sha256)

    from ray.data import DataContext
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    skipped = skipped_images_actor()
    progress = driver_queue()
    cpus = loader_cpus(cfg)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})}
    data_context = DataContext.get_current()
    progress_bars = data_context.enable_progress_bars
    data_context.enable_progress_bars = False  # one bar per epoch per dataset is noise; metrics.jsonl says more
    try:
        trainer = TorchTrainer(
            loop.train_loop_per_worker,
            train_loop_config={
                "cfg": cfg,
                "skipped": skipped,
                "encoder_sha256": encoder.sha256,
                "progress": progress,
            },
            scaling_config=ScalingConfig(
                num_workers=cfg.workers, use_gpu=cfg.gpus_per_worker > 0, resources_per_worker=resources
            ),
            run_config=RunConfig(
                name=cfg.name,
                storage_path=cfg.storage,
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                # Ray Train runs the loop on a thread of the worker's own: on CPUs it needs one malloc arena.
                worker_runtime_env=None if cfg.gpus_per_worker else ONE_ARENA_RUNTIME_ENV,
            ),
            datasets={
                "content": image_dataset(content_uris, cfg, skipped, cpus),
                "style": image_dataset(style_uris, cfg, skipped, cpus),
            },
        )
    finally:
        data_context.enable_progress_bars = progress_bars
    stop = threading.Event()
    printer = threading.Thread(target=print_iterations, args=(progress, cfg.max_iter, stop), daemon=True)
    printer.start()
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        kept = "its checkpoints are kept in" if latest_checkpoint(cfg.run_uri) else "it has no checkpoint yet in"
        raise TrainingError(
            f"run {cfg.name} failed ({_failure_reason(exc)}); {kept} {cfg.run_uri}: "
            "fix the cause and continue with --resume"
        ) from exc
    finally:
        stop.set()
        printer.join(timeout=5)

    checkpoint = (
        join(cfg.run_uri, posixpath.basename(result.checkpoint.path.rstrip("/")))
        if result.checkpoint is not None
        else latest_checkpoint(cfg.run_uri)
    )
    if checkpoint is None:
        raise TrainingError(f"run {cfg.name} ended without a checkpoint in {cfg.run_uri}")
    decoder_uri = join(cfg.run_uri, DECODER_FILE)
    pytorch_uri = join(cfg.run_uri, PYTORCH_ADAIN_FILE) if cfg.export_pytorch_adain else None
    meta = export_decoder(checkpoint, decoder_uri, pytorch_uri)
    skipped_images = ray.get(skipped.all.remote())
    return {
        "name": cfg.name,
        "run": cfg.run_uri,
        "iteration": meta["iteration"],
        "losses": meta["losses"],
        "checkpoint": checkpoint,
        "decoder": decoder_uri,
        "decoder_pytorch_adain": pytorch_uri,
        "metrics": join(cfg.run_uri, METRICS_FILE),
        "skipped_images": len(skipped_images),
        "skipped": skipped_images,
        "wall_s": round(time.time() - started, 3),
    }
