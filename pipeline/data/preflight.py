"""What a user can get wrong about a job's surroundings, checked in seconds before any Ray or torch work.

The jobs check, in this order: the inputs (`listing.find_inputs`: of a list file, its schema only),
the output (`uri.check_writable`), the weights and the cluster (here), then the styles; only then do
they start Ray.
"""

from __future__ import annotations

import os
import socket
import time

from pipeline.config import ModelConfig
from pipeline.data.listing import is_bank, list_styles
from pipeline.errors import ClusterError, ConfigError
from pipeline.model.sources import naming_the_rest, weight_uri
from pipeline.storage.cache import fetch
from pipeline.storage.uri import exists

WAIT_S = 3.0  # how long a cluster address may refuse connections before the job gives up


def check_weights(model: ModelConfig) -> None:
    """Fail before any cluster work if either network's weights cannot be had."""
    with naming_the_rest((model.decoder, "--decoder")):
        fetch(*weight_uri(model.encoder), flag="--encoder")
    fetch(*weight_uri(model.decoder), flag="--decoder")



def check_styles(refs: tuple[str, ...]) -> None:
    """Every --style is there: a style bank, or style images (listed again as they are encoded, while Ray starts)."""
    banks = [ref for ref in refs if is_bank(ref)]
    for bank in banks:
        if not exists(bank):
            raise ConfigError(f"--style {bank}: no such style bank; build one with adain styles index")
    if len(banks) < len(refs):
        list_styles(tuple(ref for ref in refs if ref not in banks))


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
