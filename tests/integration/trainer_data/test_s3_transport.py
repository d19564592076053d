"""The S3 fast paths connect and sign exactly as boto3 would: session tokens, web identity, TLS, proxies.

`S3Storage.read_bytes` (signed GETs on botocore's HTTP session) and `read_many` (the same GETs batched on
libcurl) bypass boto3's call stack. Local servers stand in for what a cluster has: a recording S3 endpoint,
a fake STS for IRSA's AssumeRoleWithWebIdentity, a TLS front with its own CA (trustme) before the real
SeaweedFS, and a forwarding HTTP proxy. Requests without boto3's User-Agent are the fast paths' (boto3 always
sends one).
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
import trustme
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kubegraft.runtime import FailureReason
from kubegraft.spec import StorageSpec
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.storage import S3Storage
from tests.harness.s3 import SeaweedFS

TOKEN = "FwoGZXIvYXdzEXAMPLE-session-token//+="
PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)


@dataclass
class Seen:
    """One request a local server received."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""
    peer_port: int = 0  # the client's source port (a proxy's tunnel, or the client itself)


@dataclass
class Server:
    """A local HTTP(S) server in a thread, and what it received."""

    url: str
    seen: list[Seen] = field(default_factory=list)
    tunnel_ports: list[int] = field(default_factory=list)  # a proxy's source ports of CONNECT tunnels

    def object_gets(self) -> list[Seen]:
        """GETs of objects (not listings), in arrival order."""
        return [s for s in self.seen if s.method == "GET" and "list-type" not in s.target]


@contextlib.contextmanager
def _serve(handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    host = "localhost" if tls is not None else "127.0.0.1"
    server = Server(f"{scheme}://{host}:{httpd.server_address[1]}")
    httpd.record = server  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 serves

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _record(self) -> Seen:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        seen = Seen(self.command, self.path, dict(self.headers.items()), body, self.client_address[1])
        self.server.record.seen.append(seen)  # type: ignore[attr-defined]
        return seen

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _RecordingS3(_Handler):
    """Answers every GET with the object's path as its body."""

    def do_GET(self) -> None:
        seen = self._record()
        self._answer(200, f"object:{seen.target}".encode())


STS_ANSWER = """<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <AccessKeyId>ASIAWEBIDENTITYKEY</AccessKeyId>
      <SecretAccessKey>web-identity-secret</SecretAccessKey>
      <SessionToken>web-identity-session-token</SessionToken>
      <Expiration>2099-01-01T00:00:00Z</Expiration>
    </Credentials>
    <SubjectFromWebIdentityToken>system:serviceaccount:ml:trainer</SubjectFromWebIdentityToken>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/trainer/kubegraft</Arn>
      <AssumedRoleId>AROAEXAMPLE:kubegraft</AssumedRoleId>
    </AssumedRoleUser>
    <Audience>sts.amazonaws.com</Audience>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>
"""


class _FakeSts(_Handler):
    """AWS STS answering AssumeRoleWithWebIdentity with fixed temporary credentials."""

    def do_POST(self) -> None:
        self._record()
        self._answer(200, STS_ANSWER.encode(), {"Content-Type": "text/xml"})


def _relay(handler: _Handler, address: tuple[str, int], target: str, seen: Seen) -> None:
    """Send ``seen`` on to ``address`` (as ``target``) and answer the client with what came back."""
    connection = http.client.HTTPConnection(*address, timeout=30)
    try:
        connection.request(handler.command, target, body=seen.body or None, headers=seen.headers)
        response = connection.getresponse()
        data = response.read()
        kept = {
            k: v
            for k, v in response.getheaders()
            if k.lower() not in ("content-length", "transfer-encoding", "connection")
        }
        handler._answer(response.status, data, kept)
    finally:
        connection.close()


class _Forwarding(_Handler):
    """Relays every method to wherever `_forward` sends it."""

    def _forward(self) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def do_PUT(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def do_DELETE(self) -> None:
        self._forward()


def _front(backend: str) -> type[_Handler]:
    """A reverse proxy to ``backend`` that keeps the Host header (so SigV4 signatures stay valid)."""
    parts = urlsplit(backend)

    class Front(_Forwarding):
        def _forward(self) -> None:
            seen = self._record()
            _relay(self, (parts.hostname or "", parts.port or 80), seen.target, seen)

    return Front


def _pipe(client: socket.socket, upstream: socket.socket) -> None:
    """Relay bytes both ways until either side closes (a CONNECT tunnel)."""
    try:
        while True:
            readable, _, _ = select.select([client, upstream], [], [], 30)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (upstream if sock is client else client).sendall(data)
    finally:
        upstream.close()


class _ForwardingProxy(_Forwarding):
    """An HTTP proxy, as corporate proxies are: absolute-form requests for http://, CONNECT tunnels for https://."""

    def do_CONNECT(self) -> None:
        seen = self._record()
        host, _, port = seen.target.rpartition(":")
        upstream = socket.create_connection((host, int(port)), timeout=30)
        self.server.record.tunnel_ports.append(upstream.getsockname()[1])  # type: ignore[attr-defined]
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        _pipe(self.connection, upstream)

    def _forward(self) -> None:
        seen = self._record()
        target = urlsplit(seen.target)
        headers = {k: v for k, v in seen.headers.items() if not k.lower().startswith("proxy-")}
        path = target.path + (f"?{target.query}" if target.query else "")
        _relay(
            self,
            (target.hostname or "", target.port or 80),
            path,
            Seen(seen.method, path, headers, seen.body),
        )


@pytest.fixture
def clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No AWS profile, credentials, CA bundle or proxy from the machine: each test sets its own."""
    for name in (
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL_STS",
        *PROXY_VARIABLES,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return monkeypatch


@pytest.fixture
def recording_s3() -> Iterator[Server]:
    with _serve(_RecordingS3) as server:
        yield server


def _fast(server: Server) -> list[Seen]:
    """The object GETs that came from the fast paths (boto3 sends a Boto3/... User-Agent)."""
    return [s for s in server.object_gets() if "Boto3" not in s.headers.get("User-Agent", "")]


def _signature_is_botocores(seen: Seen, url: str, credentials: Credentials) -> bool:
    """Whether ``seen`` carries the Authorization botocore's S3 signer computes for the same GET and time."""
    moment = datetime.datetime.strptime(seen.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    request = AWSRequest(method="GET", url=url)
    with mock.patch("botocore.auth.get_current_datetime", return_value=moment):
        S3SigV4Auth(credentials, "s3", "us-east-1").add_auth(request)
    return bool(request.headers["Authorization"] == seen.headers["Authorization"])


def _read_both_ways(storage: S3Storage) -> None:
    assert storage.read_bytes("a.png") == b"object:/bucket/data/a.png"
    assert storage.read_many(["b.png", "c.png"]) == [
        b"object:/bucket/data/b.png",
        b"object:/bucket/data/c.png",
    ]


def test_a_session_token_is_sent_and_signed_by_both_fast_paths(
    clean_aws_env: pytest.MonkeyPatch, recording_s3: Server
) -> None:
    clean_aws_env.setenv("AWS_ACCESS_KEY_ID", "ASIATEMPORARYKEY")
    clean_aws_env.setenv("AWS_SECRET_ACCESS_KEY", "temporary-secret")
    clean_aws_env.setenv("AWS_SESSION_TOKEN", TOKEN)
    storage = S3Storage("s3://bucket/data", StorageSpec(endpoint=recording_s3.url))
    _read_both_ways(storage)
    fast = _fast(recording_s3)
    assert len(fast) == 3  # nothing fell back to boto3
    credentials = Credentials("ASIATEMPORARYKEY", "temporary-secret", TOKEN)
    for seen in fast:
        assert seen.headers["X-Amz-Security-Token"] == TOKEN
        assert "x-amz-security-token" in seen.headers["Authorization"].split("SignedHeaders=")[1]
        assert _signature_is_botocores(seen, recording_s3.url + seen.target, credentials)


def test_web_identity_credentials_from_sts_sign_both_fast_paths(
    clean_aws_env: pytest.MonkeyPatch, recording_s3: Server, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.projected-service-account-token.sig")
    with _serve(_FakeSts) as sts:
        # What the EKS pod identity webhook injects, plus a local STS endpoint.
        clean_aws_env.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/trainer")
        clean_aws_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
        clean_aws_env.setenv("AWS_ENDPOINT_URL_STS", sts.url)
        storage = S3Storage("s3://bucket/data", StorageSpec(endpoint=recording_s3.url))
        _read_both_ways(storage)
        (assume,) = sts.seen
        assert b"Action=AssumeRoleWithWebIdentity" in assume.body
        assert b"projected-service-account-token" in assume.body
    fast = _fast(recording_s3)
    assert len(fast) == 3
    credentials = Credentials("ASIAWEBIDENTITYKEY", "web-identity-secret", "web-identity-session-token")
    for seen in fast:
        assert "Credential=ASIAWEBIDENTITYKEY/" in seen.headers["Authorization"]
        assert seen.headers["X-Amz-Security-Token"] == "web-identity-session-token"
        assert _signature_is_botocores(seen, recording_s3.url + seen.target, credentials)


@pytest.fixture(scope="module")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_front(s3_server: SeaweedFS, tls_ca: trustme.CA) -> Iterator[Server]:
    """HTTPS on localhost with a certificate of a private CA, in front of the real SeaweedFS."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    with _serve(_front(s3_server.endpoint), tls=context) as server:
        yield server


def _objects(s3_server: SeaweedFS, bucket: str) -> None:
    client = s3_server.client()
    for name in ("a.png", "b.png", "c.png"):
        client.put_object(Bucket=bucket, Key=f"data/{name}", Body=f"pixels of {name}".encode())


def _use_seaweed_keys(env: pytest.MonkeyPatch, s3_server: SeaweedFS) -> None:
    for name, value in s3_server.env().items():
        if name.startswith("AWS_") and "ENDPOINT" not in name:
            env.setenv(name, value)


def test_an_https_endpoint_is_trusted_through_aws_ca_bundle_on_every_path(  # noqa: PLR0917 - fixtures
    clean_aws_env: pytest.MonkeyPatch,
    s3_server: SeaweedFS,
    s3_bucket: str,
    tls_front: Server,
    tls_ca: trustme.CA,
    tmp_path: Path,
) -> None:
    _objects(s3_server, s3_bucket)
    _use_seaweed_keys(clean_aws_env, s3_server)
    bundle = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(bundle))
    clean_aws_env.setenv("AWS_CA_BUNDLE", str(bundle))
    storage = S3Storage(f"s3://{s3_bucket}/data", StorageSpec(endpoint=tls_front.url))
    assert storage.read_bytes("a.png") == b"pixels of a.png"
    assert storage.read_many(["b.png", "c.png"]) == [b"pixels of b.png", b"pixels of c.png"]
    assert sorted(o.key for o in storage.list()) == ["a.png", "b.png", "c.png"]
    assert len(_fast(tls_front)) == 3


def test_a_certificate_that_does_not_verify_is_access_denied_naming_aws_ca_bundle(
    clean_aws_env: pytest.MonkeyPatch, s3_server: SeaweedFS, s3_bucket: str, tls_front: Server
) -> None:
    _objects(s3_server, s3_bucket)
    _use_seaweed_keys(clean_aws_env, s3_server)
    clean_aws_env.setenv("AWS_MAX_ATTEMPTS", "1")
    storage = S3Storage(f"s3://{s3_bucket}/data", StorageSpec(endpoint=tls_front.url))
    with pytest.raises(TrainerError) as caught:
        storage.read_bytes("a.png")
    assert caught.value.reason == FailureReason.STORAGE_ACCESS_DENIED
    assert not caught.value.retryable
    assert "TLS verification" in str(caught.value)
    assert "AWS_CA_BUNDLE" in str(caught.value)
    (batched,) = storage.read_many(["b.png"])
    assert isinstance(batched, TrainerError)
    assert batched.reason == FailureReason.STORAGE_ACCESS_DENIED
    assert tls_front.seen == []  # no request ever got past the handshake


def test_an_http_proxy_from_the_environment_carries_every_path_unless_no_proxy_names_the_host(
    clean_aws_env: pytest.MonkeyPatch, s3_server: SeaweedFS, s3_bucket: str
) -> None:
    _objects(s3_server, s3_bucket)
    _use_seaweed_keys(clean_aws_env, s3_server)
    with _serve(_ForwardingProxy) as proxy:
        clean_aws_env.setenv("HTTP_PROXY", proxy.url)
        storage = S3Storage(f"s3://{s3_bucket}/data", StorageSpec(endpoint=s3_server.endpoint))
        assert storage.read_bytes("a.png") == b"pixels of a.png"
        assert storage.read_many(["b.png", "c.png"]) == [b"pixels of b.png", b"pixels of c.png"]
        assert sorted(o.key for o in storage.list()) == ["a.png", "b.png", "c.png"]
        fast = _fast(proxy)
        assert len(fast) == 3
        assert all(s.target.startswith(f"{s3_server.endpoint}/{s3_bucket}/data/") for s in fast)
        assert any("list-type" in s.target for s in proxy.seen)  # boto3's listing went through it too
        proxy.seen.clear()
        host = urlsplit(s3_server.endpoint).hostname or ""
        clean_aws_env.setenv("NO_PROXY", host)
        direct = S3Storage(f"s3://{s3_bucket}/data", StorageSpec(endpoint=s3_server.endpoint))
        assert direct.read_many(["a.png"]) == [b"pixels of a.png"]
        assert direct.read_bytes("b.png") == b"pixels of b.png"
        assert proxy.seen == []


def test_an_https_proxy_tunnels_every_path_to_an_https_endpoint(  # noqa: PLR0917 - fixtures
    clean_aws_env: pytest.MonkeyPatch,
    s3_server: SeaweedFS,
    s3_bucket: str,
    tls_front: Server,
    tls_ca: trustme.CA,
    tmp_path: Path,
) -> None:
    _objects(s3_server, s3_bucket)
    _use_seaweed_keys(clean_aws_env, s3_server)
    bundle = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(bundle))
    clean_aws_env.setenv("AWS_CA_BUNDLE", str(bundle))
    with _serve(_ForwardingProxy) as proxy:
        clean_aws_env.setenv("HTTPS_PROXY", proxy.url)
        storage = S3Storage(f"s3://{s3_bucket}/data", StorageSpec(endpoint=tls_front.url))
        assert storage.read_bytes("a.png") == b"pixels of a.png"
        assert storage.read_many(["b.png", "c.png"]) == [b"pixels of b.png", b"pixels of c.png"]
        assert sorted(o.key for o in storage.list()) == ["a.png", "b.png", "c.png"]
        tunnels = [s for s in proxy.seen if s.method == "CONNECT"]
        assert tunnels
        assert {s.target for s in tunnels} == {urlsplit(tls_front.url).netloc}
        fast = _fast(tls_front)
        assert len(fast) == 3
        # Every request reached the endpoint through one of the proxy's tunnels, none directly.
        assert {s.peer_port for s in tls_front.seen} <= set(proxy.tunnel_ports)
