"""The `adain` command. Flags are parsed and validated here, once, into typed configs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from pipeline.config import PRESERVE_COLOR, Controls, ModelConfig, Sizing
from pipeline.errors import AdainError
from pipeline.imaging.codec import FORMATS, MAX_PIXELS
from pipeline.model.checkpoint import DEFAULT_DECODER, DEFAULT_ENCODER, KNOWN_WEIGHTS
from pipeline.model.stylizer import PRECISIONS


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
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="refuse larger images (decompression bombs)")


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(args.encoder, args.decoder, args.device, args.precision)


def controls(args: argparse.Namespace) -> Controls:
    return Controls(args.alpha, args.style_weights, args.preserve_color)


def sizing(args: argparse.Namespace) -> Sizing:
    return Sizing(args.content_size, args.style_size, args.crop, args.max_pixels)


def _transfer(args: argparse.Namespace) -> int:
    from pipeline.transfer import TransferRequest, run_transfer

    request = TransferRequest(args.content, tuple(args.style), args.output, args.mask, args.format, args.quality)
    failures = run_transfer(request, model_config(args), controls(args), sizing(args))
    return 1 if failures else 0


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
