"""What a user can get wrong about a job's surroundings, checked in seconds before Ray starts (and
before torch loads, but for a style bank's encoder).

The jobs check, in this order: the inputs (`listing.find_inputs`: of a list file, its schema only),
the output (`uri.check_writable`), the weights and the cluster (here), then the styles: each style
image read and its header checked as `codec.decode` checks it (format, --max-pixels, JPEG scans, its
size for --style-size), decoded whole while that stays cheap; a style bank's footer and the columns a
job uses, then its encoder compared with --encoder's. Only then do they start Ray (and encode the styles
while it starts).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from functools import partial

from PIL.Image import Image

from pipeline.config import Controls, ModelConfig, Sizing
from pipeline.data.bank_table import check_bank
from pipeline.data.listing import is_bank, list_styles
from pipeline.errors import ClusterError, ConfigError, StorageError, counted, describe
from pipeline.imaging.codec import max_file_bytes
from pipeline.model.sources import naming_the_rest, weight_uri
from pipeline.storage.cache import fetch
from pipeline.storage.uri import exists, io_pool, read_bytes

WAIT_S = 3.0  # how long a cluster address may refuse connections before the job gives up
# Style images decoded whole in the preflight, in pixels (about half a second on a core); past it, headers only.
DECODE_PIXELS = 64_000_000
STYLE_READS = 16  # style images read at once (object-store requests in flight)


def check_weights(model: ModelConfig) -> None:
    """Fail before any cluster work if either network's weights cannot be had."""
    with naming_the_rest((model.decoder, "--decoder")):
        fetch(*weight_uri(model.encoder), flag="--encoder")
    fetch(*weight_uri(model.decoder), flag="--decoder")


def check_styles(
    refs: tuple[str, ...],
    controls: Controls | None = None,
    per_image: int = 1,
    sizing: Sizing | None = None,
    encoder: str | None = None,
) -> None:
    """Every --style is there and fits the flags that use it: a style bank, alone, or style images
    (listed again as they are encoded, while Ray starts), as many as --style-weights and --per-image ask.
    With `sizing`, each style image is read and checked (`check_style_images`); with `encoder` (weights
    `check_weights` fetched), a bank is checked as the job loads it (`bank_table.check_bank`)."""
    banks = [ref for ref in refs if is_bank(ref)]
    for bank in banks:
        if not exists(bank):
            raise ConfigError(f"--style {bank}: no such style bank; build one with adain styles index")
    if banks:
        if len(refs) > 1:
            raise ConfigError("--style: a style bank must be the only --style")
        if controls is not None and controls.preserve_color == "coral":
            raise ConfigError(
                "--preserve-color coral recolours style images, which a bank no longer has; use luminance"
            )
        if controls is not None and controls.style_weights is not None:
            raise ConfigError("--style-weights blends style images; with a style bank give each style as its own run")
        if encoder is not None:
            check_bank(banks[0], partial(encoder_sha256, encoder))
        return  # a bank's rows are counted as it is read, while Ray starts
    found = list_styles(refs)
    if controls is not None:
        controls.weights_for(len(found))
    enough_styles(per_image, len(found))
    if sizing is not None:
        check_style_images([uri for _, uri in found], sizing)


def check_style_images(uris: list[str], sizing: Sizing, decode_pixels: int = DECODE_PIXELS) -> None:
    """Each style image read (within --max-pixels' file size) and checked as the job's `Sizing.style_image`
    checks it: decoded whole while the pixels decoded stay within `decode_pixels`, in the order given
    (a file cut short shows only then), past that its header and sizing only. The first image that fails,
    in that order, is named: a storage error as the storage words it, an image's with "replace or remove".
    Reading them all costs a fraction of encoding them, which the job does next."""

    def pixels(uri: str) -> int:
        data = _style_bytes(uri, sizing)
        img = _style_checked(uri, lambda: sizing.style_image(data, whole=False))
        return img.width * img.height

    def whole(uri: str) -> None:
        data = _style_bytes(uri, sizing)
        _style_checked(uri, lambda: sizing.style_image(data))

    # Every header read at once, none waiting on another (a slow read holds up nothing), and no bytes
    # kept: the budget of whole decodes is handed out here, in listing order, and those read again.
    pool, left, decodes = io_pool(STYLE_READS), decode_pixels, []
    reads = [(uri, pool.submit(pixels, uri)) for uri in uris]
    try:
        for uri, read in reads:
            if (count := read.result()) <= left:
                left -= count
                decodes.append(pool.submit(whole, uri))
    finally:
        for _, read in reads:  # after a failure, the reads not started are not made
            read.cancel()
        for decode in decodes:  # an earlier image's decode is named before a later image's header
            decode.result()


def _style_bytes(uri: str, sizing: Sizing) -> bytes:
    try:
        return read_bytes(uri, max_file_bytes(sizing.max_pixels))
    except StorageError as exc:  # the storage's words and advice, not the image's
        raise StorageError(f"--style {exc}") from None


def _style_checked(uri: str, check: Callable[[], Image]) -> Image:
    try:
        return check()
    except Exception as exc:
        raise ConfigError(f"--style {uri}: {describe(exc)}; replace or remove that style image") from None


def encoder_sha256(ref: str) -> str:
    """What a bank names its encoder by: the sha256 of the loaded weights (torch loads here)."""
    from pipeline.model.checkpoint import load_encoder

    return load_encoder(ref).sha256


def enough_styles(per_image: int, styles: int) -> None:
    if per_image > styles:
        raise ConfigError(f"--per-image {per_image}: there are only {counted(styles, 'style')}")


def check_address(address: str | None, wait_s: float = WAIT_S) -> str | None:
    """The cluster to join (`address`, else RAY_ADDRESS; None: a local Ray), checked to answer:
    in seconds, not after Ray's minutes of retries, when nothing listens there."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "auto", "local"):
        return address
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if "://" in host:  # http://HEAD:8265 is the jobs API's address, which `ray job submit` takes
        raise ClusterError(
            f"--address {address}: give the head's GCS address, HOST:PORT (6379 by default), not a URL; "
            "http://HEAD:8265 is for ray job submit"
        )
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address}: expected HOST:PORT (the head's GCS port, 6379 by default)")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=max(0.1, deadline - time.monotonic())).close()
            return address
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); check --address or "
                    "RAY_ADDRESS, and that the head node is up (`ray status` on it)"
                ) from None
            time.sleep(0.5)
