"""A lease object with expiry, so that two runs over one output never work at once.

The lease is created only if absent: an exclusive create for local paths, a conditional
PUT (If-None-Match: *) on S3. A lease past its expiry belongs to a run that died and is
taken over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass

import pyarrow.fs as pafs

from pipeline.errors import StorageError
from pipeline.storage.uri import exists, read_bytes, resolve, retrying, scheme, storage_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    uri: str
    owner: str


def _create_exclusive(uri: str, data: bytes) -> bool:
    """Create `uri` holding `data` unless it exists; True if this call created it."""
    filesystem, path = resolve(uri)
    if isinstance(filesystem, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return True
    if scheme(uri) != "s3":
        raise StorageError(f"{uri}: run locks need a local path or s3://; put the output there")
    import boto3
    from botocore.exceptions import ClientError

    bucket, key = path.split("/", 1)
    try:
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise storage_error(exc, uri) from exc
    return True


def _delete(uri: str) -> None:
    filesystem, path = resolve(uri)
    with contextlib.suppress(FileNotFoundError):
        filesystem.delete_file(path)


def acquire(uri: str, owner: str, ttl_s: float) -> Lease:
    """Take the lease at `uri` for `ttl_s` seconds, or fail with who holds it and until when."""
    now = time.time()
    body = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "acquired_at": now}
    data = json.dumps({**body, "expires_at": now + ttl_s}).encode()
    for _ in range(3):
        if retrying(lambda: _create_exclusive(uri, data), uri):
            return Lease(uri, owner)
        try:
            holder = json.loads(read_bytes(uri))
        except (StorageError, ValueError):
            continue  # released or half-visible meanwhile: try again
        if holder.get("expires_at", 0) > time.time():
            until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(holder["expires_at"]))
            raise StorageError(
                f"{uri}: run {holder.get('owner')} on {holder.get('host')} holds this output until {until}; "
                "wait for it to finish, or delete this lock file if that run is dead"
            )
        _delete(uri)  # expired: its run died; take over
    raise StorageError(f"{uri}: could not take the run lock; another run keeps taking it")


def release(lease: Lease) -> None:
    """Give the lease back, if it is still ours."""
    try:
        holder = json.loads(read_bytes(lease.uri))
    except (StorageError, ValueError):
        return
    if holder.get("owner") == lease.owner:
        _delete(lease.uri)


def release_if_dead(uri: str) -> None:
    """Release a run lock whose run died on this host (its process is gone: killed, crashed),
    so that the same command run again goes on at once instead of waiting out --lock-ttl.
    A lock of another host, or of a live process, is left to `acquire`."""
    try:
        holder = json.loads(read_bytes(uri)) if exists(uri) else None
    except (StorageError, ValueError):
        return
    if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
        return
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        log.warning("%s: run %s (pid %d on this host) is gone; taking over its lock", uri, holder.get("owner"), pid)
        release(Lease(uri, str(holder.get("owner"))))
    except PermissionError:
        pass  # alive, another user's
