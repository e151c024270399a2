"""Where weights come from: the known public files by name, a private mirror, or any URI with a checksum.

No torch here: the CLI and the job configs name weights long before a network is built.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.errors import WeightsError
from pipeline.storage.cache import Unreachable, cached_path, split_checksum
from pipeline.storage.uri import absolute, scheme

_ADAIN_RELEASE = "https://github.com/naoto0804/pytorch-AdaIN/releases/download/v0.0.0"
# name -> (url, sha256 or its prefix, or None where no checksum is published)
KNOWN_WEIGHTS: dict[str, tuple[str, str | None]] = {
    "adain-vgg": (f"{_ADAIN_RELEASE}/vgg_normalised.pth", None),
    "adain-decoder": (f"{_ADAIN_RELEASE}/decoder.pth", None),
    "vgg19-imagenet": ("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", "dcbb9e9d"),
}
KNOWN_ENCODERS = ("adain-vgg", "vgg19-imagenet")
KNOWN_DECODERS = ("adain-decoder",)
DEFAULT_ENCODER = "adain-vgg"
DEFAULT_DECODER = "adain-decoder"


def weight_uri(ref: str) -> tuple[str, str | None]:
    """A reference (known name, path or URI, optional '#sha256=') -> (uri, checksum)."""
    if ref in KNOWN_WEIGHTS:
        url, digest = KNOWN_WEIGHTS[ref]
        mirror = os.environ.get("ADAIN_WEIGHTS_MIRROR")
        if mirror:  # a private copy of the public files, by file name
            url = f"{mirror.rstrip('/')}/{url.rsplit('/', 1)[1]}"
        return url, digest
    return split_checksum(ref)


@contextmanager
def naming_the_rest(*rest: tuple[str | None, str]) -> Iterator[None]:
    """Within, weights that cannot be downloaded (offline) name also each of `rest` ((ref, flag); a
    None ref: none asked for) that is to be downloaded and is not in the cache: the user fetches
    them all at once, not one per run. Nothing is tried over the network for them."""
    try:
        yield
    except Unreachable as exc:
        missing = list(exc.missing)
        for ref, flag in rest:
            try:
                uri = weight_uri(ref)[0] if ref is not None else None
            except WeightsError:  # a malformed '#sha256=': its own message when it is loaded
                continue
            if uri is not None and scheme(uri) != "file" and not cached_path(uri).is_file():
                missing.append((uri, cached_path(uri), flag))
        raise Unreachable(exc.reason, missing) from exc


def absolute_ref(ref: str) -> str:
    """A reference whose relative local path is made absolute: the processes that load it may run
    in another directory (Ray Train starts its workers in one of its own)."""
    if ref in KNOWN_WEIGHTS:
        return ref
    uri, sep, fragment = ref.partition("#sha256=")
    return absolute(uri) + sep + fragment
