"""`adain transfer`: stylization on one machine, no Ray, for previews and small jobs.

The counterpart of the reference implementations' test scripts: a content file or
directory, one or more styles, and an output file or directory. Several styles without
weights give every (content, style) pair; with --style-weights they are interpolated into
one; with --mask the first style paints the mask's foreground and the second the rest.
A content video becomes an H.264 mp4 stylized frame by frame (`imaging.video_write.stylize_video`).
"""

from __future__ import annotations

import contextlib
import posixpath
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pipeline.config import Controls, ModelConfig, Sizing
from pipeline.errors import AdainError, ConfigError, ImageError, counted, describe, one_line
from pipeline.imaging.codec import (
    FORMATS,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    VIDEO_QUALITY,
    decode,
    encode,
    fit,
    format_of,
    is_video,
    max_file_bytes,
    prepare,
)
from pipeline.imaging.tensors import batch_to_pixels, mask_tensor, to_image, to_tensor
from pipeline.imaging.video_write import stylize_video
from pipeline.model.functional import Stats, blend_stats, cat_stats, coral
from pipeline.model.loader import load_model
from pipeline.model.stylizer import StyleTransfer
from pipeline.storage.keys import Room, fitted, output_room, output_stems, safe_relpath, unique_names
from pipeline.storage.listing import list_files
from pipeline.storage.uri import (
    canonical,
    check_not_a_file,
    is_dir,
    is_remote,
    join,
    read_bytes,
    regular_file_size,
    within,
    write_bytes,
)

VIDEO_BATCH = 8  # frames a model call, at most


@dataclass(frozen=True)
class TransferRequest:
    content: str
    styles: tuple[str, ...]
    output: str
    mask: str | None = None
    out_format: str | None = None  # None: jpg into a directory, else the output file's extension
    quality: int = 90
    temporal_smoothing: float = 0.0  # videos: EMA of the content statistics over frames, 0 for none
    video_quality: int = VIDEO_QUALITY  # videos: x264 CRF

    def __post_init__(self) -> None:
        if self.out_format is not None and self.out_format not in FORMATS:
            raise ConfigError(f"--format {self.out_format}: expected jpg, png or webp")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"--quality {self.quality}: must be between 1 and 100")
        if not 0.0 <= self.temporal_smoothing < 1.0:
            raise ConfigError(f"--temporal-smoothing {self.temporal_smoothing}: must be at least 0 and below 1")
        if not 0 <= self.video_quality <= 51:
            raise ConfigError(f"--video-quality {self.video_quality}: x264's CRF, 0 (lossless) to 51 (worst)")


def _expand(uri: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[tuple[str, str]]:
    """A file or a directory of images (or videos) -> [(uri, path relative to the directory)]."""
    if not is_dir(uri):
        return [(uri, posixpath.basename(uri))]
    files = list_files(uri, extensions)
    if not files:
        raise ConfigError(f"{uri}: no files ending in {', '.join(extensions)} in this directory")
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
        data = read_bytes(uri, max_file_bytes(sizing.max_pixels))
        return to_tensor(prepare(data, size, sizing.crop, sizing.max_pixels, sizing.max_side))


def _stems(files: list[tuple[str, str]]) -> list[str]:
    """Output names without extension of (uri, relative path) pairs, told apart by their URIs
    where the paths meet once made safe (`.jpg` and `/.jpg`)."""
    return output_stems([safe_relpath(rel) for _, rel in files], [uri for uri, _ in files]).to_pylist()


def pair_names(
    contents: list[tuple[str, str]], suffixes: list[str], room: Room | None = None
) -> dict[tuple[int, int], str]:
    """{(content, style): output name without extension}: `{content}_{suffix}`, told apart where
    two pairs would share one (content `a_stylized_b` in style `c`, content `a` in style `b_stylized_c`);
    with `room` (`keys.output_room`), each fits it (`keys.fitted`)."""
    pairs = [(c, s) for c in range(len(contents)) for s in range(len(suffixes))]
    stems = _stems(contents)
    names = [fitted(f"{stems[c]}_{suffixes[s]}", room) for c, s in pairs]
    names = unique_names(names, [f"{contents[c][0]}\0{s}" for c, s in pairs], room=room)
    return dict(zip(pairs, names, strict=True))


def run_transfer(req: TransferRequest, model_cfg: ModelConfig, controls: Controls, sizing: Sizing) -> int:
    """Stylize and write every output; returns the number of content images that failed."""
    contents = _expand(req.content, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
    styles = [item for ref in req.styles for item in _expand(ref)]
    if req.mask and len(styles) != 2:
        raise ConfigError(f"--mask needs exactly two styles (foreground, background), got {len(styles)}")
    if req.mask and controls.style_weights:
        raise ConfigError("--mask and --style-weights cannot be combined")
    if req.mask and any(is_video(uri) for uri, _ in contents):
        raise ConfigError("--mask is for images: a content video cannot take one")
    controls.weights_for(len(styles))
    combined = "masked" if req.mask else "interpolation" if controls.style_weights else None
    n_outputs = len(contents) * (1 if combined else len(styles))
    to_dir = req.output.endswith("/") or is_dir(req.output) or "." not in posixpath.basename(req.output)
    if not to_dir and n_outputs > 1:
        raise ConfigError(f"{n_outputs} outputs to write: OUTPUT must be a directory, not {req.output}")
    fmt = (req.out_format or "jpg") if to_dir else "mp4" if is_video(req.output) else format_of(req.output)
    if not to_dir and (fmt == "mp4") != is_video(contents[0][0]):
        raise ConfigError(f"{req.output}: a video is written as .mp4, an image as .jpg, .png or .webp")
    if not to_dir and fmt != "mp4" and req.out_format is not None and format_of(f"x.{req.out_format}") != fmt:
        raise ConfigError(f"--format {req.out_format} but {req.output} names a .{fmt} file; rename it or drop --format")

    suffixes = [combined] if combined else [f"stylized_{name.replace('/', '_')}" for name in _stems(styles)]
    named = pair_names(contents, suffixes, output_room(req.output, augment=False) if to_dir else None)

    def output_uri(content: int, style: int) -> str:
        ext = "mp4" if is_video(contents[content][0]) else fmt
        return join(req.output, f"{named[content, style]}.{ext}") if to_dir else req.output

    outputs = [output_uri(c, s) for c in range(len(contents)) for s in range(1 if combined else len(styles))]
    _check_apart(req, [uri for uri, _ in contents + styles], outputs)
    check_not_a_file(req.output if to_dir else posixpath.dirname(req.output), "-o")
    model = load_model(model_cfg.encoder, model_cfg.decoder, model_cfg.device, model_cfg.precision, model_cfg.compile)
    style_images = [_load(uri, sizing.style_size, sizing) for uri, _ in styles]
    mask_image = None
    if req.mask:
        with _about(req.mask):
            mask_image = decode(read_bytes(req.mask, max_file_bytes(sizing.max_pixels)), sizing.max_pixels)
    cached = None if controls.preserve_color == "coral" else [model.style_stats(s[None]) for s in style_images]
    failures = 0
    for c, (uri, _) in enumerate(contents):
        try:
            if is_video(uri):
                targets = [output_uri(c, s) for s in range(1 if combined else len(styles))]
                _video(model, uri, style_images, cached, bool(combined), (controls, sizing, req), targets)
                continue
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
                print(one_line(f"wrote {target}"))
        except Exception as exc:  # one content image's failure, whatever it is, costs only that image
            reason = str(exc) if isinstance(exc, AdainError) else f"{uri}: {describe(exc)}"
            print(one_line(f"adain: error: {reason}"), file=sys.stderr)
            failures += 1
    return failures


def _check_apart(req: TransferRequest, inputs: list[str], outputs: list[str]) -> None:
    """No output overwrites an input, and none lands in an input directory, where the next run
    would take it for an input (links resolved: `canonical`)."""
    for folder in (req.content, *req.styles):
        if within(req.output, folder) and is_dir(folder):  # is_dir last: no request unless -o lies there
            raise ConfigError(
                f"-o {req.output} is inside the input directory {folder}: the next run would take its outputs "
                "for inputs; write them elsewhere"
            )
    taken = {canonical(uri) for uri in [*inputs, *([req.mask] if req.mask else [])]}
    for uri in outputs:
        if canonical(uri) in taken:
            raise ConfigError(f"-o {req.output}: {uri} is one of the inputs and would be overwritten; write elsewhere")


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


def _video(
    model: StyleTransfer,
    uri: str,
    style_images: list[Tensor],
    cached: list[Stats] | None,
    combined: bool,
    settings: tuple[Controls, Sizing, TransferRequest],
    targets: list[str],
) -> None:
    """Stylize one content video into one mp4 per target, its frames streamed in batches."""
    controls, sizing, req = settings
    if not is_remote(uri):
        regular_file_size(uri)  # PyAV opens local files itself: a FIFO, named for what it is, is never opened
    source = read_bytes(uri) if is_remote(uri) else uri
    for s, target in enumerate(targets):
        picked = list(range(len(style_images))) if combined else [s]
        stats = None if cached is None else [cached[i] for i in picked]
        stylize_frames = _frame_stylizer(model, [style_images[i] for i in picked], stats, controls, sizing, req)
        with _about(uri):
            row = _write_video(source, target, stylize_frames, req, sizing)
        flicker = "" if row["flicker"] is None else f", flicker {row['flicker']:.2f}"
        made = f"{counted(row['frames'], 'frame')}, {counted(row['segments'], 'segment')}{flicker}"
        print(one_line(f"wrote {target} ({made})"))


def _write_video(source: str | bytes, target: str, stylize: Callable, req: TransferRequest, sizing: Sizing) -> dict:
    """stylize_video into a local file, then to S3 if the target is there."""

    def run(dest: Path) -> dict:
        return stylize_video(source, dest, stylize, req.video_quality, max_pixels=sizing.max_pixels)

    if not is_remote(target):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        return run(Path(target))
    with tempfile.TemporaryDirectory(prefix="adain-video-") as tmp:
        local = Path(tmp, "out.mp4")
        row = run(local)
        write_bytes(target, local.read_bytes())
        return row


def _frame_stylizer(
    model: StyleTransfer,
    style_images: list[Tensor],
    stats: list[Stats] | None,
    controls: Controls,
    sizing: Sizing,
    req: TransferRequest,
) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """A callable stylizing consecutive frames, carrying the smoothed content statistics from call to call.

    --preserve-color coral recolours the styles once, to the first frame: styles recoloured frame by
    frame would flicker."""
    state: dict = {"style": None, "previous": None}
    luminance = controls.preserve_color == "luminance"

    def style_of(first: Tensor) -> Stats:
        per_style = stats or [model.style_stats(coral(s, first)[None]) for s in style_images]
        if len(per_style) == 1:
            return per_style[0]
        weights = torch.tensor(controls.style_weights or [1.0] * len(per_style))
        return blend_stats(*cat_stats(per_style), weights)

    def stylize_frames(frames: list[np.ndarray]) -> list[np.ndarray]:
        sized = [
            fit(Image.fromarray(f), sizing.content_size, sizing.crop, sizing.max_pixels, sizing.max_side)
            for f in frames
        ]
        content = torch.stack([to_tensor(img) for img in sized])
        if state["style"] is None:
            state["style"] = style_of(content[0])
        step = model.images_per_call(content.shape[2], content.shape[3], VIDEO_BATCH)
        outputs = []
        for start in range(0, len(content), step):
            out, state["previous"] = model.stylize_frames(
                content[start : start + step],
                state["style"],
                controls.alpha,
                req.temporal_smoothing,
                state["previous"],
                luminance,
            )
            outputs.extend(batch_to_pixels(out))
        return outputs

    return stylize_frames
