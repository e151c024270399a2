"""A run lock as a lease: one run at a time over an output, renewed while that run lives.

The lock object holds its owner, host, pid and expiry. It is created only if absent (an
exclusive create locally, a conditional PUT `If-None-Match: *` on S3), renewed by its run
every third of its time to live (`LeaseKeeper`), and taken over only once expired, by a
conditional replace of exactly the object that was judged expired (S3 `If-Match` on its
ETag; locally an atomic rename over it, under a guard file that only one process holds). A lock whose content
cannot be read is judged by its age: it is taken over once older than the time to live.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from pipeline.errors import StorageError
from pipeline.storage.uri import FILE_MODE, resolve, retrying, s3_client, s3_endpoint, scheme, storage_error

log = logging.getLogger(__name__)
_CONFLICT = ("PreconditionFailed", "ConditionalRequestConflict")
_GUARD_STALE_S = 30.0  # a replace takes milliseconds: a guard this old was left by a dead process


@dataclass
class Lease:
    uri: str
    owner: str
    ttl_s: float
    token: Any = None  # what identifies the version of the lock object that is ours
    lost: str | None = None  # why the lease is no longer ours, if it is not
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass(frozen=True)
class Found:
    data: bytes
    token: Any  # S3: the ETag; local: the bytes themselves
    written_at: float  # the object's modification time


class _LocalLock:
    def __init__(self, path: str) -> None:
        self.path = path

    def create(self, data: bytes) -> Any:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return data

    def read(self) -> Found | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
            return Found(data, data, os.stat(self.path).st_mtime)
        except FileNotFoundError:
            return None

    def replace(self, data: bytes, token: Any) -> Any:
        """Replace the lock if it still holds `token`'s bytes (None if not): checked and replaced
        (an atomic rename of a new file over it) under the guard, so that no two can."""
        with self._guard():
            found = self.read()
            if found is None or found.token != token:
                return None
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".lock-")
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), FILE_MODE)
                handle.write(data)
            os.replace(tmp, self.path)
            return data

    def delete(self, token: Any) -> None:
        with self._guard():
            found = self.read()
            if found is not None and found.token == token:
                os.unlink(self.path)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """A short-lived exclusive file serialising every replace and delete of the lock; one
        left by a process that died while it held it is removed after _GUARD_STALE_S."""
        guard = f"{self.path}.guard"
        deadline = time.monotonic() + 2 * _GUARD_STALE_S
        while True:
            try:
                os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
                break
            except FileExistsError:
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - os.stat(guard).st_mtime > _GUARD_STALE_S:
                        os.unlink(guard)
                        continue
                if time.monotonic() > deadline:
                    raise StorageError(f"{guard}: held for too long; delete it if no adain run is starting") from None
                time.sleep(0.01)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(guard)


class _S3Lock:
    def __init__(self, uri: str, path: str) -> None:
        self.uri = uri
        self.bucket, self.key = path.split("/", 1)
        self.client = s3_client(s3_endpoint())  # one client per endpoint, shared with uri.py's raw reads

    def _put(self, data: bytes, **condition: str) -> Any:
        from botocore.exceptions import ClientError

        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, **condition)["ETag"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _CONFLICT:
                return None
            raise storage_error(exc, self.uri) from exc

    def create(self, data: bytes) -> Any:
        return self._put(data, IfNoneMatch="*")

    def read(self) -> Found | None:
        from botocore.exceptions import ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise storage_error(exc, self.uri) from exc
        return Found(got["Body"].read(), got["ETag"], got["LastModified"].timestamp())

    def replace(self, data: bytes, token: Any) -> Any:
        return self._put(data, IfMatch=token)

    def delete(self, token: Any) -> None:
        found = self.read()
        if found is not None and found.token == token:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


def _store(uri: str) -> _LocalLock | _S3Lock:
    filesystem, path = resolve(uri)
    if isinstance(filesystem, pafs.LocalFileSystem):
        return _LocalLock(path)
    if scheme(uri) == "s3":
        return _S3Lock(uri, path)
    raise StorageError(f"{uri}: run locks need a local path or s3://; put the output there")


def _body(owner: str, ttl_s: float, acquired_at: float | None = None) -> bytes:
    now = time.time()
    body = {
        "owner": owner,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "acquired_at": acquired_at or now,
        "renewed_at": now,
        "expires_at": now + ttl_s,
    }
    return json.dumps(body).encode()


def holder_of(data: bytes) -> dict[str, Any] | None:
    """The lock's fields, or None if they are not what a lock holds (garbage, empty, odd types)."""
    try:
        holder = json.loads(data)
    except ValueError:
        return None
    if not isinstance(holder, dict) or not isinstance(holder.get("owner"), str):
        return None
    expires = holder.get("expires_at")
    if isinstance(expires, bool) or not isinstance(expires, (int, float)):
        return None
    return holder


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def acquire(uri: str, owner: str, ttl_s: float) -> Lease:
    """Take the lease at `uri` for `ttl_s` seconds, or fail with who holds it and until when."""
    store = _store(uri)
    for _ in range(5):
        token = retrying(lambda: store.create(_body(owner, ttl_s)), uri)
        if token is not None:
            return Lease(uri, owner, ttl_s, token)
        found = retrying(store.read, uri)
        if found is None:
            continue  # released meanwhile: try again
        holder = holder_of(found.data)
        now = time.time()
        if holder is None and found.written_at + ttl_s > now:
            raise StorageError(
                f"{uri}: this run lock cannot be read (written {_when(found.written_at)}); it is taken over "
                f"from {_when(found.written_at + ttl_s)} (--lock-ttl), or delete it now if no run holds it"
            )
        if holder is not None and holder["expires_at"] > now:
            raise StorageError(
                f"{uri}: run {holder['owner']} on {holder.get('host')} holds this output until "
                f"{_when(holder['expires_at'])}; wait for it to finish, or delete this lock file if that run is dead"
            )
        who = "an unreadable lock" if holder is None else f"run {holder['owner']}'s expired lock"
        token = retrying(lambda stale=found.token: store.replace(_body(owner, ttl_s), stale), uri)
        if token is not None:
            log.warning("%s: took over %s", uri, who)
            return Lease(uri, owner, ttl_s, token)
    raise StorageError(f"{uri}: could not take the run lock; another run keeps taking it")


def renew(lease: Lease) -> bool:
    """Push the lease's expiry on by its time to live; False (and `lost` says why) if it is no
    longer ours."""
    with lease.lock:
        if lease.lost is not None:
            return False
        store = _store(lease.uri)
        token = retrying(lambda: store.replace(_body(lease.owner, lease.ttl_s), lease.token), lease.uri)
        if token is None:
            found = store.read()
            holder = holder_of(found.data) if found is not None else None
            lease.lost = f"{lease.uri}: the run lock was taken by {holder['owner'] if holder else 'another run'}"
            return False
        lease.token = token
        return True


def release(lease: Lease) -> None:
    """Give the lease back, if it is still ours."""
    with lease.lock:
        if lease.lost is None:
            _store(lease.uri).delete(lease.token)
        lease.lost = lease.lost or "released"


class LeaseKeeper:
    """Renews a lease in the background, every third of its time to live, while a run works."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="adain-lease", daemon=True)

    def _run(self) -> None:
        every = max(0.2, self.lease.ttl_s / 3)
        while not self._stop.wait(every):
            try:
                if not renew(self.lease):
                    log.error("%s; this run's outputs may be overwritten by the other run", self.lease.lost)
                    return
            except StorageError as exc:  # a blip: the next renewal may succeed before expiry
                log.warning("could not renew the run lock: %s", exc)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def release_if_dead(uri: str) -> None:
    """Release a run lock whose run died on this host (its process is gone: killed, crashed),
    so that the same command run again goes on at once instead of waiting out --lock-ttl.
    A lock of another host, or of a live process, is left to `acquire`."""
    store = _store(uri)
    try:
        found = store.read()
    except StorageError:
        return
    holder = holder_of(found.data) if found is not None else None
    if found is None or holder is None or holder.get("host") != socket.gethostname():
        return
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or pid == os.getpid():
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        log.warning("%s: run %s (pid %d on this host) is gone; taking over its lock", uri, holder["owner"], pid)
        store.delete(found.token)
    except PermissionError:
        pass  # alive, another user's
