"""What a user can get wrong about a job's surroundings, checked in seconds before any Ray or torch work.

The jobs check, in this order: the inputs (`listing.find_inputs`: of a list file, its schema only),
the output (`uri.check_writable`), the weights and the cluster (here), then the styles; only then do
they start Ray.
"""

from __future__ import annotations

import os
import socket
import time

from pipeline.config import Controls, ModelConfig
from pipeline.data.listing import is_bank, list_styles
from pipeline.errors import ClusterError, ConfigError, counted
from pipeline.model.sources import naming_the_rest, weight_uri
from pipeline.storage.cache import fetch
from pipeline.storage.uri import exists

WAIT_S = 3.0  # how long a cluster address may refuse connections before the job gives up


def check_weights(model: ModelConfig) -> None:
    """Fail before any cluster work if either network's weights cannot be had."""
    with naming_the_rest((model.decoder, "--decoder")):
        fetch(*weight_uri(model.encoder), flag="--encoder")
    fetch(*weight_uri(model.decoder), flag="--decoder")


def check_styles(refs: tuple[str, ...], controls: Controls | None = None, per_image: int = 1) -> None:
    """Every --style is there and fits the flags that use it: a style bank, alone, or style images
    (listed again as they are encoded, while Ray starts), as many as --style-weights and --per-image ask."""
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
        return  # a bank's rows are counted as it is read, while Ray starts
    found = len(list_styles(refs))
    if controls is not None:
        controls.weights_for(found)
    enough_styles(per_image, found)


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
