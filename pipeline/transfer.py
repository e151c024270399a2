"""`adain transfer`: stylization on one machine, no Ray, for previews and small jobs.

The counterpart of the reference implementations' test scripts: a content file or
directory, one or more styles, and an output file or directory. Several styles without
weights give every (content, style) pair; with --style-weights they are interpolated into
one; with --mask the first style paints the mask's foreground and the second the rest.
"""

from __future__ import annotations

import contextlib
import posixpath
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.config import Controls, ModelConfig, Sizing
from pipeline.errors import AdainError, ConfigError, ImageError, describe
from pipeline.imaging.codec import FORMATS, IMAGE_EXTENSIONS, decode, encode, format_of, prepare
from pipeline.imaging.tensors import mask_tensor, to_image, to_tensor
from pipeline.model.functional import Stats, blend_stats, cat_stats, coral
from pipeline.model.loader import load_model
from pipeline.model.stylizer import StyleTransfer
from pipeline.storage.keys import output_stems, safe_relpath, unique_names
from pipeline.storage.listing import list_files
from pipeline.storage.uri import is_dir, join, read_bytes, write_bytes


@dataclass(frozen=True)
class TransferRequest:
    content: str
    styles: tuple[str, ...]
    output: str
    mask: str | None = None
    out_format: str | None = None  # None: jpg into a directory, else the output file's extension
    quality: int = 90

    def __post_init__(self) -> None:
        if self.out_format is not None and self.out_format not in FORMATS:
            raise ConfigError(f"--format {self.out_format}: expected jpg, png or webp")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"--quality {self.quality}: must be between 1 and 100")


def _expand(uri: str) -> list[tuple[str, str]]:
    """A file or a directory of images -> [(uri, path relative to the directory)]."""
    if not is_dir(uri):
        return [(uri, posixpath.basename(uri))]
    files = list_files(uri, IMAGE_EXTENSIONS)
    if not files:
        raise ConfigError(f"{uri}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this directory")
    return files


@contextlib.contextmanager
def _about(uri: str) -> Iterator[None]:
    """Prefix an error's message with the file it is about."""
    try:
        yield
    except ImageError as exc:
        raise ImageError(f"{uri}: {exc}") from None


def _load(uri: str, size: int, sizing: Sizing) -> Tensor:
    with _about(uri):
        return to_tensor(prepare(read_bytes(uri), size, sizing.crop, sizing.max_pixels, sizing.max_side))


def _stems(files: list[tuple[str, str]]) -> list[str]:
    """Output names without extension of (uri, relative path) pairs."""
    return output_stems([safe_relpath(rel) for _, rel in files]).to_pylist()


def pair_names(contents: list[tuple[str, str]], suffixes: list[str]) -> dict[tuple[int, int], str]:
    """{(content, style): output name without extension}: `{content}_{suffix}`, told apart where
    two pairs would share one (content `a_stylized_b` in style `c`, content `a` in style `b_stylized_c`)."""
    pairs = [(c, s) for c in range(len(contents)) for s in range(len(suffixes))]
    stems = _stems(contents)
    names = unique_names([f"{stems[c]}_{suffixes[s]}" for c, s in pairs], [f"{contents[c][0]}\0{s}" for c, s in pairs])
    return dict(zip(pairs, names, strict=True))


def run_transfer(req: TransferRequest, model_cfg: ModelConfig, controls: Controls, sizing: Sizing) -> int:
    """Stylize and write every output; returns the number of content images that failed."""
    contents = _expand(req.content)
    styles = [item for ref in req.styles for item in _expand(ref)]
    if req.mask and len(styles) != 2:
        raise ConfigError(f"--mask needs exactly two styles (foreground, background), got {len(styles)}")
    if req.mask and controls.style_weights:
        raise ConfigError("--mask and --style-weights cannot be combined")
    controls.weights_for(len(styles))
    combined = "masked" if req.mask else "interpolation" if controls.style_weights else None
    n_outputs = len(contents) * (1 if combined else len(styles))
    to_dir = req.output.endswith("/") or is_dir(req.output) or "." not in posixpath.basename(req.output)
    if not to_dir and n_outputs > 1:
        raise ConfigError(f"{n_outputs} outputs to write: OUTPUT must be a directory, not {req.output}")
    fmt = (req.out_format or "jpg") if to_dir else format_of(req.output)
    if not to_dir and req.out_format is not None and format_of(f"x.{req.out_format}") != fmt:
        raise ConfigError(f"--format {req.out_format} but {req.output} names a .{fmt} file; rename it or drop --format")

    suffixes = [combined] if combined else [f"stylized_{name.replace('/', '_')}" for name in _stems(styles)]
    named = pair_names(contents, suffixes)

    def output_uri(content: int, style: int) -> str:
        return join(req.output, f"{named[content, style]}.{fmt}") if to_dir else req.output

    model = load_model(model_cfg.encoder, model_cfg.decoder, model_cfg.device, model_cfg.precision, model_cfg.compile)
    style_images = [_load(uri, sizing.style_size, sizing) for uri, _ in styles]
    mask_image = None
    if req.mask:
        with _about(req.mask):
            mask_image = decode(read_bytes(req.mask), sizing.max_pixels)
    cached = None if controls.preserve_color == "coral" else [model.style_stats(s[None]) for s in style_images]
    failures = 0
    for c, (uri, _) in enumerate(contents):
        try:
            content = _load(uri, sizing.content_size, sizing)
            stats = cached or [model.style_stats(coral(s, content)[None]) for s in style_images]
            mask = None if mask_image is None else mask_tensor(mask_image, (content.shape[2], content.shape[1]))
            if combined:
                stylized = [_stylize(model, content, stats, controls, mask)]
            else:
                stylized = [_stylize(model, content, [st], controls, None) for st in stats]
            for s, image in enumerate(stylized):
                target = output_uri(c, s)
                write_bytes(target, encode(to_image(image[0]), fmt, req.quality))
                print(f"wrote {target}")
        except Exception as exc:  # one content image's failure, whatever it is, costs only that image
            reason = str(exc) if isinstance(exc, AdainError) else f"{uri}: {describe(exc)}"
            print(f"adain: error: {reason}", file=sys.stderr)
            failures += 1
    return failures


def _stylize(
    model: StyleTransfer, content: Tensor, stats: list[Stats], controls: Controls, mask: Tensor | None
) -> Tensor:
    luminance = controls.preserve_color == "luminance"
    if mask is not None:
        return model.stylize(content[None], stats[0], controls.alpha, mask, stats[1], luminance)
    if len(stats) == 1:
        style = stats[0]
    else:
        weights = torch.tensor(controls.style_weights or [1.0] * len(stats))
        style = blend_stats(*cat_stats(stats), weights)
    return model.stylize(content[None], style, controls.alpha, preserve_luminance=luminance)
