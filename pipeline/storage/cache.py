"""Fetching weight files into a local cache, verified and atomically.

A weight reference is a local path, `file://`, `s3://`, `gs://` or `http(s)://` URI; a
`#sha256=HEX` suffix pins its checksum (a full digest, or a prefix of at least 8 hex digits
as in torchvision's file names). Remote files are downloaded once into
`$ADAIN_CACHE/weights/` (default `~/.cache/adain`): to a temporary file first, then renamed
into place only after the checksum holds, so the cache never holds a partial or corrupt file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import StorageError, WeightsError
from pipeline.storage.uri import resolve, scheme, storage_error

_CHUNK = 1 << 20


def cache_dir() -> Path:
    return Path(os.environ.get("ADAIN_CACHE", "~/.cache/adain")).expanduser()


class Unreachable(WeightsError):
    """Weights that could not be downloaded (offline, no route): names each file that is missing
    here (`missing`: URI, where it goes in the cache, the flag that takes a local path instead)."""

    def __init__(self, reason: str, missing: list[tuple[str, Path, str]]) -> None:
        self.reason, self.missing = reason, missing
        (uri, _, _), others = missing[0], [other for other, _, _ in missing[1:]]
        failed = f"could not download {uri} ({reason})"
        if others:  # not tried: this machine could not download the first, and they are not cached either
            failed += f"; not cached here either: {' and '.join(others)}"
        one = ("that file", "it", "its local path")
        files, them, paths = ("those files", "them", "their local paths") if others else one
        super().__init__(
            f"{failed}. This machine may be offline. Fetch {files} where there is network access, then either "
            f"copy {them} to {' and '.join(str(dest) for _, dest, _ in missing)} "
            f"or pass {paths} with {' and '.join(f'{flag} PATH' for _, _, flag in missing)}."
        )

    def __reduce__(self) -> tuple[type, tuple[str, list[tuple[str, Path, str]]]]:
        return Unreachable, (self.reason, self.missing)  # raised in a Ray worker, it is pickled to the driver


def split_checksum(ref: str) -> tuple[str, str | None]:
    """'URI#sha256=HEX' -> ('URI', 'hex')."""
    uri, sep, fragment = ref.partition("#sha256=")
    if not sep:
        return ref, None
    digest = fragment.strip().lower()
    if len(digest) < 8 or any(c not in "0123456789abcdef" for c in digest):
        raise WeightsError(f"{ref}: '#sha256=' must be followed by at least 8 hex digits")
    return uri, digest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cached_path(uri: str) -> Path:
    """Where a remote URI lives in the cache: one folder per URI, the file's own name."""
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    name = uri.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "weights.pth"
    return cache_dir() / "weights" / key / name


def fetch(uri: str, sha256: str | None, *, flag: str) -> Path:
    """A local file holding the weights at `uri`, downloading into the cache if needed.

    `flag` names the command-line option that takes a local file instead, for the message
    shown when the download is impossible (offline machine, no bucket access).
    """
    if scheme(uri) == "file":
        _, path = resolve(uri)
        local = Path(path)
        if not local.is_file():
            raise WeightsError(f"{uri}: no such weight file; pass an existing file with {flag}")
        _verify(local, sha256, uri)
        return local
    dest = cached_path(uri)
    if dest.is_file():
        _verify(dest, sha256, uri, cached=True)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".download-")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in _stream(uri, dest, flag):
                digest.update(chunk)
                out.write(chunk)
        _check_digest(digest.hexdigest(), sha256, uri, "the download was discarded and nothing was cached")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _stream(uri: str, dest: Path, flag: str) -> Iterator[bytes]:
    kind = scheme(uri)
    try:
        if kind in ("http", "https"):
            request = urllib.request.Request(uri, headers={"User-Agent": "adain-ray"})
            with urllib.request.urlopen(request, timeout=60) as response:
                length, received = response.headers.get("Content-Length"), 0
                while chunk := response.read(_CHUNK):
                    received += len(chunk)
                    yield chunk
                # http.client ends a body cut short with b"", as if it were complete
                if length and length.isdigit() and received < int(length):
                    raise _broken_off(uri, f"{received:,} of {int(length):,} bytes", flag)
        else:
            filesystem, path = resolve(uri)
            with filesystem.open_input_stream(path) as stream:
                while chunk := stream.read(_CHUNK):
                    yield chunk
    except urllib.error.HTTPError as exc:
        raise WeightsError(
            f"{uri}: the server answered HTTP {exc.code}; check the URL, or pass a local file with {flag}"
        ) from exc
    except StorageError as exc:
        raise WeightsError(f"{exc}; or pass a local weight file with {flag}") from exc
    except http.client.HTTPException as exc:  # IncompleteRead of a chunked body, a malformed answer
        raise _broken_off(uri, type(exc).__name__, flag) from exc
    except OSError as exc:  # URLError, timeouts, refused connections, pyarrow's network errors
        if kind not in ("http", "https") and not _is_network_error(exc):
            raise WeightsError(f"{storage_error(exc, uri)}; or pass a local weight file with {flag}") from exc
        reason = getattr(exc, "reason", None) or str(exc).strip().splitlines()[0]
        raise Unreachable(str(reason), [(uri, dest, flag)]) from exc


def _broken_off(uri: str, what: str, flag: str) -> WeightsError:
    return WeightsError(
        f"could not download {uri}: the server broke off ({what}); nothing was cached. "
        f"Run again, or pass a local file with {flag}"
    )


def forget(path: Path) -> bool:
    """Remove `path` if it is a downloaded file in the cache (one found unreadable): whether it was."""
    if not path.resolve().is_relative_to((cache_dir() / "weights").resolve()):
        return False
    path.unlink(missing_ok=True)
    return True


def _is_network_error(exc: OSError) -> bool:
    text = str(exc)
    return isinstance(exc, (ConnectionError, TimeoutError)) or any(
        marker in text for marker in ("NETWORK_CONNECTION", "curlCode", "Couldn't connect", "timed out")
    )


def _verify(path: Path, sha256: str | None, uri: str, cached: bool = False) -> None:
    if sha256 is not None:
        hint = f"delete {path} to download it again" if cached else "check the file and the checksum"
        _check_digest(sha256_file(path), sha256, uri, hint)


def _check_digest(actual: str, expected: str | None, uri: str, consequence: str) -> None:
    if expected is not None and not actual.startswith(expected):
        raise WeightsError(f"{uri}: sha256 mismatch (expected {expected}, got {actual}); {consequence}")
