"""A fault-injecting reverse proxy in front of a real S3 server (SeaweedFS), for the reliability tests.

The trainer is pointed at the proxy (``storage.endpoint``) and every request it makes, boto3's and the fast
paths' signed GETs alike, goes through. Requests are forwarded unchanged (the ``Host`` header too, so SigV4
signatures made for the proxy's address verify upstream); `Fault` rules pick requests by method, path and
header and answer them otherwise:

- ``slowdown``: 503 ``SlowDown`` (S3's throttling answer), the request not forwarded;
- ``reset``: the connection reset (TCP RST) before the request is forwarded;
- ``truncate``: the upstream answer's status and headers, half its body, then a reset;
- ``slow``: the upstream answer trickled out over ``delay`` seconds (it completes);
- ``expired``: 403 ``ExpiredToken``, the request not forwarded;
- ``nosuchbucket``: 404 ``NoSuchBucket``, as AWS answers once a bucket is deleted (SeaweedFS instead
  creates a missing bucket again on the next PUT);
- ``call``: nothing but the rule's ``action``, then the request is forwarded.

A rule's ``action`` (e.g. delete the bucket upstream) runs at its first hit, before the answer.

A rule skips its first ``start`` matching requests, then hits every ``every``-th one, ``times`` times at most
(None: without end); a ``latch`` rule, once hit, hits every request after.
Counting matching requests, not clock time, makes the number of faults injected exact
for a given rule set, whatever the order in which concurrent requests arrive. `FaultProxy.injected` counts
them by kind.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

__all__ = ["Fault", "FaultKind", "FaultProxy"]

FaultKind = Literal["slowdown", "reset", "truncate", "slow", "expired", "nosuchbucket", "call"]
# Hop-by-hop headers a proxy does not pass on (RFC 9110 7.6.1), and the length it sets itself.
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
)
_ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "expired": (403, "ExpiredToken", "The provided token has expired."),
    "nosuchbucket": (404, "NoSuchBucket", "The specified bucket does not exist."),
}


@dataclass
class Fault:
    """One scripted fault: which requests it hits and what they get instead of the server's answer.

    Attributes:
        kind: What happens to a hit request (see the module docstring).
        methods: HTTP methods it applies to (empty: any).
        path: A regular expression searched in the request target (path and query); empty: any.
        header: Only requests carrying this header (e.g. ``x-amz-copy-source`` for server-side copies).
        start: Matching requests let through before the first hit.
        every: After ``start``, hit every ``every``-th matching request.
        times: Hits at most (None: every one from then on).
        delay: Seconds a ``slow`` answer takes to trickle out.
        action: What runs at the rule's first hit, before the answer.
        latch: After its first hit the rule matches every request, whatever its method, path or header
            (credentials that expired stay expired).
    """

    kind: FaultKind
    methods: frozenset[str] = frozenset()
    path: str = ""
    header: str = ""
    start: int = 0
    every: int = 1
    times: int | None = 1
    delay: float = 1.0
    action: Callable[[], None] | None = None
    latch: bool = False
    matched: int = field(default=0, init=False)
    hits: int = field(default=0, init=False)
    acted: bool = field(default=False, init=False)

    def matches(self, method: str, target: str, headers: http.client.HTTPMessage) -> bool:
        """Whether a request is one this rule counts."""
        if self.latch and self.hits:
            return True
        if self.methods and method not in self.methods:
            return False
        if self.path and not re.search(self.path, target):
            return False
        return not self.header or self.header in headers

    def take(self) -> bool:
        """Count one matching request; whether it is hit (call with the proxy's lock held)."""
        self.matched += 1
        after = self.matched - self.start
        if after <= 0 or (after - 1) % max(1, self.every):
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a reset connection is the point, not a failure."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 serves
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def setup(self) -> None:
        super().setup()
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        if self._upstream is not None:
            self._upstream.close()

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = bytearray()  # kept as it came (aws-chunked framing inside stays the client's)
            while True:
                line = self.rfile.readline()
                raw += line
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (trailer := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                        raw += trailer
                    raw += b"\r\n"
                    return bytes(raw)
                raw += self.rfile.read(size + 2)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reset(self) -> None:
        """Close the client's connection with a TCP RST (SO_LINGER 0)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def _error(self, kind: str) -> None:
        status, code, message = _ERRORS[kind]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message><Resource>{self.path}</Resource>"
            "<RequestId>kubegraft-fault-proxy</RequestId></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        proxy = self.server.proxy
        for attempt in (1, 2):  # a kept-alive upstream connection the server closed meanwhile: reopen once
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=60
                )
            try:
                self._upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in _HOP_HEADERS or name.lower() == "transfer-encoding":
                        self._upstream.putheader(name, value)
                self._upstream.endheaders(body or None)
                response = self._upstream.getresponse()
                data = response.read()
                headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_HEADERS]
                if response.will_close:
                    self._upstream.close()
                    self._upstream = None
                return response.status, response.reason, headers, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _handle(self) -> None:
        body = self._body()
        fault = self.server.proxy._pick(self.command, self.path, self.headers)
        kind = fault.kind if fault is not None else None
        if fault is not None and fault.action is not None and fault.hits == 1 and not fault.acted:
            fault.acted = True
            fault.action()
        if kind == "reset":
            self._reset()
            return
        if kind in _ERRORS:
            self._error(str(kind))
            return
        status, reason, headers, data = self._forward(body)
        self.send_response(status, reason)
        for name, value in headers:
            if name.lower() != "content-length" or self.command == "HEAD":
                self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "HEAD" or not data:
            return
        if kind == "truncate":
            self.wfile.write(data[: len(data) // 2])
            self._reset()
            return
        if kind == "slow" and fault is not None:
            pieces = 10
            step = max(1, -(-len(data) // pieces))
            for start in range(0, len(data), step):
                self.wfile.write(data[start : start + step])
                self.wfile.flush()
                time.sleep(fault.delay / pieces)
            return
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815 - http.server's names


class FaultProxy:
    """A reverse proxy to ``upstream`` on 127.0.0.1 that injects the faults of its rules.

    Args:
        upstream: The real server's URL (``http://127.0.0.1:<port>``).
        faults: The rules; every request is checked against each in order, the first hit wins.

    Attributes:
        endpoint: ``http://127.0.0.1:<port>`` of the proxy once started.
        injected: Faults injected so far, by kind.
        requests: Requests received so far, by method.
    """

    def __init__(self, upstream: str, faults: list[Fault] | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.faults: list[Fault] = list(faults or [])
        self.injected: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.endpoint = ""
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def set_faults(self, faults: list[Fault]) -> None:
        """Replace the rules (e.g. none, to let a rerun through cleanly)."""
        with self._lock:
            self.faults = list(faults)

    def _pick(self, method: str, target: str, headers: http.client.HTTPMessage) -> Fault | None:
        with self._lock:
            self.requests[method] += 1
            for fault in self.faults:
                if fault.matches(method, target, headers) and fault.take():
                    self.injected[fault.kind] += 1
                    return fault
        return None

    def start(self) -> FaultProxy:
        """Listen on a free port and serve in a daemon thread."""
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        self._server = server
        self.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
