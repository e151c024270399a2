"""Every command's flags, in one place: `build_parsers` makes the `adain` parser and each command's own."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, NoReturn

from pipeline.cli import commands as run
from pipeline.config import JPEG_CODECS, PRESERVE_COLOR, VIDEO_DECODERS
from pipeline.errors import one_line
from pipeline.imaging.codec import (
    FORMATS,
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    SEGMENT_SECONDS,
    VIDEO_EXTENSIONS,
    VIDEO_QUALITY,
)
from pipeline.model.precision import PRECISIONS, TRAINING_PRECISIONS
from pipeline.model.sources import DEFAULT_DECODER, DEFAULT_ENCODER, KNOWN_DECODERS, KNOWN_ENCODERS

# The flags whose value is a comma-separated list: a YAML list for one of them is its items joined.
COMMA_LISTS = frozenset({"extensions", "style_weights", "alpha_range"})

Parsers = dict[tuple[str, ...], argparse.ArgumentParser]  # command words -> that command's parser
Commands = Any  # what ArgumentParser.add_subparsers returns (argparse gives it no public type)


def number(text: str) -> float:
    """A flag's number: finite, since nan and inf pass every `<` and `<=` check the configs make."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number")
    return value


number.__name__ = "float"  # argparse's "invalid float value: 'x'" for what is not a number at all


INT_MAX = 2**31 - 1  # far past any real count or size, and within every int32 column (the manifest's per_image)


def integer(text: str) -> int:
    """A flag's whole number, within 32 bits: a count or a size far past any real one would
    overflow where it meets Arrow (a batch size of 1e23), NumPy or torch."""
    value = int(text)
    if not -INT_MAX <= value <= INT_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number from -{INT_MAX} to {INT_MAX}")
    return value


integer.__name__ = "int"  # argparse's "invalid int value: 'x'" for what is not a whole number at all


def _weights(text: str) -> tuple[float, ...]:
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers, e.g. 1,1,2") from None
    if not math.isfinite(sum(weights)):  # nan, inf, or finite weights whose sum overflows
        raise argparse.ArgumentTypeError(f"{text!r}: expected finite numbers, e.g. 1,1,2")
    return weights


def _alpha_range(text: str) -> tuple[float, float]:
    try:
        low, high = (number(v) for v in text.split(","))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected LO,HI, e.g. 0.5,1") from None
    return low, high


class _Parser(argparse.ArgumentParser):
    """A refused flag is its one line and where the help is: the usage, a screenful, is what --help shows."""

    def error(self, message: str) -> NoReturn:
        self.exit(run.EXIT_USAGE, f"{self.prog}: error: {one_line(message)}\nsee: {self.prog} --help\n")


class _Help(argparse.HelpFormatter):
    """Every flag's help ends with its default, where it has one and the help does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default %(default)s)" if text else "(default %(default)s)"


def _config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of these options (keys are the flag names)")


def _model(parser: argparse.ArgumentParser, decoder: bool = True) -> None:
    encoders = ", ".join(KNOWN_ENCODERS)
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, help=f"encoder weights: path, URI or one of {encoders}")
    if decoder:
        names = ", ".join(KNOWN_DECODERS)
        parser.add_argument("--decoder", default=DEFAULT_DECODER, help=f"decoder weights: path, URI or one of {names}")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="the networks' number format")
    if decoder:
        parser.add_argument(
            "--compile",
            action="store_true",
            help="torch.compile the networks (fuses paddings and ReLUs); compiles once per process and image size, "
            "so it pays on long runs of same-size images (--crop)",
        )


def _controls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--alpha", type=number, default=1.0, help="content-style trade-off, 0..1 (default 1)")
    parser.add_argument("--style-weights", type=_weights, help="interpolate the styles with these weights")
    parser.add_argument("--preserve-color", choices=PRESERVE_COLOR, help="keep the content's colours")


def _sizes(parser: argparse.ArgumentParser, content: bool = True) -> None:
    if content:
        parser.add_argument(
            "--content-size", type=integer, default=512, help="shorter side in px, 0 keeps (default 512)"
        )
    parser.add_argument("--style-size", type=integer, default=512, help="shorter side in px, 0 keeps (default 512)")
    parser.add_argument("--crop", action="store_true", help="centre-crop to NxN after resizing")
    if content:
        parser.add_argument("--max-side", type=integer, default=0, help="cap the longer side after resizing, 0: none")
    parser.add_argument(
        "--max-pixels", type=integer, default=MAX_PIXELS, help="refuse larger images (decompression bombs)"
    )


def _scale(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--actors", type=integer, help="model actors (default: one per GPU, or per CPU core)")
    parser.add_argument("--batch-size", type=integer, default=16, help="images per model call (default 16)")
    parser.add_argument(
        "--cpus-per-actor",
        type=number,
        help="CPUs per model actor; on CPU, its torch threads too (default: 1 with a GPU, a core's share on CPU)",
    )
    parser.add_argument("--io-cpus", type=number, default=0.25, help="CPUs per decoding/writing task (default 0.25)")
    parser.add_argument(
        "--io-concurrency", type=integer, default=16, help="reads/writes each decoding/writing task keeps in flight"
    )
    parser.add_argument("--gpus-per-actor", type=number, default=1.0, help="GPUs per actor on GPU clusters")


def _job(parser: argparse.ArgumentParser) -> None:
    """What the Ray Data jobs (stylize, augment) share besides the model, sizes and scale."""
    parser.add_argument("--input", help="prefix/directory of images, or a .parquet/.csv/.txt list of URIs")
    parser.add_argument("--output", help="output prefix or directory")
    parser.add_argument("--input-root", help="for list files: the prefix that output keys are relative to")
    parser.add_argument("--extensions", default=",".join(IMAGE_EXTENSIONS), help="input file extensions")
    parser.add_argument("--format", default="jpg", choices=list(FORMATS), help="output format (default jpg)")
    parser.add_argument("--quality", type=integer, default=90, help="JPEG/WebP quality (default 90)")
    parser.add_argument("--run-id", help="name this run (default: a timestamp)")
    parser.add_argument(
        "--jpeg-codec",
        default="auto",
        choices=list(JPEG_CODECS),
        help="where JPEGs are decoded and encoded: in the CPU tasks (Pillow) or on the model actors' device "
        "(nvJPEG on GPUs); default auto: model with GPU actors, tasks on CPU",
    )
    _model(parser)
    _sizes(parser)
    _scale(parser)


def _video(parser: argparse.ArgumentParser, segments: bool = False) -> None:
    parser.add_argument(
        "--temporal-smoothing", type=number, default=0.0, metavar="S",
        help="videos: smooth the content statistics over frames, an EMA weight in [0, 1) (default 0: off)",
    )  # fmt: skip
    parser.add_argument(
        "--video-quality", type=integer, default=VIDEO_QUALITY, metavar="CRF",
        help=f"videos: x264's CRF, 0 (lossless) to 51, lower is better (default {VIDEO_QUALITY})",
    )  # fmt: skip
    if segments:
        parser.add_argument(
            "--segment-seconds", type=number, default=SEGMENT_SECONDS, metavar="N",
            help=f"videos: keyframe-aligned segments of about N s, made in parallel (default {SEGMENT_SECONDS:g})",
        )  # fmt: skip
        parser.add_argument(
            "--video-decoder", choices=VIDEO_DECODERS, default="cpu",
            help="videos: decode with PyAV on the CPU, or with TorchCodec on the model's device (NVDEC), "
            "PyAV where it cannot (default cpu)",
        )  # fmt: skip


def _register(
    parsers: Parsers, words: tuple[str, ...], parser: argparse.ArgumentParser, command: Callable[..., int]
) -> None:
    parser.set_defaults(run=command)  # argparse's way to dispatch: `args.run(args)`
    parsers[words] = parser


def _transfer(commands: Commands, parsers: Parsers, **options: bool) -> None:
    transfer = commands.add_parser("transfer", help="stylize files on this machine (no Ray)", **options)
    transfer.add_argument("content", help="content image or video, or a directory of them")
    transfer.add_argument("style", nargs="+", help="style image(s) or directories")
    transfer.add_argument("-o", "--output", required=True, help="output file, or directory for several outputs")
    transfer.add_argument("--mask", help="binary mask: foreground takes the first style, background the second")
    transfer.add_argument(
        "--format", choices=list(FORMATS), help="output format (default: the output file's extension; jpg in a folder)"
    )
    transfer.add_argument("--quality", type=integer, default=90, help="JPEG/WebP quality (default 90)")
    _video(transfer)
    _model(transfer)
    _controls(transfer)
    _sizes(transfer)
    _register(parsers, ("transfer",), transfer, run.transfer)


def _stylize(commands: Commands, parsers: Parsers, **options: bool) -> None:
    stylize = commands.add_parser("stylize", help="the distributed job: stylize images in storage on Ray", **options)
    _config(stylize)
    stylize.add_argument("--style", "--styles", action="append", help="style image, prefix or bank; repeat for several")
    stylize.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    stylize.add_argument("--preview", help="write a labelled contact sheet (content | style | output) here")
    _job(stylize)
    stylize.set_defaults(extensions=",".join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS))  # videos too, unlike augment
    _controls(stylize)
    _video(stylize, segments=True)
    _register(parsers, ("stylize",), stylize, run.stylize)


def _styles(commands: Commands, parsers: Parsers, **options: bool) -> None:
    styles = commands.add_parser("styles", help="style banks: encode style images once", **options)
    actions = styles.add_subparsers(dest="styles_command", required=True, metavar="ACTION")
    index = actions.add_parser("index", help="build or update a style bank (a Ray Data job)", **options)
    _config(index)
    index.add_argument("--style", "--styles", help="style images: a prefix, a directory or one image")
    index.add_argument("--output", help="the bank: a .parquet file (local or object store)")
    _model(index, decoder=False)
    _sizes(index, content=False)
    _scale(index)
    index.set_defaults(decoder=DEFAULT_DECODER, compile=False, content_size=0, max_side=0)  # a bank uses no decoder
    _register(parsers, ("styles", "index"), index, run.index_styles)


def _augment(commands: Commands, parsers: Parsers, **options: bool) -> None:
    augment = commands.add_parser(
        "augment", help="augment a dataset: N stylized copies per image, incrementally", **options
    )
    _config(augment)
    augment.add_argument("--style", "--styles", help="style images (a prefix or an image) or a style bank (.parquet)")
    augment.add_argument("--per-image", type=integer, default=1, help="stylized copies per input (default 1)")
    augment.add_argument("--alpha", type=number, default=1.0, help="fixed content-style trade-off (default 1)")
    augment.add_argument("--alpha-range", type=_alpha_range, help="draw alpha per output from LO,HI instead")
    augment.add_argument("--seed", type=integer, default=0, help="seed of the style and alpha draws (default 0)")
    augment.add_argument("--preserve-color", choices=["luminance"], help="keep the content's colours")
    augment.add_argument("--shards", action="store_true", help="write WebDataset-style tar shards, not files")
    augment.add_argument("--shard-size", type=integer, default=1000, help="samples per shard (default 1000)")
    augment.add_argument("--lock-ttl", type=number, default=24 * 3600.0, help="seconds a run's lock lasts")
    _job(augment)
    _register(parsers, ("augment",), augment, run.augment)


def _report(commands: Commands, parsers: Parsers, **options: bool) -> None:
    report = commands.add_parser("report", help="what the runs under an output prefix did", **options)
    report.add_argument("output", help="the --output of a stylize or augment job")
    report.add_argument("--errors", action="store_true", help="list every failed output (input, style, reason)")
    report.add_argument("--html", help="also write the report as a page with a labelled contact sheet here")
    report.add_argument("--samples", type=integer, default=24, help="rows of the contact sheet (default 24)")
    _register(parsers, ("report",), report, run.report)


def _train(commands: Commands, parsers: Parsers, **options: bool) -> None:
    train = commands.add_parser(
        "train",
        help="train an AdaIN decoder on Ray (images in storage, checkpoints and metrics in STORAGE/NAME)",
        description="Distributed AdaIN decoder training as pytorch-AdaIN's train.py does it, on Ray Train.",
        **options,
    )
    _config(train)
    data = train.add_argument_group("data and storage")
    data.add_argument("--content", help="content images: prefix/directory, or a .txt/.csv/.parquet list of URIs")
    data.add_argument("--style", "--styles", help="style images: prefix/directory, or a list file")
    data.add_argument("--storage", help="where runs live (local path, s3://, gs://); this run goes to STORAGE/NAME")
    data.add_argument("--name", help="the run's name; with --resume, the run to continue")
    data.add_argument("--resume", action="store_true", help="continue the run NAME from its latest checkpoint")
    data.add_argument("--resize", type=integer, default=512, help="resize to NxN, ignoring the aspect (default 512)")
    data.add_argument("--crop", type=integer, default=256, help="then a random NxN crop (default 256)")
    data.add_argument("--extensions", default=",".join(IMAGE_EXTENSIONS), help="image file extensions to list")
    data.add_argument("--max-pixels", type=integer, default=MAX_PIXELS, help="skip larger images (decompression bombs)")

    scale = train.add_argument_group("cluster")
    scale.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    scale.add_argument("--workers", type=integer, default=1, help="training workers, one DDP process each (default 1)")
    scale.add_argument("--gpus-per-worker", type=number, default=0.0, help="GPUs per worker; 0 trains on CPUs")
    scale.add_argument("--cpus-per-worker", type=number, default=1.0, help="CPUs per worker (default 1)")
    scale.add_argument(
        "--loader-cpus", type=number, help="CPUs per decoding task (default: 1 if the workers leave one free, else 0)"
    )
    scale.add_argument(
        "--max-failures", type=integer, default=3, help="worker-group restarts from the latest checkpoint"
    )

    schedule = train.add_argument_group("objective and schedule")
    names = ", ".join(KNOWN_ENCODERS)
    schedule.add_argument("--encoder", default=DEFAULT_ENCODER, help=f"frozen VGG encoder: path, URI or one of {names}")
    schedule.add_argument("--decoder", help="start from these decoder weights (fine-tuning); default: a fresh decoder")
    schedule.add_argument("--batch-size", type=integer, default=8, help="images per worker per step (default 8)")
    schedule.add_argument("--max-iter", type=integer, default=160_000, help="train to this many steps (default 160000)")
    schedule.add_argument("--lr", type=number, default=1e-4, help="Adam learning rate (default 1e-4)")
    schedule.add_argument("--lr-decay", type=number, default=5e-5, help="step i runs at lr / (1 + lr_decay * i)")
    schedule.add_argument("--content-weight", type=number, default=1.0, help="weight of the content loss (default 1)")
    schedule.add_argument("--style-weight", type=number, default=10.0, help="weight of the style loss (default 10)")
    schedule.add_argument("--tv-weight", type=number, default=0.0, help="weight of total variation (default 0)")
    schedule.add_argument(
        "--precision", default="fp32", choices=list(TRAINING_PRECISIONS), help="bf16 autocasts the nets"
    )
    schedule.add_argument("--seed", type=integer, default=0, help="seed of the fresh decoder's weights")

    outputs = train.add_argument_group("checkpoints and outputs")
    outputs.add_argument("--checkpoint-every", type=integer, default=10_000, help="steps between checkpoints")
    outputs.add_argument(
        "--keep-checkpoints", type=integer, default=3, help="keep the newest N checkpoints (default 3)"
    )
    outputs.add_argument("--log-every", type=integer, default=100, help="steps between metrics rows (default 100)")
    outputs.add_argument("--samples", type=integer, default=4, help="rows of the sample grid in each checkpoint")
    outputs.add_argument(
        "--export-pytorch-adain", action="store_true", help="also write decoder-pytorch-adain.pth (a plain state dict)"
    )
    _register(parsers, ("train",), train, run.run_train)


def build_parsers(strict: bool = False) -> tuple[argparse.ArgumentParser, Parsers]:
    """The `adain` parser, and each command's parser by its command words (`("styles", "index")`).

    `strict` parsers raise `argparse.ArgumentError` instead of exiting and take flag names only
    whole: the YAML options are checked with them (see `options.py`)."""
    options: dict[str, Any] = {"allow_abbrev": not strict, "exit_on_error": not strict, "formatter_class": _Help}
    root = _Parser(  # the commands' parsers are of its class too (argparse's add_subparsers)
        prog="adain", description="AdaIN arbitrary style transfer, from one image to millions.", **options
    )
    root.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers: Parsers = {}
    for add in (_transfer, _stylize, _styles, _augment, _train, _report):
        add(commands, parsers, **options)
    return root, parsers


def build_parser() -> argparse.ArgumentParser:
    return build_parsers()[0]


def command_words(args: argparse.Namespace) -> tuple[str, ...]:
    """The command a parse chose, as the keys of `build_parsers`' parsers."""
    return (args.command, args.styles_command) if args.command == "styles" else (args.command,)
