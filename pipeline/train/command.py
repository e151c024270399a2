"""`adain train`: the flags of a training run, parsed into a TrainConfig and run on Ray."""

from __future__ import annotations

import argparse

from pipeline.errors import ConfigError
from pipeline.imaging.codec import IMAGE_EXTENSIONS, MAX_PIXELS
from pipeline.model.sources import DEFAULT_ENCODER, KNOWN_WEIGHTS
from pipeline.train.loop import PRECISIONS, TrainConfig


def add_train_command(commands: argparse._SubParsersAction) -> None:
    """Register `train` (flags, and `--config YAML` with the flag names as keys)."""
    train = commands.add_parser(
        "train",
        help="train an AdaIN decoder on Ray (images in storage, checkpoints and metrics in STORAGE/NAME)",
        description="Distributed AdaIN decoder training as pytorch-AdaIN's train.py does it, on Ray Train.",
    )
    train.add_argument("--config", help="YAML file of these options (keys are the flag names)")
    data = train.add_argument_group("data and storage")
    data.add_argument("--content", help="content images: prefix/directory, or a .txt/.csv/.parquet list of URIs")
    data.add_argument("--style", help="style images: prefix/directory, or a list file")
    data.add_argument("--storage", help="where runs live (local path, s3://, gs://); this run goes to STORAGE/NAME")
    data.add_argument("--name", help="the run's name; with --resume, the run to continue")
    data.add_argument("--resume", action="store_true", help="continue the run NAME from its latest checkpoint")
    data.add_argument("--resize", type=int, default=512, help="resize to NxN, ignoring the aspect (default 512)")
    data.add_argument("--crop", type=int, default=256, help="then a random NxN crop (default 256)")
    data.add_argument("--extensions", default=",".join(IMAGE_EXTENSIONS), help="image file extensions to list")
    data.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="skip larger images (decompression bombs)")

    scale = train.add_argument_group("cluster")
    scale.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    scale.add_argument("--workers", type=int, default=1, help="training workers, one DDP process each (default 1)")
    scale.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker; 0 trains on CPUs")
    scale.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (default 1)")
    scale.add_argument(
        "--loader-cpus", type=float, help="CPUs per decoding task (default: 1 if the workers leave one free, else 0)"
    )
    scale.add_argument("--max-failures", type=int, default=3, help="worker-group restarts from the latest checkpoint")

    schedule = train.add_argument_group("objective and schedule")
    names = ", ".join(KNOWN_WEIGHTS)
    schedule.add_argument("--encoder", default=DEFAULT_ENCODER, help=f"frozen VGG encoder: path, URI or one of {names}")
    schedule.add_argument("--decoder", help="start from these decoder weights (fine-tuning); default: a fresh decoder")
    schedule.add_argument("--batch-size", type=int, default=8, help="images per worker per step (default 8)")
    schedule.add_argument("--max-iter", type=int, default=160_000, help="train to this many steps (default 160000)")
    schedule.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    schedule.add_argument("--lr-decay", type=float, default=5e-5, help="step i runs at lr / (1 + lr_decay * i)")
    schedule.add_argument("--content-weight", type=float, default=1.0, help="weight of the content loss (default 1)")
    schedule.add_argument("--style-weight", type=float, default=10.0, help="weight of the style loss (default 10)")
    schedule.add_argument("--tv-weight", type=float, default=0.0, help="weight of total variation (default 0)")
    schedule.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="bf16 autocasts the nets")
    schedule.add_argument("--seed", type=int, default=0, help="seed of the fresh decoder's weights")

    outputs = train.add_argument_group("checkpoints and outputs")
    outputs.add_argument("--checkpoint-every", type=int, default=10_000, help="steps between checkpoints")
    outputs.add_argument("--keep-checkpoints", type=int, default=3, help="keep the newest N checkpoints (default 3)")
    outputs.add_argument("--log-every", type=int, default=100, help="steps between metrics rows (default 100)")
    outputs.add_argument("--samples", type=int, default=4, help="rows of the sample grid in each checkpoint")
    outputs.add_argument(
        "--export-pytorch-adain", action="store_true", help="also write decoder-pytorch-adain.pth (a plain state dict)"
    )
    train.set_defaults(run=run_train, config_styles=None)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The parsed flags (and --config values) as a validated TrainConfig."""
    style = args.style
    if style is None and args.config_styles:  # the shared YAML loader hands `style` over as a list
        if len(args.config_styles) != 1:
            raise ConfigError("--config: give `style` as one prefix (or list file) of style images")
        style = args.config_styles[0]
    return TrainConfig(
        content=args.content or "",
        style=style or "",
        storage=args.storage or "",
        name=args.name or "",
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        loader_cpus=args.loader_cpus,
        batch_size=args.batch_size,
        max_iter=args.max_iter,
        resize=args.resize,
        crop=args.crop,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        keep_checkpoints=args.keep_checkpoints,
        max_failures=args.max_failures,
        encoder=args.encoder,
        decoder=args.decoder,
        content_weight=args.content_weight,
        style_weight=args.style_weight,
        tv_weight=args.tv_weight,
        lr=args.lr,
        lr_decay=args.lr_decay,
        precision=args.precision,
        export_pytorch_adain=bool(args.export_pytorch_adain),
        resume=bool(args.resume),
        samples=args.samples,
        seed=args.seed,
        extensions=tuple(e if e.startswith(".") else f".{e}" for e in str(args.extensions).split(",") if e),
        max_pixels=args.max_pixels,
        address=args.address,
    )


def run_train(args: argparse.Namespace) -> int:
    from pipeline.train.trainer import run_training

    summary = run_training(train_config(args))
    losses = ", ".join(f"{k} {v:.4g}" for k, v in summary["losses"].items())
    print(
        f"run {summary['name']}: iteration {summary['iteration']} ({losses}) in {summary['wall_s']:.1f} s, "
        f"{summary['skipped_images']} unreadable images skipped\n"
        f"decoder:    {summary['decoder']}\n"
        + (f"pytorch-AdaIN decoder: {summary['decoder_pytorch_adain']}\n" if summary["decoder_pytorch_adain"] else "")
        + f"checkpoint: {summary['checkpoint']}\nmetrics:    {summary['metrics']}"
    )
    return 0
