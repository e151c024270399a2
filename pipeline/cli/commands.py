"""Each `adain` command: its typed configs from the parsed flags, the run, and what it prints."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.config import (
    AugmentConfig,
    Controls,
    ModelConfig,
    OutputSpec,
    Scale,
    Sizing,
    StylizeConfig,
    TrainConfig,
    VideoSpec,
)
from pipeline.errors import ConfigError, counted, one_line

# Exit statuses (README "Exit statuses"): every output ok or already there; the run failed (one
# line says why); the configuration is wrong (a ConfigError); the run finished, with error rows; interrupted.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR_ROWS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def extensions(text: str) -> tuple[str, ...]:
    return tuple(e if e.startswith(".") else f".{e}" for e in str(text).split(",") if e)


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(args.encoder, args.decoder, args.device, args.precision, args.compile)


def controls(args: argparse.Namespace) -> Controls:
    return Controls(args.alpha, args.style_weights, args.preserve_color)


def sizing(args: argparse.Namespace) -> Sizing:
    return Sizing(args.content_size, args.style_size, args.crop, args.max_pixels, args.max_side)


def scale(args: argparse.Namespace) -> Scale:
    return Scale(
        args.actors, args.batch_size, args.cpus_per_actor, args.gpus_per_actor, args.io_cpus,
        getattr(args, "jpeg_codec", "auto"), args.io_concurrency,
    )  # fmt: skip


def job_fields(args: argparse.Namespace) -> dict[str, Any]:
    """What the Ray Data jobs (stylize, augment) share: weights, sizes, scale, inputs, cluster, run id."""
    return {
        "model": model_config(args),
        "sizing": sizing(args),
        "scale": scale(args),
        "extensions": extensions(args.extensions),
        "input_root": args.input_root,
        "address": args.address,
        "run_id": args.run_id,
    }


def transfer(args: argparse.Namespace) -> int:
    from pipeline.transfer import TransferRequest, run_transfer

    request = TransferRequest(
        args.content, tuple(args.style), args.output, args.mask, args.format, args.quality,
        args.temporal_smoothing, args.video_quality,
    )  # fmt: skip
    failures = run_transfer(request, model_config(args), controls(args), sizing(args))
    return EXIT_ERROR_ROWS if failures else EXIT_OK


def stylize(args: argparse.Namespace) -> int:
    from pipeline.data.stylize import run_stylize

    cfg = StylizeConfig(
        input=args.input,
        styles=tuple(args.style or ()),
        output=OutputSpec(args.output or "", args.format, args.quality, args.overwrite),
        controls=controls(args),
        preview=args.preview,
        video=VideoSpec(args.temporal_smoothing, args.video_quality, args.segment_seconds, args.video_decoder),
        **job_fields(args),
    )
    summary = run_stylize(cfg)
    print(
        f"run {summary['run_id']}: {summary['ok']} ok, {summary['error']} error, {summary['skipped']} skipped "
        f"of {summary['total']} in {summary['wall_s']:.1f} s ({summary['images_per_s'] or 0:.2f} images/s)\n"
        f"manifest: {summary['manifest']}\nsummary:  {summary['summary']}"
        + (f"\npreview:  {summary['preview']}" if "preview" in summary else "")
    )
    return outcome(summary, cfg.output.uri)


def outcome(summary: dict[str, Any], output: str) -> int:
    """Name the first failed inputs, say how to list them all; the exit status of a finished run."""
    if not summary["error"]:
        return EXIT_OK
    for failure in summary["failures"]:
        line = f"adain: failed: {failure['input_uri']} ({failure['style']}): {failure['error']}"
        print(one_line(line), file=sys.stderr)
    more = summary["error"] - len(summary["failures"])
    print(
        f"adain: {counted(summary['error'], 'output')} failed{f' ({more} more not shown)' if more > 0 else ''}; "
        f"list them all with: adain report {output} --errors",
        file=sys.stderr,
    )
    return EXIT_ERROR_ROWS


def index_styles(args: argparse.Namespace) -> int:
    from pipeline.data.bank import index_styles

    if not args.style or not args.output:
        raise ConfigError("adain styles index needs --style and --output")
    result = index_styles(args.style, args.output, model_config(args), sizing(args), scale(args), args.address)
    for error in result["errors"]:
        print(one_line(f"adain: skipped style {error['uri']}: {error['error']}"), file=sys.stderr)
    styles = counted(result["styles"], "style")
    print(
        f"bank {result['bank']}: {styles} ({result['encoded']} encoded, {result['unchanged']} unchanged, "
        f"{result['removed']} removed, {len(result['errors'])} unreadable) in {result['wall_s']:.1f} s"
    )
    return 0


def augment(args: argparse.Namespace) -> int:
    from pipeline.data.augment import run_augment

    cfg = AugmentConfig(
        input=args.input,
        styles=args.style,
        output=OutputSpec(args.output or "", args.format, args.quality, overwrite=True),
        per_image=args.per_image,
        alpha_range=args.alpha_range or (args.alpha, args.alpha),
        seed=args.seed,
        shards=args.shards,
        shard_size=args.shard_size,
        preserve_color=args.preserve_color,
        lock_ttl_s=args.lock_ttl,
        **job_fields(args),
    )
    summary = run_augment(cfg)
    print(
        f"run {summary['run_id']}: inputs {summary['inputs_new']} new, {summary['inputs_changed']} changed, "
        f"{summary['inputs_unchanged']} unchanged; outputs {summary['ok']} ok, {summary['error']} error "
        f"in {summary['wall_s']:.1f} s\nmanifest: {summary['manifest']}\nrun log:  {summary['summary']}"
    )
    return outcome(summary, cfg.output.uri)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The parsed flags (and --config values) as a validated TrainConfig."""
    return TrainConfig(
        content=args.content or "",
        style=args.style or "",
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
        extensions=extensions(args.extensions),
        max_pixels=args.max_pixels,
        address=args.address,
    )


def run_train(args: argparse.Namespace) -> int:
    from pipeline.train.trainer import run_training

    summary = run_training(train_config(args))
    losses = ", ".join(f"{k} {v:.4g}" for k, v in summary["losses"].items())
    print(
        f"run {summary['name']}: iteration {summary['iteration']} ({losses}) in {summary['wall_s']:.1f} s, "
        f"{counted(summary['skipped_images'], 'unreadable image')} skipped\n"
        f"decoder:    {summary['decoder']}\n"
        + (f"pytorch-AdaIN decoder: {summary['decoder_pytorch_adain']}\n" if summary["decoder_pytorch_adain"] else "")
        + f"checkpoint: {summary['checkpoint']}\nmetrics:    {summary['metrics']}"
    )
    return 0



def report(args: argparse.Namespace) -> int:
    from pipeline.data.report import failed, read_report, text, write_html

    result = read_report(args.output)
    print(text(result, errors_listed=args.errors))
    if args.errors:
        for row in failed(result):
            print("\t".join(one_line(str(row[key])) for key in ("input_uri", "style", "error")))
    if args.html:
        write_html(result, args.html, args.samples)
        print(f"html: {args.html}")
    return EXIT_OK
