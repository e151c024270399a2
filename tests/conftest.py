"""Shared fixtures: real weight files, a real S3 server, a real HTTP server, real images.

Nothing here patches boto3, pyarrow or urllib: the S3 server is moto's standalone server
on 127.0.0.1, reached through AWS_ENDPOINT_URL exactly as a user points the product at
MinIO, and weights are served over loopback HTTP.
"""

from __future__ import annotations

import functools
import http.server
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests import reference


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class WeightFiles:
    """Random weights saved in the public layouts; `*_state` are the exact tensors saved."""

    vgg: Path  # pytorch-AdaIN vgg_normalised.pth layout, modules 0..52 (to relu5_4)
    decoder: Path  # pytorch-AdaIN decoder.pth layout
    torchvision: Path  # torchvision vgg19 state dict layout
    vgg_state: dict[str, torch.Tensor]
    decoder_state: dict[str, torch.Tensor]
    torchvision_state: dict[str, torch.Tensor]


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> WeightFiles:
    root = tmp_path_factory.mktemp("weights")
    states = reference.random_vgg_state(), reference.random_decoder_state(), reference.torchvision_vgg19_state()
    paths = root / "vgg_normalised.pth", root / "decoder.pth", root / "vgg19-dcbb9e9d.pth"
    for state, path in zip(states, paths, strict=True):
        torch.save(state, path)
    return WeightFiles(*paths, *states)


@pytest.fixture(autouse=True)
def adain_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty weight cache; none touches ~/.cache."""
    cache = tmp_path / "adain-cache"
    monkeypatch.setenv("ADAIN_CACHE", str(cache))
    return cache


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1, set as the endpoint for every S3 client in this session
    (boto3, pyarrow, and Ray workers started after it, which inherit the environment)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield S3Server(endpoint)
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the embedded S3 server."""
    return s3_server.new_bucket()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(frozen=True)
class HttpServer:
    url: str
    root: Path


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    """A static file server on 127.0.0.1 over a temporary directory."""
    root = tmp_path_factory.mktemp("http")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpServer(f"http://127.0.0.1:{server.server_address[1]}", root)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def ray_cluster(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The one local Ray instance of the test session (2 CPUs), started after the S3
    endpoint is set so that its workers inherit it, with its own weight cache. Yields its address."""
    import ray

    os.environ["ADAIN_CACHE"] = str(tmp_path_factory.mktemp("ray-adain-cache"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
