"""The `adain` command. Flags are parsed and validated here, once, into typed configs."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from pipeline.config import (
    JPEG_CODECS,
    PRECISIONS,
    PRESERVE_COLOR,
    AugmentConfig,
    Controls,
    ModelConfig,
    OutputSpec,
    Scale,
    Sizing,
    StylizeConfig,
)
from pipeline.errors import AdainError, ConfigError
from pipeline.imaging.codec import FORMATS, IMAGE_EXTENSIONS, MAX_PIXELS
from pipeline.model.sources import DEFAULT_DECODER, DEFAULT_ENCODER, KNOWN_WEIGHTS
from pipeline.train.command import add_train_command


def _weights(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers, e.g. 1,1,2") from None


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    names = ", ".join(KNOWN_WEIGHTS)
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, help=f"encoder weights: path, URI or one of {names}")
    parser.add_argument("--decoder", default=DEFAULT_DECODER, help="decoder weights: path, URI or a known name")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the networks (fuses paddings and ReLUs): 3-5%% faster on a 2-core CPU, GPUs not measured "
        "yet; about 30 s to compile per process and per new image size; for long runs of same-size images (--crop)",
    )


def add_control_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--alpha", type=float, default=1.0, help="content-style trade-off, 0..1 (default 1)")
    parser.add_argument("--style-weights", type=_weights, help="interpolate the styles with these weights")
    parser.add_argument("--preserve-color", choices=PRESERVE_COLOR, help="keep the content's colours")


def add_size_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--content-size", type=int, default=512, help="shorter side in px, 0 keeps (default 512)")
    parser.add_argument("--style-size", type=int, default=512, help="shorter side in px, 0 keeps (default 512)")
    parser.add_argument("--crop", action="store_true", help="centre-crop to NxN after resizing")
    parser.add_argument("--max-side", type=int, default=0, help="cap the longer side after resizing, 0: none")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="refuse larger images (decompression bombs)")


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(args.encoder, args.decoder, args.device, args.precision, args.compile)


def controls(args: argparse.Namespace) -> Controls:
    return Controls(args.alpha, args.style_weights, args.preserve_color)


def sizing(args: argparse.Namespace) -> Sizing:
    return Sizing(args.content_size, args.style_size, args.crop, args.max_pixels, args.max_side)


def scale(args: argparse.Namespace) -> Scale:
    return Scale(args.actors, args.batch_size, args.cpus_per_actor, args.gpus_per_actor, args.io_cpus)


def job_fields(args: argparse.Namespace) -> dict[str, Any]:
    """What the Ray Data jobs (stylize, augment) share: weights, sizes, scale, inputs, cluster, run id."""
    return {
        "model": model_config(args),
        "sizing": sizing(args),
        "scale": dataclasses.replace(scale(args), jpeg_codec=args.jpeg_codec),
        "extensions": _extensions(args.extensions),
        "input_root": args.input_root,
        "address": args.address,
        "run_id": args.run_id,
    }


def _transfer(args: argparse.Namespace) -> int:
    from pipeline.transfer import TransferRequest, run_transfer

    request = TransferRequest(args.content, tuple(args.style), args.output, args.mask, args.format, args.quality)
    failures = run_transfer(request, model_config(args), controls(args), sizing(args))
    return 1 if failures else 0


def _stylize(args: argparse.Namespace) -> int:
    from pipeline.data.stylize import run_stylize

    cfg = StylizeConfig(
        input=args.input,
        styles=tuple(args.style or args.config_styles or ()),
        output=OutputSpec(args.output or "", args.format, args.quality, args.overwrite),
        controls=controls(args),
        preview=args.preview,
        **job_fields(args),
    )
    summary = run_stylize(cfg)
    print(
        f"run {summary['run_id']}: {summary['ok']} ok, {summary['error']} error, {summary['skipped']} skipped "
        f"of {summary['total']} in {summary['wall_s']:.1f} s ({summary['images_per_s'] or 0:.2f} images/s)\n"
        f"manifest: {summary['manifest']}\nsummary:  {summary['summary']}"
        + (f"\npreview:  {summary['preview']}" if "preview" in summary else "")
    )
    return 0


def _add_stylize(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    stylize = commands.add_parser("stylize", help="the distributed job: stylize images in storage on Ray")
    stylize.add_argument("--config", help="YAML file of these options (keys are the flag names)")
    stylize.add_argument("--input", help="prefix/directory of images, or a .parquet/.csv/.txt list of URIs")
    stylize.add_argument("--style", action="append", help="style image or prefix; repeat for several")
    stylize.add_argument("--output", help="output prefix or directory")
    stylize.add_argument("--input-root", help="for list files: the prefix that output keys are relative to")
    stylize.add_argument("--extensions", default=",".join(IMAGE_EXTENSIONS), help="input file extensions")
    stylize.add_argument("--format", default="jpg", choices=list(FORMATS), help="output format (default jpg)")
    stylize.add_argument("--quality", type=int, default=90, help="JPEG/WebP quality (default 90)")
    stylize.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    stylize.add_argument("--run-id", help="name this run (default: a timestamp)")
    stylize.add_argument("--preview", help="write a contact sheet of content | output samples here")
    add_model_flags(stylize)
    add_control_flags(stylize)
    add_size_flags(stylize)
    add_scale_flags(stylize)
    add_codec_flag(stylize)
    stylize.set_defaults(run=_stylize, config_styles=None)
    return stylize


def load_options(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """A YAML file of options, keys as the flag names: checked against the parser's flags."""
    try:
        with open(path) as handle:
            options = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(options, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option: value")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "run")}
    values: dict[str, Any] = {}
    for key, value in options.items():
        dest = str(key).replace("-", "_")
        if dest in ("style", "styles") and "style" in actions:  # stylize: repeated --style
            values["config_styles"] = [value] if isinstance(value, str) else list(value)
            continue
        if dest not in actions:
            raise ConfigError(f"--config {path}: unknown option '{key}'; options are the flag names, e.g. content_size")
        values[dest] = _option_value(actions[dest], value, f"--config {path}: {key}")
    return values


def _option_value(action: argparse.Action, value: Any, where: str) -> Any:
    """A YAML value as the flag would give it: lists as comma-separated text, then the flag's own type."""
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if value is None:
        return None
    text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
    try:
        converted = action.type(text) if action.type else text
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if action.choices and converted not in action.choices:
        raise ConfigError(f"{where}: {converted!r} is not one of {', '.join(map(str, action.choices))}")
    return converted


def _index_styles(args: argparse.Namespace) -> int:
    from pipeline.data.bank import index_styles

    if not args.styles or not args.output:
        raise ConfigError("adain styles index needs --styles and --output")
    result = index_styles(args.styles, args.output, model_config(args), sizing(args), scale(args), args.address)
    for error in result["errors"]:
        print(f"adain: skipped style {error['uri']}: {error['error']}", file=sys.stderr)
    print(
        f"bank {result['bank']}: {result['styles']} styles ({result['encoded']} encoded, {result['unchanged']} "
        f"unchanged, {result['removed']} removed, {len(result['errors'])} unreadable) in {result['wall_s']:.1f} s"
    )
    return 0


def add_scale_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--actors", type=int, help="model actors (default: one per GPU, or per spare CPU)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model call (default 16)")
    parser.add_argument(
        "--cpus-per-actor", type=float, help="CPUs per model actor (default: 1 with a GPU; on CPU, the node's)"
    )
    parser.add_argument("--io-cpus", type=float, default=0.25, help="CPUs per decoding/writing task (default 0.25)")
    parser.add_argument("--gpus-per-actor", type=float, default=1.0, help="GPUs per actor on GPU clusters")


def add_codec_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jpeg-codec",
        default="auto",
        choices=list(JPEG_CODECS),
        help="where JPEGs are decoded and encoded: in the CPU tasks (Pillow) or on the model actors' device "
        "(nvJPEG on GPUs); default auto: model with GPU actors, tasks on CPU",
    )


def _add_styles(commands: argparse._SubParsersAction) -> None:
    styles = commands.add_parser("styles", help="style banks: encode style images once")
    actions = styles.add_subparsers(dest="styles_command", required=True, metavar="ACTION")
    index = actions.add_parser("index", help="build or update a style bank (a Ray Data job)")
    index.add_argument("--config", help="YAML file of these options (keys are the flag names)")
    index.add_argument("--styles", help="style images: a prefix, a directory or one image")
    index.add_argument("--output", help="the bank: a .parquet file (local or object store)")
    add_model_flags(index)
    add_size_flags(index)
    add_scale_flags(index)
    index.set_defaults(run=_index_styles)


def _alpha_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LO,HI, e.g. 0.5,1") from None
    return low, high


def _augment(args: argparse.Namespace) -> int:
    from pipeline.data.augment import run_augment

    alpha_range = args.alpha_range or (args.alpha, args.alpha)
    cfg = AugmentConfig(
        input=args.input,
        styles=args.styles,
        output=OutputSpec(args.output or "", args.format, args.quality, overwrite=True),
        per_image=args.per_image,
        alpha_range=alpha_range,
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
    return 0


def _add_augment(commands: argparse._SubParsersAction) -> None:
    augment = commands.add_parser("augment", help="augment a dataset: N stylized copies per image, incrementally")
    augment.add_argument("--config", help="YAML file of these options (keys are the flag names)")
    augment.add_argument("--input", help="prefix/directory of images, or a .parquet/.csv/.txt list of URIs")
    augment.add_argument("--styles", help="style images (a prefix or an image) or a style bank (.parquet)")
    augment.add_argument("--output", help="output prefix or directory")
    augment.add_argument("--per-image", type=int, default=1, help="stylized copies per input (default 1)")
    augment.add_argument("--alpha", type=float, default=1.0, help="fixed content-style trade-off (default 1)")
    augment.add_argument("--alpha-range", type=_alpha_range, help="draw alpha per output from LO,HI instead")
    augment.add_argument("--seed", type=int, default=0, help="seed of the style and alpha draws (default 0)")
    augment.add_argument("--preserve-color", choices=["luminance"], help="keep the content's colours")
    augment.add_argument("--shards", action="store_true", help="write WebDataset-style tar shards, not files")
    augment.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    augment.add_argument("--format", default="jpg", choices=list(FORMATS), help="output format (default jpg)")
    augment.add_argument("--quality", type=int, default=90, help="JPEG/WebP quality (default 90)")
    augment.add_argument("--input-root", help="for list files: the prefix that output keys are relative to")
    augment.add_argument("--extensions", default=",".join(IMAGE_EXTENSIONS), help="input file extensions")
    augment.add_argument("--run-id", help="name this run (default: a timestamp)")
    augment.add_argument("--lock-ttl", type=float, default=24 * 3600.0, help="seconds a run's lock lasts")
    add_model_flags(augment)
    add_size_flags(augment)
    add_scale_flags(augment)
    add_codec_flag(augment)
    augment.set_defaults(run=_augment)


def _extensions(text: str) -> tuple[str, ...]:
    return tuple(e if e.startswith(".") else f".{e}" for e in text.split(","))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adain", description="AdaIN arbitrary style transfer, from one image to millions."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    transfer = commands.add_parser("transfer", help="stylize files on this machine (no Ray)")
    transfer.add_argument("content", help="content image or directory of images")
    transfer.add_argument("style", nargs="+", help="style image(s) or directories")
    transfer.add_argument("-o", "--output", required=True, help="output file, or directory for several outputs")
    transfer.add_argument("--mask", help="binary mask: foreground takes the first style, background the second")
    transfer.add_argument("--format", default="jpg", choices=list(FORMATS), help="format of outputs in a directory")
    transfer.add_argument("--quality", type=int, default=90, help="JPEG/WebP quality (default 90)")
    add_model_flags(transfer)
    add_control_flags(transfer)
    add_size_flags(transfer)
    transfer.set_defaults(run=_transfer)
    _add_stylize(commands)
    _add_styles(commands)
    _add_augment(commands)
    add_train_command(commands)
    return parser


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the flags; a --config file supplies defaults that the flags then override."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        sub = _chosen_subparser(parser, args)
        sub.set_defaults(**load_options(args.config, sub))
        args = parser.parse_args(argv)
    return args


def _chosen_subparser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost subcommand's parser (`styles index` -> the parser of `index`)."""
    while True:
        commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not commands:
            return parser
        parser = commands[0].choices[getattr(args, commands[0].dest)]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(argv)
    except ConfigError as exc:
        print(f"adain: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="adain: %(message)s")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except AdainError as exc:
        print(f"adain: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("adain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
