"""URIs and filesystems: one way to read and write local paths, s3:// and gs://.

Everything goes through pyarrow's filesystems, as Ray Data does, so the standard AWS
credential chain and `AWS_ENDPOINT_URL` (MinIO, Ceph, ...) work the same everywhere.
Writes are atomic: a reader sees the whole object or nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import stat
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.errors import StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

REMOTE_SCHEMES = ("s3", "gs", "gcs")


def scheme(uri: str) -> str:
    """'s3', 'gs', 'http', ... or 'file' for a plain path."""
    head, sep, _ = uri.partition("://")
    return head.lower() if sep else "file"


def is_remote(uri: str) -> bool:
    return scheme(uri) in REMOTE_SCHEMES


def absolute(uri: str) -> str:
    """Local paths made absolute (Ray workers may run elsewhere or in another directory);
    URIs of object stores unchanged, once seen to name a bucket (`s3://` alone would otherwise
    be joined into the local path `s3:/...`)."""
    kind = scheme(uri)
    if kind in REMOTE_SCHEMES:
        _bucket_key(uri)
    return resolve(uri)[1] if kind == "file" else uri


def canonical(uri: str) -> str:
    """The one spelling of a place: a local path with its links resolved (`alias/x` and `real/x`
    are one file), an object-store URI without a trailing '/'."""
    return os.path.realpath(resolve(uri)[1]) if scheme(uri) == "file" else uri.rstrip("/")


def within(uri: str, folder: str) -> bool:
    """Whether `uri` is `folder` or lies under it, links resolved (see `canonical`)."""
    return inside(canonical(uri), canonical(folder))


def inside(place: str, top: str) -> bool:
    """Whether the canonical `place` is the canonical `top` or lies under it."""
    return place == top or place.startswith(top.rstrip("/") + "/")


def utf8(name: str) -> bool:
    """Whether a name (a local file's, an argument) is UTF-8: Python holds any other bytes as lone
    surrogates, which Arrow strings, object keys and the manifest cannot carry."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_inside(uri: str, top: str) -> None:
    """Refuse a local `uri` whose folder, links resolved, is not under `top` (links resolved): a
    symbolic link inside `top` would land the write elsewhere (onto an input, say). The first
    folder on the way that leads out is named."""
    if scheme(uri) != "file":
        return  # an object store has no links: a key is where its name says
    real_top, folder = canonical(top), os.path.dirname(resolve(uri)[1])
    if inside(os.path.realpath(folder), real_top):
        return
    place = resolve(top)[1]
    for part in os.path.relpath(folder, place).split(os.sep):
        place = os.path.join(place, part)
        if not inside(os.path.realpath(place), real_top):
            break
    raise StorageError(f"{place} leads outside the output (a symbolic link); remove it")


def join(base: str, *parts: str) -> str:
    """Join with "/", keeping the scheme."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


# Transient errors (5xx, SlowDown, throttling, timeouts, dropped connections) are retried at two
# levels, both bounded and both with exponential backoff and jitter: the AWS SDK retries each HTTP
# request (AWS "standard" mode, 3 attempts: a blip inside a long download or a multipart upload
# costs one request, not the whole transfer), and `retrying` retries the whole operation when the
# SDK gives up (ATTEMPTS times; the SDK cannot retry everything: reading an object smaller than
# S3's XML error body fails as "Failed to flush response stream", which it does not retry). So one
# operation makes at most SDK_ATTEMPTS x ATTEMPTS requests, over about ten seconds at worst.
# Permanent errors (no such bucket or key, access denied, bad credentials, other 4xx) are retried
# by neither: one request, then a one-line StorageError.
SDK_ATTEMPTS = 3
ATTEMPTS = 4
BASE_DELAY_S = 0.2


def s3_endpoint() -> str | None:
    """The S3 endpoint users set for MinIO, Ceph, ... as pyarrow and the AWS SDKs read it."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@lru_cache(maxsize=32)
def _filesystem(scheme_: str, bucket: str, endpoint: str | None) -> pafs.FileSystem:
    # One filesystem object per bucket and endpoint: creating one may resolve the bucket's region.
    if scheme_ == "s3":
        # As FileSystem.from_uri builds it (endpoint from the environment, else the bucket's
        # region), but with the retry strategy above: from_uri leaves the SDK's legacy default,
        # 11 attempts within about two seconds, for every request.
        region = None if endpoint else pafs.resolve_s3_region(bucket)
        retry = pafs.AwsStandardS3RetryStrategy(max_attempts=SDK_ATTEMPTS)
        return pafs.S3FileSystem(region=region, endpoint_override=endpoint, retry_strategy=retry)
    filesystem, _ = pafs.FileSystem.from_uri(f"{scheme_}://{bucket}")
    return filesystem


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A URI or local path -> (filesystem, path inside it)."""
    kind = scheme(uri)
    if kind == "file":
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    if kind not in REMOTE_SCHEMES:
        raise StorageError(f"{uri}: unsupported URI scheme '{kind}://'; use a local path, s3:// or gs://")
    bucket, _ = _bucket_key(uri)
    try:
        return _filesystem(kind, bucket, s3_endpoint() if kind == "s3" else None), uri.split("://", 1)[1].rstrip("/")
    except OSError as exc:
        raise storage_error(exc, uri) from exc


_DENIED = (
    "ACCESS_DENIED",
    "AccessDenied",
    "INVALID_ACCESS_KEY_ID",
    "InvalidAccessKeyId",
    "SIGNATURE_DOES_NOT_MATCH",
    "SignatureDoesNotMatch",
    "EXPIRED_TOKEN",
    "ExpiredToken",
    "HTTP status 403",
    "An error occurred (403)",  # botocore, when a HEAD has no error body to name the code
)
_MISSING = ("NO_SUCH_BUCKET", "NoSuchBucket", "NO_SUCH_KEY", "NoSuchKey", "NOT_FOUND")
# A client error the SDK has no name for: retrying cannot help, except for 408 and 429.
_OTHER_CLIENT_ERROR = re.compile(r"HTTP status 4(?!08|29)\d\d")


def storage_error(exc: BaseException, uri: str, attempts: int = 1) -> StorageError:
    """Turn a filesystem exception into a one-line error that says what to do.

    `attempts` > 1: a transient error that outlasted that many tries with backoff."""
    text = str(exc)
    if isinstance(exc, FileNotFoundError) or "Path does not exist" in text or "NOT_FOUND" in text:
        if is_remote(uri) and not _bucket_exists(uri):
            return StorageError(f"{uri}: the bucket does not exist; create it or fix the URI")
        return StorageError(f"{uri}: not found; check the path")
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
        return StorageError(f"{uri}: the bucket does not exist; create it or fix the URI")
    if isinstance(exc, PermissionError) or any(marker in text for marker in _DENIED):
        if not is_remote(uri):  # a local path: no credentials or bucket policy to look at
            return StorageError(f"{uri}: permission denied; check the file's or its folder's permissions and owner")
        return StorageError(
            f"{uri}: access denied; check the credentials (AWS_PROFILE, instance profile, "
            "GOOGLE_APPLICATION_CREDENTIALS) and the bucket's policy"
        )
    first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if attempts > 1:
        return StorageError(
            f"{uri}: {first_line}; still failing after {attempts} tries with backoff: the object store is "
            "down, unreachable or throttling; check it (and AWS_ENDPOINT_URL), then run again"
        )
    return StorageError(f"{uri}: {first_line}")


def _is_permanent(exc: OSError) -> bool:
    """Errors that no retry can fix: missing bucket or key, denied access, other client errors."""
    text = str(exc)
    return (
        isinstance(exc, (FileNotFoundError, PermissionError))
        or any(marker in text for marker in (*_MISSING, *_DENIED))
        or _OTHER_CLIENT_ERROR.search(text) is not None
    )


def open_input(uri: str) -> pa.NativeFile:
    """A random-access file over an object or file (ranged GETs on object stores), opened with
    `retrying`: Parquet footers and row groups read without the whole object."""
    filesystem, path = resolve(uri)
    return retrying(lambda: filesystem.open_input_file(path), uri)


def retrying(action: Callable[[], T], uri: str, attempts: int = ATTEMPTS, delay: float = BASE_DELAY_S) -> T:
    """Run a storage action, retrying transient errors with exponential backoff and jitter.

    Permanent errors (not found, no bucket, no permission) fail at once; the last
    transient error becomes a one-line StorageError.
    """
    for attempt in range(attempts):
        try:
            return action()
        except OSError as exc:
            if _is_permanent(exc) or scheme(uri) == "file":  # a local disk's errors do not go away
                raise storage_error(exc, uri) from exc
            if attempt == attempts - 1:
                raise storage_error(exc, uri, attempts) from exc
            log.debug("retrying %s after %s", uri, exc)
            time.sleep(delay * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")


def _bucket_exists(uri: str) -> bool:
    """Reads of a key in a missing bucket fail as a plain 404; ask about the bucket itself."""
    filesystem, path = resolve(uri)
    try:
        return filesystem.get_file_info(path.split("/", 1)[0]).type != pafs.FileType.NotFound
    except OSError:
        return True  # can't tell: keep the plain "not found"


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The whole object or file. On S3 one GET (pyarrow would ask for the size first, a HEAD).

    With `max_bytes`, a file: a local path that is not a regular file (a FIFO, a device) is refused
    unopened, and anything larger than `max_bytes` unread."""
    if scheme(uri) == "s3":
        bucket, key = _bucket_key(uri)

        def get() -> bytes:
            answer = request_client().get_object(Bucket=bucket, Key=key)
            if max_bytes is not None:
                _check_size(uri, answer["ContentLength"], max_bytes)
            return answer["Body"].read()

        try:
            return retrying(lambda: s3_call(get), uri)
        except StorageError as exc:
            if isinstance(exc.__cause__, FileNotFoundError) and not key.endswith("/"):
                _slashed_key(uri, bucket, key)
            raise
    filesystem, path = resolve(uri)
    if max_bytes is not None:
        if isinstance(filesystem, pafs.LocalFileSystem):
            _check_size(uri, regular_file_size(uri), max_bytes)
        else:
            _check_size(uri, retrying(lambda: filesystem.get_file_info(path).size, uri) or 0, max_bytes)

    def read() -> bytes:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()

    return retrying(read, uri)


def _slashed_key(uri: str, bucket: str, key: str) -> None:
    """A prefix's listing (pyarrow's) drops the '/' that ends a key: an object `KEY/` that holds
    data is listed as `KEY`, which is not there. StorageError saying so, where it is (one HEAD)."""
    try:
        size = s3_call(lambda: request_client().head_object(Bucket=bucket, Key=key + "/"))["ContentLength"]
    except OSError:
        return  # not there either (or not answering): the plain "not found"
    if size:  # a zero-byte KEY/ is a folder marker, no image
        raise StorageError(
            f"{uri}: not found; the object {uri}/ ({size:,} bytes, its key ends in '/') is what was listed: "
            "name it with its '/' in a list file, or copy it to a key without one"
        )


def regular_file_size(uri: str) -> int:
    """A local file's size; one that is not a regular file (a FIFO, a device, a socket) is refused."""
    status = retrying(lambda: os.stat(resolve(uri)[1]), uri)  # stat, not open: opening a FIFO waits for a writer
    if not stat.S_ISREG(status.st_mode):
        raise StorageError(f"{uri}: not a regular file (a FIFO, device or socket); give a file")
    return status.st_size


def _check_size(uri: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise StorageError(
            f"{uri}: {size:,} bytes, over the limit of {max_bytes:,} for one file; "
            "remove it, or raise --max-pixels if it is an image that large"
        )


# At most this many requests in flight per process (--io-concurrency): one pooled connection each.
MAX_CONNECTIONS = 128


@lru_cache(maxsize=4)
def io_pool(workers: int) -> ThreadPoolExecutor:
    """The threads a process keeps `workers` requests in flight with (one pool per size, kept)."""
    return ThreadPoolExecutor(max(1, min(workers, MAX_CONNECTIONS)), thread_name_prefix="adain-io")


@lru_cache(maxsize=8)
def s3_client(endpoint: str | None, attempts: int = SDK_ATTEMPTS * ATTEMPTS):
    """One boto3 client per endpoint and retry budget (thread-safe, shared by a process's threads).
    boto3 sends keys as they are: `in//x.jpg` and `d/../y.jpg` are the objects they name, where
    pyarrow's filesystem refuses or normalises them."""
    import boto3
    from botocore.config import Config

    retries = {"max_attempts": attempts, "mode": "standard"}
    # The timeouts pyarrow's SDK has (1 s to connect; an answer silent for 3 s is abandoned and asked again).
    config = Config(retries=retries, connect_timeout=1, read_timeout=3, max_pool_connections=MAX_CONNECTIONS)
    return boto3.client("s3", endpoint_url=endpoint, config=config)


def request_client():
    """The client of single requests inside `retrying`: SDK_ATTEMPTS per request, as pyarrow's."""
    return s3_client(s3_endpoint(), SDK_ATTEMPTS)


def _bucket_key(uri: str) -> tuple[str, str]:
    """An object-store URI's bucket and key; one without a bucket (`s3://`, `gs:///x`) is refused."""
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket in the URI; write {scheme(uri)}://BUCKET/PREFIX")
    return bucket, key


def s3_call(action: Callable[[], T]) -> T:
    """A boto3 call in `retrying`'s terms: its errors become OSErrors worded as pyarrow's (a missing
    key FileNotFoundError, HTTP status and S3 code in the text), so that permanent ones fail at
    once and transient ones (5xx, throttling, timeouts, dropped connections) are retried."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError

    try:
        return action()
    except NoCredentialsError as exc:
        raise PermissionError(str(exc)) from None
    except ParamValidationError as exc:  # an empty key, say: what S3 would refuse
        raise OSError(f"InvalidArgument: {' '.join(str(exc).split())} (HTTP status 400)") from None
    except ClientError as exc:
        error, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
        code, status = error.get("Code", ""), meta.get("HTTPStatusCode", 0)
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(str(exc)) from None
        raise OSError(f"{code}: {error.get('Message', exc)} (HTTP status {status})") from None
    except BotoCoreError as exc:
        raise OSError(f"{type(exc).__name__}: {exc}") from None


# Objects up to this size go up in one PUT (atomic: the object appears whole); larger ones in
# parts, as pyarrow uploads them (create, parts, complete: atomic as well).
SINGLE_PUT_BYTES = 8 * 1024 * 1024


def write_bytes(uri: str, data: bytes) -> None:
    """Write an object so that readers see all of it or nothing.

    Local: a temporary file beside the target, then rename. S3: one PUT up to SINGLE_PUT_BYTES,
    else a multipart upload; either way the object appears only when the upload completes.
    """
    if scheme(uri) == "s3" and len(data) <= SINGLE_PUT_BYTES:
        bucket, key = _bucket_key(uri)
        retrying(lambda: s3_call(lambda: request_client().put_object(Bucket=bucket, Key=key, Body=data)), uri)
        return
    filesystem, path = resolve(uri)

    def write() -> None:
        if isinstance(filesystem, pafs.LocalFileSystem):
            _write_local_atomic(path, data)
        else:
            with filesystem.open_output_stream(path) as stream:
                stream.write(data)

    retrying(write, uri)


def _umask() -> int:
    """The process umask, read without changing it (Linux), else by setting and restoring it once."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file: files are shared as any tool's are


def _write_local_atomic(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes it 0600, private to this user
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def delete(uri: str) -> None:
    """Remove an object or file; one already gone is fine."""
    filesystem, path = resolve(uri)
    if scheme(uri) == "s3":  # boto3: pyarrow would leave a folder marker where the last object was
        bucket, key = uri.split("://", 1)[1].split("/", 1)
        from botocore.exceptions import ClientError

        try:
            s3_client(s3_endpoint()).delete_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            raise storage_error(exc, uri) from None
        return

    def remove() -> None:
        with contextlib.suppress(FileNotFoundError):
            filesystem.delete_file(path)

    retrying(remove, uri)


def check_not_a_file(prefix: str, flag: str = "--output") -> None:
    """A local `prefix` to write under is a folder, or can be made one: no file is there or above
    it (else every write fails on it, naming the file's own path as 'File exists')."""
    if not prefix or scheme(prefix) != "file":
        return  # an object store's prefix is a name, whatever object has that name
    path = resolve(prefix)[1]
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise StorageError(f"{flag}: {path} is a file, not a directory; give a directory (or prefix) to write under")


def check_writable(prefix: str, flag: str = "--output") -> None:
    """Prove that objects can be written under `prefix` (a probe written and deleted), before any
    work is spent on outputs that could not be written. Leaves nothing behind: local folders
    it had to make are removed again."""
    check_not_a_file(prefix, flag)
    probe = join(prefix, f".adain-probe-{uuid.uuid4().hex[:12]}")
    made = _missing_folders(probe) if scheme(prefix) == "file" else []
    try:
        write_bytes(probe, b"")
        delete(probe)
    except StorageError as exc:
        raise StorageError(f"cannot write to the output {prefix}: {exc}") from None
    except OSError as exc:
        raise StorageError(f"cannot write to the output {prefix}: {exc.strerror or exc}") from None
    finally:
        for folder in made:
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def _missing_folders(uri: str) -> list[str]:
    """The local folders above `uri` that do not exist yet, deepest first."""
    folders = []
    folder = os.path.dirname(resolve(uri)[1])
    while folder and not os.path.exists(folder):
        folders.append(folder)
        folder = os.path.dirname(folder)
    return folders


def exists(uri: str) -> bool:
    filesystem, path = resolve(uri)
    return retrying(lambda: filesystem.get_file_info(path).type != pafs.FileType.NotFound, uri)


def version(uri: str) -> str:
    """What tells this file or object from another saved under its name since: on S3 its ETag (which
    changes with the content), elsewhere its size and modification time."""
    if scheme(uri) == "s3":
        bucket, key = _bucket_key(uri)
        head = retrying(lambda: s3_call(lambda: request_client().head_object(Bucket=bucket, Key=key)), uri)
        return f"etag {head['ETag']}"
    filesystem, path = resolve(uri)
    info = retrying(lambda: filesystem.get_file_info(path), uri)
    return f"size {info.size} mtime_ns {info.mtime_ns}"


def is_dir(uri: str) -> bool:
    """True for a local directory or an object-store prefix with objects under it. An object-store
    URI written with a trailing '/' is that prefix, even where an object has its name without the '/'
    (s3://b/in beside s3://b/in/a.jpg, which makes `get_file_info` answer File)."""
    filesystem, path = resolve(uri)
    if is_remote(uri) and uri.endswith("/"):
        under = pafs.FileSelector(path, allow_not_found=True)
        return retrying(lambda: bool(filesystem.get_file_info(under)), uri)
    return retrying(lambda: filesystem.get_file_info(path).type == pafs.FileType.Directory, uri)
