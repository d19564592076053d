"""Operator scale benchmark against the API emulator: burst, steady rate, API requests, memory, floor.

`make bench` (or `BENCH=operator make bench`) calls `run()`. One emulator (no kubelet: Jobs are created,
never run), one real `kopf run` operator watching namespace `bench` through a counting HTTP proxy, and a
plain client:

1. floor: the same work without an operator — create a TransferJob, create its Job, patch its status — for
   1,000 objects from the bench client (16 threads), in namespace `floor`;
2. burst: 100, then 1,000 TransferJobs created at once (16 threads); time until every one has its Job (seen
   on a watch), API requests per TransferJob (counted by the proxy until the operator is quiet), operator
   peak RSS;
3. steady: 20 TransferJobs/s for 60 s; per-object latency from the create request to its Job's watch event.

Targets: burst 1,000 < 60 s, steady p99 < 1 s, peak RSS < 200 MiB.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web
from tests.harness.cluster import REPO_ROOT, Cluster
from tests.integration.operator.conftest import free_port

NAMESPACE = "bench"
FLOOR_NAMESPACE = "floor"
THREADS = 16
BURST_SIZES = (100, 1000)
STEADY_RATE = 20.0
STEADY_SECONDS = 60.0
SPEC: dict[str, Any] = {
    "dataset": {"uri": "s3://datasets/bench/"},
    "output": {"uri": "s3://models/bench/"},
    "model": {"backbone": "MobileNetV2"},
    "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"},
}


def _resource(path: str) -> str:
    """The resource (plural, with subresource) an API path addresses, e.g. transferjobs/status."""
    parts = [p for p in path.split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    if not rest:
        return path
    return "/".join([rest[0], *rest[2:3]])


class CountingProxy:
    """An HTTP reverse proxy in front of the emulator that counts requests by (method, resource)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def start(self) -> None:
        """Serve on a free 127.0.0.1 port (in a thread with its own event loop)."""
        self._thread.start()
        self._ready.wait(10)

    def total(self) -> int:
        """Requests counted so far."""
        return sum(self.counts.values())

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.run_forever()

    async def _serve(self) -> None:
        session = ClientSession(timeout=ClientTimeout(total=None))

        async def handle(request: web.Request) -> web.StreamResponse:
            kind = _resource(request.path)
            watch = request.query.get("watch") in ("true", "1")
            self.counts[("WATCH" if watch else request.method, kind)] += 1
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
            async with session.request(
                request.method, self.upstream + request.path_qs, headers=headers, data=await request.read()
            ) as upstream:
                response = web.StreamResponse(status=upstream.status)
                if "Content-Type" in upstream.headers:
                    response.headers["Content-Type"] = upstream.headers["Content-Type"]
                await response.prepare(request)
                try:
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
                    await response.write_eof()
                except ConnectionResetError:  # the client closed its watch: normal at shutdown
                    pass
                return response

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()


class JobWatch:
    """Records when each Job of a namespace is first seen on a watch stream (the operator's output)."""

    def __init__(self, url: str, namespace: str) -> None:
        self.seen: dict[str, float] = {}
        self._url = f"{url}/apis/batch/v1/namespaces/{namespace}/jobs?watch=true"
        threading.Thread(target=self._main, daemon=True).start()

    def _main(self) -> None:
        with urllib.request.urlopen(self._url, timeout=3600) as stream:
            for line in stream:
                event = json.loads(line)
                name = event["object"]["metadata"]["name"]
                self.seen.setdefault(name, time.monotonic())

    def wait(self, names: list[str], timeout: float) -> float:
        """Block until every Job in `names` was seen; return the monotonic time of the last one."""
        deadline = time.monotonic() + timeout
        while any(n not in self.seen for n in names):
            if time.monotonic() > deadline:
                missing = [n for n in names if n not in self.seen]
                raise TimeoutError(f"{len(missing)} Jobs not created in {timeout}s, e.g. {missing[:3]}")
            time.sleep(0.05)
        return max(self.seen[n] for n in names)


def _transferjob(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "TransferJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": SPEC,
    }


def _create(cluster: Cluster, name: str, namespace: str) -> dict[str, Any]:
    body: dict[str, Any] = cluster.request(
        "POST",
        f"/apis/kubegraft.io/v1alpha1/namespaces/{namespace}/transferjobs",
        _transferjob(name, namespace),
    )
    return body


def _floor(cluster: Cluster, count: int) -> float:
    """Seconds for a plain client to do what the operator does per TransferJob (without the operator)."""
    from kubegraft_operator.config import OperatorConfig
    from kubegraft_operator.rendering import render_job

    config = OperatorConfig()

    def one(index: int) -> None:
        tj = _create(cluster, f"floor-{index}", FLOOR_NAMESPACE)
        job = render_job(tj, 1, 1, config)
        cluster.request("POST", f"/apis/batch/v1/namespaces/{FLOOR_NAMESPACE}/jobs", job)
        cluster.request(
            "PATCH",
            f"/apis/kubegraft.io/v1alpha1/namespaces/{FLOOR_NAMESPACE}/transferjobs/floor-{index}/status",
            {"status": {"phase": "Pending", "run": 1, "jobName": job["metadata"]["name"]}},
            content_type="application/merge-patch+json",
        )

    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, range(count)))
    return time.monotonic() - started


def _rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_quiet(proxy: CountingProxy, quiet: float = 3.0, timeout: float = 120.0) -> None:
    """Wait until the operator made no request for `quiet` seconds (status patches and Events flushed)."""
    deadline = time.monotonic() + timeout
    last, since = proxy.total(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        if proxy.total() != last:
            last, since = proxy.total(), time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


@contextmanager
def _operator(cluster: Cluster, proxy: CountingProxy, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    kubeconfig = json.loads(cluster.kubeconfig.read_text())
    kubeconfig["clusters"][0]["cluster"]["server"] = proxy.url
    proxied = workdir / "kubeconfig-proxy.yaml"
    proxied.write_text(json.dumps(kubeconfig))
    metrics_port = free_port()
    env = cluster.env({"KUBEGRAFT_METRICS_PORT": str(metrics_port)})
    env["KUBECONFIG"] = str(proxied)
    # kopf watches a named namespace only once the Namespace exists.
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    log = (workdir / "operator.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kopf",
            "run",
            "--standalone",
            "--namespace",
            NAMESPACE,
            "-m",
            "kubegraft_operator.main",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        Cluster.wait_for(lambda: _get(f"http://127.0.0.1:{metrics_port}/readyz"), timeout=120, interval=0.2)
        yield process
    finally:
        process.kill()
        process.wait()
        log.close()


def _get(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _burst(
    cluster: Cluster, watch: JobWatch, proxy: CountingProxy, prefix: str, count: int, *, pid: int
) -> dict[str, float]:
    names = [f"{prefix}-{i}" for i in range(count)]
    before = proxy.total()
    cpu_before = _cpu_seconds(pid)
    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda n: _create(cluster, n, NAMESPACE), names))
    created = time.monotonic() - started
    last = watch.wait([f"{n}-1" for n in names], timeout=600)
    _wait_quiet(proxy)
    return {
        "count": count,
        "create_s": created,
        "all_jobs_s": last - started,
        "requests_per_tj": (proxy.total() - before) / count,
        "cpu_ms_per_tj": (_cpu_seconds(pid) - cpu_before) * 1000 / count,
    }


def _steady(cluster: Cluster, watch: JobWatch) -> list[float]:
    created: dict[str, float] = {}
    total = int(STEADY_RATE * STEADY_SECONDS)
    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        for index in range(total):
            due = started + index / STEADY_RATE
            time.sleep(max(0.0, due - time.monotonic()))
            name = f"steady-{index}"

            def create(name: str = name) -> None:
                created[name] = time.monotonic()
                _create(cluster, name, NAMESPACE)

            pool.submit(create)
    watch.wait([f"{n}-1" for n in created], timeout=300)
    return sorted(watch.seen[f"{n}-1"] - t for n, t in created.items())


def _percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def run(log: Callable[[str], None] = print) -> str:
    """Run the benchmark; return its Markdown section for docs/benchmarks.md."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp,
        Cluster(Path(tmp), start_kubelet=False) as cluster,
    ):
        floor_s = _floor(cluster, BURST_SIZES[-1])
        log(f"floor: {BURST_SIZES[-1]} x (create TransferJob, create Job, patch status) in {floor_s:.1f}s")
        proxy = CountingProxy(cluster.url)
        proxy.start()
        watch = JobWatch(cluster.url, NAMESPACE)
        with _operator(cluster, proxy, Path(tmp)) as operator:
            bursts = []
            for size in BURST_SIZES:
                result = _burst(cluster, watch, proxy, f"burst{size}", size, pid=operator.pid)
                result["rss_mib"], result["peak_rss_mib"] = _rss_mib(operator.pid)
                log(f"burst {size}: {json.dumps({k: round(v, 2) for k, v in result.items()})}")
                bursts.append(result)
            counts = dict(proxy.counts)
            latencies = _steady(cluster, watch)
            _, peak = _rss_mib(operator.pid)
            log(f"steady: p50 {_percentile(latencies, 0.5):.3f}s p99 {_percentile(latencies, 0.99):.3f}s")
    return _report(floor_s, bursts, latencies, peak, counts) + (
        f"- Machine load (1-minute load average) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()}"
        " CPUs shared with other work; the ratios, not the absolute times, compare across runs.\n"
    )


def _report(
    floor_s: float,
    bursts: list[dict[str, float]],
    latencies: list[float],
    peak_mib: float,
    counts: dict[tuple[str, str], int],
) -> str:
    big = bursts[-1]
    p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    rows = "\n".join(
        f"| {int(b['count'])} at once | {b['create_s']:.1f} s | {b['all_jobs_s']:.1f} s | "
        f"{b['requests_per_tj']:.1f} | {b['cpu_ms_per_tj']:.0f} ms | {b['peak_rss_mib']:.0f} MiB |"
        for b in bursts
    )
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:8]
    breakdown = ", ".join(f"{m} {k}: {n}" for (m, k), n in top)
    cpus = os.cpu_count()
    return f"""## Operator (`bench/bench_operator.py`)

Machine: {platform.machine()}, {cpus} CPUs (shared), Python {platform.python_version()}; the API emulator
(`tests.harness.emulator`), no kubelet (Jobs are created, not run); one `kopf run` operator watching one
namespace through a counting proxy; the bench client creates TransferJobs with {THREADS} threads.

| Load | creates sent in | all Jobs exist after | API requests / TJ | operator CPU / TJ | peak RSS |
|---|---|---|---|---|---|
{rows}

- Emulator floor, same run: {BURST_SIZES[-1]} x (create TransferJob, create Job, patch status) from a plain
  client without operator: {floor_s:.1f} s. Operator burst of {int(big["count"])} / floor:
  **{big["all_jobs_s"] / floor_s:.2f}x** (target: every Job within 60 s: {big["all_jobs_s"]:.1f} s).
- Steady {STEADY_RATE:.0f} TransferJobs/s for {STEADY_SECONDS:.0f} s ({len(latencies)} objects): creation to
  Job p50 **{p50 * 1000:.0f} ms**, p99 **{p99 * 1000:.0f} ms**, max {latencies[-1] * 1000:.0f} ms
  (target p99 < 1 s).
- Operator peak RSS after everything ({sum(int(b["count"]) for b in bursts) + len(latencies)} TransferJobs):
  **{peak_mib:.0f} MiB** (target < 200 MiB).
- Requests during the bursts (method, resource): {breakdown}.
"""


if __name__ == "__main__":
    print(run())
