"""The `adain` command. Flags are parsed and validated here, once, into typed configs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from pipeline.config import PRESERVE_COLOR, Controls, ModelConfig, OutputSpec, Scale, Sizing, StylizeConfig
from pipeline.errors import AdainError, ConfigError
from pipeline.imaging.codec import FORMATS, IMAGE_EXTENSIONS, MAX_PIXELS
from pipeline.model.checkpoint import DEFAULT_DECODER, DEFAULT_ENCODER, KNOWN_WEIGHTS
from pipeline.model.stylizer import PRECISIONS
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
    return ModelConfig(args.encoder, args.decoder, args.device, args.precision)


def controls(args: argparse.Namespace) -> Controls:
    return Controls(args.alpha, args.style_weights, args.preserve_color)


def sizing(args: argparse.Namespace) -> Sizing:
    return Sizing(args.content_size, args.style_size, args.crop, args.max_pixels, args.max_side)


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
        model=model_config(args),
        controls=controls(args),
        sizing=sizing(args),
        scale=Scale(args.actors, args.batch_size, args.cpus_per_actor, args.gpus_per_actor),
        extensions=tuple(e if e.startswith(".") else f".{e}" for e in args.extensions.split(",")),
        input_root=args.input_root,
        address=args.address,
        run_id=args.run_id,
        preview=args.preview,
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
    stylize.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    stylize.add_argument("--input-root", help="for list files: the prefix that output keys are relative to")
    stylize.add_argument("--extensions", default=",".join(IMAGE_EXTENSIONS), help="input file extensions")
    stylize.add_argument("--format", default="jpg", choices=list(FORMATS), help="output format (default jpg)")
    stylize.add_argument("--quality", type=int, default=90, help="JPEG/WebP quality (default 90)")
    stylize.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    stylize.add_argument("--actors", type=int, help="model actors (default: one per GPU, or per spare CPU)")
    stylize.add_argument("--batch-size", type=int, default=16, help="images per model call (default 16)")
    stylize.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs (torch threads) per actor")
    stylize.add_argument("--gpus-per-actor", type=float, default=1.0, help="GPUs per actor on GPU clusters")
    stylize.add_argument("--run-id", help="name this run (default: a timestamp)")
    stylize.add_argument("--preview", help="write a contact sheet of content | output samples here")
    add_model_flags(stylize)
    add_control_flags(stylize)
    add_size_flags(stylize)
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
        if dest in ("style", "styles"):
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
    add_train_command(commands)
    return parser


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the flags; a --config file supplies defaults that the flags then override."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub = commands.choices[args.command]
        sub.set_defaults(**load_options(args.config, sub))
        args = parser.parse_args(argv)
    return args


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
