"""Object-store faults: transient errors and slow answers are retried, permanent ones fail at once.

The product reaches the embedded S3 server through a fault-injecting HTTP proxy (tests/faults.py),
set as AWS_ENDPOINT_URL exactly as a user points it at MinIO: real HTTP, nothing patched. The
proxy counts every request, so the tests see how many attempts each operation made.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import OutputSpec, Sizing
from pipeline.data.decode import decode_inputs
from pipeline.data.listing import list_inputs
from pipeline.data.plan import RESUME_NEVER, EveryStyle, Plan
from pipeline.data.writers import FileWriter
from pipeline.errors import StorageError
from pipeline.storage import listing
from pipeline.storage import uri as storage
from pipeline.storage.index import ObjectIndex
from pipeline.storage.keys import output_key
from pipeline.storage.listing import list_files, stat_files
from pipeline.storage.uri import ATTEMPTS, SDK_ATTEMPTS, exists, read_bytes, storage_error, write_bytes
from tests import images
from tests.conftest import S3Server, WeightFiles
from tests.faults import FaultProxy

FAST_S = 5.0  # "fails fast": no backoff loop (timings on a shared 2-core machine are noisy)


@pytest.fixture
def proxy(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The proxy in front of the S3 server, set as this process's S3 endpoint for the test."""
    with FaultProxy(s3_server.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        yield proxy


def one_line(exc: pytest.ExceptionInfo[StorageError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


def timed(action) -> tuple[object, float]:
    start = time.monotonic()
    return action(), time.monotonic() - start


def no_request_repeated(proxy: FaultProxy) -> None:
    repeats = {k: n for k, n in Counter((s.method, s.path) for s in proxy.seen()).items() if n > 1}
    assert not repeats, f"retried a permanent error: {repeats}"


# --------------------------------------------------------------------------- transient errors


def test_reads_writes_and_listings_survive_injected_503s(proxy: FaultProxy, s3_server: S3Server, bucket: str) -> None:
    key = f"/{bucket}/data/a.bin"
    uri = f"s3://{bucket}/data/a.bin"
    payload = os.urandom(50_000)

    proxy.fail("PUT", key, 503, times=2)  # the upload's part: SlowDown twice
    write_bytes(uri, payload)
    assert s3_server.client().get_object(Bucket=bucket, Key="data/a.bin")["Body"].read() == payload
    assert proxy.count("PUT", key) == 3 and proxy.count("PUT", key, status=503) == 2

    proxy.fail("GET", key, 500, times=2)  # InternalError twice
    assert read_bytes(uri) == payload
    assert proxy.count("GET", key) == 3

    proxy.fail("HEAD", key, 503, times=2)
    assert exists(uri)
    assert proxy.count("HEAD", key) >= 3

    write_bytes(f"s3://{bucket}/data/sub/b.bin", b"b")
    proxy.clear()
    proxy.fail("GET", "list-type=2", 503, times=2)
    assert [rel for _, rel in list_files(f"s3://{bucket}/data", (".bin",))] == ["a.bin", "sub/b.bin"]
    assert proxy.count("GET", "list-type=2", status=503) == 2 and proxy.count("GET", "list-type=2") == 3
    proxy.fail("GET", "list-type=2", 500, times=1)
    assert [stat.size for stat in stat_files(f"s3://{bucket}/data/", (".bin",))] == [50_000, 1]


def test_more_failures_than_the_sdk_retries_are_retried_by_the_operation(
    proxy: FaultProxy, s3_server: S3Server, bucket: str
) -> None:
    """Past the SDK's attempts for one request, the whole read is tried again after a backoff."""
    payload = os.urandom(4096)
    s3_server.client().put_object(Bucket=bucket, Key="k.bin", Body=payload)
    proxy.fail("GET", f"/{bucket}/k.bin", 503, times=SDK_ATTEMPTS + 1)
    assert read_bytes(f"s3://{bucket}/k.bin") == payload
    assert proxy.count("GET", f"/{bucket}/k.bin") == SDK_ATTEMPTS + 2
    assert proxy.count("HEAD", f"/{bucket}/k.bin") == 0  # a read is GETs only, however often it starts over


def test_errors_reading_tiny_objects_are_retried_by_the_operation(
    proxy: FaultProxy, s3_server: S3Server, bucket: str
) -> None:
    """pyarrow reads an object into a buffer of the object's size: S3's XML error body does not fit
    into a few bytes, and the SDK reports "Failed to flush response stream" and does not retry.
    Retrying the operation covers it (small objects: run summaries, lock files, list files)."""
    s3_server.client().put_object(Bucket=bucket, Key="tiny.json", Body=b"{}")
    proxy.fail("GET", f"/{bucket}/tiny.json", 503, times=2)
    assert read_bytes(f"s3://{bucket}/tiny.json") == b"{}"
    assert proxy.count("GET", f"/{bucket}/tiny.json") == 3


def test_dropped_connections_are_retried(proxy: FaultProxy, s3_server: S3Server, bucket: str) -> None:
    payload = os.urandom(4096)
    s3_server.client().put_object(Bucket=bucket, Key="k.bin", Body=payload)
    proxy.drop("GET", f"/{bucket}/k.bin", times=2)
    assert read_bytes(f"s3://{bucket}/k.bin") == payload
    assert proxy.count("GET", f"/{bucket}/k.bin", status=None) == 2
    # The upload reached the store but its answer was lost: sent again, same object.
    proxy.drop("PUT", f"/{bucket}/out.bin", times=1, forward_first=True)
    write_bytes(f"s3://{bucket}/out.bin", b"written once")
    assert s3_server.client().get_object(Bucket=bucket, Key="out.bin")["Body"].read() == b"written once"
    assert proxy.count("PUT", f"/{bucket}/out.bin") >= 2


def test_slow_answers_are_waited_for_and_stalled_ones_retried(
    proxy: FaultProxy, s3_server: S3Server, bucket: str
) -> None:
    payload = os.urandom(4096)
    s3_server.client().put_object(Bucket=bucket, Key="k.bin", Body=payload)
    uri, key = f"s3://{bucket}/k.bin", f"/{bucket}/k.bin"
    proxy.delay("GET", key, seconds=1.5, times=1)
    data, elapsed = timed(lambda: read_bytes(uri))
    assert data == payload and elapsed >= 1.5
    assert proxy.count("GET", key) == 1  # slow is not failed
    # Silent for longer than the SDK's 3 s request timeout: abandoned and asked again.
    proxy.clear()
    proxy.delay("GET", key, seconds=4.0, times=1)
    assert read_bytes(uri) == payload
    assert proxy.count("GET", key) == 2


def test_a_store_that_keeps_failing_gives_one_line_that_says_what_to_do(proxy: FaultProxy, bucket: str) -> None:
    uri = f"s3://{bucket}/k.bin"
    proxy.fail("HEAD", f"/{bucket}/k.bin", 503, times=None)
    with pytest.raises(StorageError) as exc:
        exists(uri)
    message = one_line(exc)
    assert message.startswith(f"{uri}: ") and "HTTP status 503" in message
    assert f"after {ATTEMPTS} tries" in message and "run again" in message
    assert proxy.count("HEAD", f"/{bucket}/k.bin") == SDK_ATTEMPTS * ATTEMPTS  # bounded


# --------------------------------------------------------------------------- permanent errors


def test_a_missing_bucket_fails_at_once(proxy: FaultProxy) -> None:
    missing = f"no-such-bucket-{os.urandom(4).hex()}"
    calls = {
        "read": lambda: read_bytes(f"s3://{missing}/a.jpg"),
        "write": lambda: write_bytes(f"s3://{missing}/out/a.jpg", b"x"),
        "list": lambda: list_files(f"s3://{missing}/photos/", (".jpg",)),
    }
    for name, call in calls.items():
        proxy.clear()
        start = time.monotonic()
        with pytest.raises(StorageError) as exc:
            call()
        elapsed = time.monotonic() - start
        message = one_line(exc)
        assert message.startswith(f"s3://{missing}/") and "the bucket does not exist" in message, name
        assert elapsed < FAST_S, (name, elapsed)
        no_request_repeated(proxy)
        assert 1 <= len(proxy.seen()) <= 2, (name, proxy.seen())


@pytest.mark.parametrize("code", ["AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"])
def test_denied_access_fails_at_once_naming_the_uri(
    proxy: FaultProxy, s3_server: S3Server, bucket: str, code: str
) -> None:
    s3_server.client().put_object(Bucket=bucket, Key="photos/a.jpg", Body=b"x")
    calls = {
        f"s3://{bucket}/photos/a.jpg": lambda: read_bytes(f"s3://{bucket}/photos/a.jpg"),
        f"s3://{bucket}/out/a.jpg": lambda: write_bytes(f"s3://{bucket}/out/a.jpg", b"x"),
        f"s3://{bucket}/photos/": lambda: list_files(f"s3://{bucket}/photos/", (".jpg",)),
        f"s3://{bucket}/photos/b.jpg": lambda: exists(f"s3://{bucket}/photos/b.jpg"),
    }
    for uri, call in calls.items():
        proxy.clear()
        proxy.fail(None, f"/{bucket}", 403, times=None, code=code)
        start = time.monotonic()
        with pytest.raises(StorageError) as exc:
            call()
        assert time.monotonic() - start < FAST_S
        message = one_line(exc)
        assert message.startswith(f"{uri}: access denied; check the credentials"), message
        assert len(proxy.seen()) == 1, proxy.seen()


def test_other_client_errors_are_not_retried(proxy: FaultProxy, s3_server: S3Server, bucket: str) -> None:
    s3_server.client().put_object(Bucket=bucket, Key="k.bin", Body=os.urandom(4096))
    proxy.fail("GET", f"/{bucket}/k.bin", 400, times=None, code="InvalidArgument")
    with pytest.raises(StorageError) as exc:
        read_bytes(f"s3://{bucket}/k.bin")
    assert one_line(exc).startswith(f"s3://{bucket}/k.bin: ") and "HTTP status 400" in str(exc.value)
    assert proxy.count("GET", f"/{bucket}/k.bin") == 1


def test_the_endpoint_is_read_again_when_it_changes(proxy: FaultProxy, s3_server: S3Server, bucket: str) -> None:
    """Filesystems are cached per bucket and endpoint: a new AWS_ENDPOINT_URL takes effect."""
    s3_server.client().put_object(Bucket=bucket, Key="k.bin", Body=b"x")
    with FaultProxy(s3_server.endpoint) as other:
        os.environ["AWS_ENDPOINT_URL"] = other.endpoint  # the fixture's monkeypatch restores it
        assert read_bytes(f"s3://{bucket}/k.bin") == b"x"
        assert other.count("GET") == 1
    os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
    assert read_bytes(f"s3://{bucket}/k.bin") == b"x"
    assert proxy.count("GET") == 1
    assert storage.resolve(f"s3://{bucket}/k.bin")[0] is storage.resolve(f"s3://{bucket}/other")[0]


# --------------------------------------------------------------------------- the job, end to end


def adain(*args: str, endpoint: str, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`adain ...` in a fresh process (and, for stylize, a fresh local Ray whose workers inherit
    this environment), pointed at `endpoint` as a user points it at MinIO."""
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "ADAIN_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def photos_and_styles(s3: Any, bucket: str) -> list[str]:
    """Six photos under photos/ and the styles ink and wave under styles/; the photos' names."""
    names = [f"p{i}" for i in range(6)]
    for i, name in enumerate(names):
        s3.put_object(Bucket=bucket, Key=f"photos/{name}.jpg", Body=images.encoded(40, 36, seed=i))
    for i, style in enumerate(("ink", "wave")):
        s3.put_object(Bucket=bucket, Key=f"styles/{style}.png", Body=images.encoded(32, 32, "PNG", seed=8 + i))
    return names


def stylize_on_s3(
    bucket: str, weights: WeightFiles, proxy: FaultProxy, tmp_path: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    """`adain stylize` of photos/ in every style of styles/ into out/ (PNG, 32 px), through the proxy."""
    return adain(
        "stylize",
        *("--input", f"s3://{bucket}/photos/", "--style", f"s3://{bucket}/styles/"),
        *("--output", f"s3://{bucket}/out/", "--format", "png", *flags),
        *("--encoder", str(weights.vgg), "--decoder", str(weights.decoder), "--device", "cpu"),
        *("--content-size", "32", "--style-size", "32", "--address", "local"),
        endpoint=proxy.endpoint,
        tmp_path=tmp_path,
    )


def test_stylize_completes_through_a_failing_store(
    proxy: FaultProxy, s3_server: S3Server, bucket: str, weights: WeightFiles, tmp_path: Path
) -> None:
    s3 = s3_server.client()
    names = photos_and_styles(s3, bucket)

    faults = [
        proxy.fail("GET", f"/{bucket}/photos/p", 503, times=3),  # input reads: SlowDown
        proxy.fail("GET", f"/{bucket}/photos/p2.jpg", 500, times=SDK_ATTEMPTS + 1),  # past the SDK: the task retries
        proxy.fail("PUT", f"/{bucket}/out/", 503, times=4),  # output uploads (and the manifest's)
        proxy.drop("PUT", f"/{bucket}/out/wave/", times=1, forward_first=True),  # written, answer lost
        proxy.fail("GET", "prefix=out%2F&", 503, times=2),  # the one listing of what is there already
    ]

    result = stylize_on_s3(bucket, weights, proxy, tmp_path, "--run-id", "faulty")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "12 ok, 0 error, 0 skipped of 12" in result.stdout

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]]
    outputs = sorted(k for k in keys if not k.startswith(("out/_manifest/", "out/_runs/")))
    assert outputs == sorted(f"out/{style}/{name}.png" for style in ("ink", "wave") for name in names)
    parts = [k for k in keys if k.startswith("out/_manifest/")]
    manifest = pd.concat(pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=k)["Body"].read())) for k in parts)
    assert len(manifest) == 12 and set(manifest.status) == {"ok"} and manifest.error.isna().all()
    assert manifest.output_uri.is_unique and manifest.groupby(["input_uri", "style"]).size().eq(1).all()
    assert set(manifest.output_uri) == {f"s3://{bucket}/{k}" for k in outputs}

    # Every injected fault happened, and was answered by a retry.
    assert [fault.times for fault in faults] == [0] * len(faults)
    assert proxy.count("GET", f"/{bucket}/photos/p2.jpg") >= SDK_ATTEMPTS + 2


def test_stylize_into_a_missing_bucket_exits_with_one_line(proxy: FaultProxy, tmp_path: Path) -> None:
    missing = f"no-such-bucket-{os.urandom(4).hex()}"
    result = adain(
        "stylize",
        *("--input", f"s3://{missing}/photos/", "--style", f"s3://{missing}/styles/"),
        *("--output", f"s3://{missing}/out/", "--address", "local"),
        endpoint=proxy.endpoint,
        tmp_path=tmp_path,
        timeout=120,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("adain: error: ") and missing in lines[0] and "bucket does not exist" in lines[0]
    assert "Traceback" not in result.stderr
    # Listing, then the bucket itself: a few lookups that each found nothing, none retried.
    assert proxy.seen() and len(proxy.seen()) <= 6 and {s.status for s in proxy.seen()} == {404}, proxy.seen()


def requests_by_kind(proxy: FaultProxy, bucket: str, prefix: str) -> Counter[str]:
    """The requests under s3://bucket/prefix seen so far: GET, PUT, HEAD, LIST (a GET with list-type), ..."""
    kinds: Counter[str] = Counter()
    for seen in proxy.seen():
        path, _, query = seen.path.partition("?")
        if "list-type" in (fields := parse_qs(query)):
            if fields.get("prefix") == [prefix]:
                kinds["LIST"] += 1
        elif path.startswith(f"/{bucket}/{prefix}"):
            kinds[seen.method] += 1
    return kinds


def test_existing_outputs_are_listed_a_thousand_a_request(proxy: FaultProxy, s3_server: S3Server, bucket: str) -> None:
    """The index of what is there: one LIST of the prefix's folders, then one per page of a thousand,
    each page retried on its own."""
    s3 = s3_server.client()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"out/s/{i:04d}.png", Body=b"x"), range(1001)))
    s3.put_object(Bucket=bucket, Key="out/s/other.jpg", Body=b"x")
    proxy.fail("GET", "continuation-token", 503, times=1)
    index = ObjectIndex.build(f"s3://{bucket}/out/", (".png",))
    assert len(index) == 1001
    asked = [f"s3://{bucket}/out/s/1000.png", f"s3://{bucket}/out/s/other.jpg", f"s3://{bucket}/out/s/1001.png"]
    assert index.written_since(asked, None) == [True, False, False]
    assert requests_by_kind(proxy, bucket, "out/") == Counter(LIST=1)  # its folders
    assert requests_by_kind(proxy, bucket, "out/s/") == Counter(LIST=3)  # two pages, the second asked twice


_segment = st.sampled_from(["a", "b", "c", "", "x.y", "_m"])
_keys = st.lists(
    st.tuples(st.lists(_segment, max_size=4), st.sampled_from(["p.png", "q.PNG", "r.jpg", "s.png"])),
    max_size=25,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=_keys, pages=st.sampled_from([1, 2, 1000]))
def test_the_parallel_listing_finds_what_a_flat_listing_finds(
    s3_server: S3Server, keys: list[tuple[list[str], str]], pages: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folders at any depth (empty segments included), pages of any size: the same names as one flat listing."""
    monkeypatch.setattr(listing, "PREFIXES_IN_FLIGHT", 3)
    bucket, s3 = s3_server.new_bucket(), s3_server.client()
    names = {"/".join([*folders, name]) for folders, name in keys}
    for name in names:
        s3.put_object(Bucket=bucket, Key=f"out/{name}", Body=b"x")
    s3.put_object(Bucket=bucket, Key="outside.png", Body=b"x")
    monkeypatch.setattr(listing, "PAGE_KEYS", pages)
    found = [rel for rels, _ in listing.iter_files(f"s3://{bucket}/out", (".png",)) for rel in rels]
    assert sorted(found) == sorted(n for n in names if n.lower().endswith(".png"))


def test_stylize_makes_one_get_per_input_and_one_put_per_output(
    proxy: FaultProxy, s3_server: S3Server, bucket: str, weights: WeightFiles, tmp_path: Path
) -> None:
    """Counted at the proxy: one GET per input, one PUT per output, no HEAD and no LIST per output.
    Planning again lists the output once and reads nothing; planning to overwrite lists nothing."""
    s3 = s3_server.client()
    names = photos_and_styles(s3, bucket)
    result = stylize_on_s3(bucket, weights, proxy, tmp_path, "--io-concurrency", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "12 ok, 0 error, 0 skipped of 12" in result.stdout
    for name in names:
        assert proxy.count("GET", f"/{bucket}/photos/{name}.jpg") == 1, name
    inputs = requests_by_kind(proxy, bucket, "photos/")
    assert inputs["GET"] == len(names) and set(inputs) == {"GET", "LIST"}, inputs  # LISTs: a few per run
    for style in ("ink", "wave"):  # no HEAD, no LIST, no multipart POST
        assert requests_by_kind(proxy, bucket, f"out/{style}/") == Counter(PUT=len(names)), style
    assert requests_by_kind(proxy, bucket, "out/")["LIST"] == 1  # what is there already: one listing

    # The plan of a re-run, as its decoding tasks make it: one listing, no input read, nothing asked per output.
    listed = list_inputs(f"s3://{bucket}/photos/")
    output = OutputSpec(f"s3://{bucket}/out/", "png")
    plan = Plan(EveryStyle(("ink", "wave")), FileWriter(output, output_key))
    proxy.clear()
    decoded = decode_inputs(listed, plan=plan, sizing=Sizing(32, 32), existing=plan.existing()).to_pylist()
    assert all(all(row["done"]) and row["pixels"] is None for row in decoded)
    folders = ["out/", "out/_manifest/", "out/_runs/", "out/ink/", "out/wave/"]  # each listed once, in parallel
    assert sorted((s.method, parse_qs(s.path.partition("?")[2])["prefix"][0]) for s in proxy.seen()) == [
        ("GET", folder) for folder in sorted(folders)
    ]
    proxy.clear()
    overwrite = Plan(EveryStyle(("ink", "wave")), FileWriter(output, output_key), RESUME_NEVER)
    decoded = decode_inputs(listed, plan=overwrite, sizing=Sizing(32, 32), existing=overwrite.existing()).to_pylist()
    assert not any(any(row["done"]) for row in decoded)
    assert requests_by_kind(proxy, bucket, "out/") == Counter()  # nothing listed
    assert requests_by_kind(proxy, bucket, "photos/") == Counter(GET=len(names))


@pytest.mark.parametrize("uri", ["/data/in/a.jpg", "file:///data/in/a.jpg", "s3://bucket/in/a.jpg"])
def test_a_denied_read_is_told_as_its_storage_tells_it(uri: str) -> None:
    """A local file without read permission was told to check AWS_PROFILE and the bucket's policy."""
    message = str(storage_error(PermissionError(13, "Permission denied"), uri))
    if uri.startswith("s3://"):
        assert message.startswith(f"{uri}: access denied; check the credentials"), message
    else:
        assert message.startswith(f"{uri}: permission denied; check the file's"), message
        assert "AWS" not in message and "bucket" not in message
