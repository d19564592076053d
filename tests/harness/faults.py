"""A faulty front door to the API emulator: 429s, 500s, 409s and dropped watches at a seeded rate.

Who uses it: `tests.harness.emulator.serve` (with `--faults`), which serves the same in-process emulator on a
second port through `FaultyFront`; `tests.harness.cluster.Cluster(faults=...)` points only the operator at
that port (the test kubelet and the tests themselves keep the clean one), and the chaos test and bench
(tests/integration/operator/test_api_faults.py, bench/bench_chaos.py) read its tally from `GET /_faults`.

What a real kube-apiserver does under load or in a rollout, and what is injected here, per request:
- `throttle`: 429 TooManyRequests with `Retry-After` (API Priority and Fairness sheds load); nothing applied;
- `error`: 500 InternalError before the request is applied (an etcd hiccup);
- `committed_error`: a write is applied, then answered 504 Timeout (etcd committed, the reply was lost) —
  the case that turns a retried create into 409 AlreadyExists;
- `conflict`: 409 Conflict on PATCH and PUT ("the object has been modified"), nothing applied;
- `watch_drop`: each watch is cut (its TCP connection closed, no clean end) after a uniform random time in
  that [min, max] range of seconds, as when an apiserver replica restarts.
429s and 500s hit reads and writes alike, watches when they start. Rates are probabilities per request, drawn
from one `random.Random(seed)`.

It also counts what the operator created (`201` answers per resource and name), so a test can tell a
duplicate Job apart from a Job that is simply still there.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp.web

STATS_PATH = "/_faults"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Handler = Callable[[aiohttp.web.BaseRequest], Awaitable[aiohttp.web.StreamResponse]]


@dataclass(frozen=True)
class FaultPlan:
    """What to inject and how often (probabilities per request; see the module docstring).

    Attributes:
        seed: seeds the one random generator every decision draws from.
        throttle: chance of 429 TooManyRequests (any request).
        retry_after: the Retry-After seconds sent with a 429.
        error: chance of 500 InternalError before the request is applied (any request).
        committed_error: chance that a write is applied and then answered 504 Timeout.
        conflict: chance of 409 Conflict on a PATCH or PUT.
        watch_drop: (min, max) seconds after which each watch is cut; None keeps watches up.
    """

    seed: int = 0
    throttle: float = 0.0
    retry_after: int = 1
    error: float = 0.0
    committed_error: float = 0.0
    conflict: float = 0.0
    watch_drop: tuple[float, float] | None = None

    def to_json(self) -> str:
        """The plan as the emulator's `--faults` argument."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FaultPlan:
        """The plan from `to_json`'s output."""
        raw = json.loads(text)
        drop = raw.pop("watch_drop", None)
        return cls(**raw, watch_drop=(float(drop[0]), float(drop[1])) if drop else None)


@dataclass
class FaultTally:
    """What the front injected and what the operator created through it."""

    requests: int = 0
    injected: collections.Counter[str] = field(default_factory=collections.Counter)
    created: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )

    def as_json(self) -> dict[str, Any]:
        """`GET /_faults`: {"requests": n, "injected": {kind: n}, "created": {resource: {ns/name: n}}}."""
        return {
            "requests": self.requests,
            "injected": dict(self.injected),
            "created": {res: dict(names) for res, names in self.created.items()},
        }


def _status(
    code: int, reason: str, message: str, headers: Mapping[str, str] | None = None
) -> aiohttp.web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if code == 429:
        body["details"] = {"retryAfterSeconds": int((headers or {}).get("Retry-After", "1"))}
    return aiohttp.web.json_response(body, status=code, headers=dict(headers or {}))


def _collection(path: str) -> tuple[str, str] | None:
    """(plural, namespace) of a namespaced collection URL (`.../namespaces/<ns>/<plural>`), else None."""
    parts = path.strip("/").split("/")
    if "namespaces" in parts:
        i = parts.index("namespaces")
        if len(parts) == i + 3:  # .../namespaces/<ns>/<plural>
            return parts[i + 2], parts[i + 1]
    return None


class FaultyFront:
    """An aiohttp low-level handler that injects faults, then hands the request to the emulator.

    Args:
        serve: the emulator's request handler (`EnrichedEmulator.__call__`).
        plan: what to inject.
    """

    def __init__(self, serve: Handler, plan: FaultPlan) -> None:
        self._serve = serve
        self.plan = plan
        self.tally = FaultTally()
        self._rng = random.Random(plan.seed)

    def _roll(self, chance: float) -> bool:
        return chance > 0 and self._rng.random() < chance

    async def __call__(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Serve one request, perhaps with a fault (see the module docstring)."""
        if request.path == STATS_PATH:
            return aiohttp.web.json_response(self.tally.as_json())
        self.tally.requests += 1
        plan = self.plan
        method = request.method
        watch = method == "GET" and request.query.get("watch", "").lower() in ("true", "1")
        if self._roll(plan.throttle):
            self.tally.injected["throttle"] += 1
            retry = {"Retry-After": str(plan.retry_after)}
            return _status(429, "TooManyRequests", "Too many requests, please try again later.", retry)
        if self._roll(plan.error):
            self.tally.injected["error"] += 1
            return _status(500, "InternalError", "Internal error occurred: injected by the test harness")
        if method in ("PATCH", "PUT") and self._roll(plan.conflict):
            self.tally.injected["conflict"] += 1
            name = request.path.rstrip("/").split("/")[-1]
            return _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            )
        if watch and plan.watch_drop is not None:
            return await self._watch_then_drop(request, plan.watch_drop)
        lose_reply = method in WRITE_METHODS and self._roll(plan.committed_error)
        response = await self._serve(request)
        if method == "POST" and response.status == 201:
            self._count_create(request, response)
        if lose_reply and response.status < 300:
            self.tally.injected["committed_error"] += 1
            return _status(504, "Timeout", "Timeout: request did not complete within the allowed duration")
        return response

    def _count_create(self, request: aiohttp.web.BaseRequest, response: aiohttp.web.StreamResponse) -> None:
        where = _collection(request.path)
        body = getattr(response, "text", None)
        if where is None or not body:
            return
        try:
            name = json.loads(body)["metadata"]["name"]
        except (ValueError, KeyError, TypeError):
            return
        plural, namespace = where
        self.tally.created[plural][f"{namespace}/{name}"] += 1

    async def _watch_then_drop(
        self, request: aiohttp.web.BaseRequest, window: tuple[float, float]
    ) -> aiohttp.web.StreamResponse:
        """Stream the watch, then close its connection abruptly after a random time in `window`."""
        loop = asyncio.get_running_loop()
        delay = self._rng.uniform(*window)

        def cut() -> None:
            transport = request.transport
            if transport is not None and not transport.is_closing():
                self.tally.injected["watch_drop"] += 1
                transport.abort()

        timer = loop.call_later(delay, cut)
        try:
            return await self._serve(request)
        finally:
            timer.cancel()


async def serve_faulty(serve: Handler, plan: FaultPlan, host: str, port: int) -> tuple[asyncio.Server, str]:
    """Listen on `host:port` (0 = any free port) with a `FaultyFront`; return the server and its URL."""
    front = FaultyFront(serve, plan)
    server = await asyncio.get_running_loop().create_server(
        aiohttp.web.Server(front, handler_cancellation=True), host, port
    )
    bound = server.sockets[0].getsockname()
    return server, f"http://{bound[0]}:{bound[1]}"
