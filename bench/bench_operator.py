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

The machine is shared: the report records the load average before and after the run (and says plainly when
it was high), the emulator's floor measured in the same run, and the emulator's CPU per TransferJob beside
the operator's, so a slow run can be told apart from a slow operator.
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
    emulator_pid = cluster.emulator_pid or 0
    emulator_before = _cpu_seconds(emulator_pid)
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
        "emulator_cpu_ms_per_tj": (_cpu_seconds(emulator_pid) - emulator_before) * 1000 / count,
    }


def _steady(cluster: Cluster, watch: JobWatch, pid: int) -> tuple[list[float], float]:
    """Latencies (sorted) of STEADY_RATE creates/s for STEADY_SECONDS; and the operator's CPU ms per TJ."""
    created: dict[str, float] = {}
    cpu_before = _cpu_seconds(pid)
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
    cpu_ms = (_cpu_seconds(pid) - cpu_before) * 1000 / max(1, len(created))
    return sorted(watch.seen[f"{n}-1"] - t for n, t in created.items()), cpu_ms


def _percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _load() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages of the machine."""
    return os.getloadavg()


def run(log: Callable[[str], None] = print) -> str:
    """Run the benchmark; return its Markdown section for docs/benchmarks.md."""
    load_before = _load()
    log(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
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
            latencies, steady_cpu_ms = _steady(cluster, watch, operator.pid)
            _, peak = _rss_mib(operator.pid)
            log(
                f"steady: p50 {_percentile(latencies, 0.5):.3f}s p99 {_percentile(latencies, 0.99):.3f}s"
                f" operator CPU {steady_cpu_ms:.1f} ms/TJ"
            )
    load_after = _load()
    log(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    return _report(floor_s, bursts, latencies, peak, counts) + _load_note(
        load_before, load_after, steady_cpu_ms
    )


def _load_note(
    before: tuple[float, float, float], after: tuple[float, float, float], steady_cpu_ms: float
) -> str:
    """The machine's load around the run, said plainly when it was high."""
    cpus = os.cpu_count() or 1
    # The run itself keeps about 1.5 CPUs busy (emulator + operator + client); more than that is someone else.
    busy = before[0] > 0.5 * cpus or after[0] > cpus + 0.5 or after[1] > cpus + 0.5
    verdict = (
        f"**The machine was loaded by other work during this run** (load above its {cpus} CPUs): the absolute"
        " times are inflated; compare the ratio to the floor measured in the same run."
        if busy
        else "The machine was quiet apart from this run."
    )
    return (
        f"- Operator CPU per TransferJob in the steady phase: {steady_cpu_ms:.1f} ms.\n"
        f"- Machine load average (1, 5, 15 min) before the run: {before[0]:.1f}, {before[1]:.1f},"
        f" {before[2]:.1f}; after: {after[0]:.1f}, {after[1]:.1f}, {after[2]:.1f} on {cpus} CPUs. {verdict}\n"
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
        f"{b['requests_per_tj']:.1f} | {b['cpu_ms_per_tj']:.0f} ms | {b['emulator_cpu_ms_per_tj']:.0f} ms | "
        f"{b['peak_rss_mib']:.0f} MiB |"
        for b in bursts
    )
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:8]
    breakdown = ", ".join(f"{m} {k}: {n}" for (m, k), n in top)
    cpus = os.cpu_count()
    operator_ms, emulator_ms = big["cpu_ms_per_tj"], big["emulator_cpu_ms_per_tj"]
    limit = (
        f"In the {int(big['count'])} burst the operator used {operator_ms:.0f} ms CPU per TransferJob and the"
        f" emulator {emulator_ms:.0f} ms: the "
        + (
            "operator, not the emulator, is the limit."
            if operator_ms > emulator_ms
            else "emulator is the limit."
        )
    )
    return f"""## Operator (`bench/bench_operator.py`)

Machine: {platform.machine()}, {cpus} CPUs (shared), Python {platform.python_version()}; the API emulator
(`tests.harness.emulator`), no kubelet (Jobs are created, not run); one `kopf run` operator watching one
namespace through a counting proxy; the bench client creates TransferJobs with {THREADS} threads.

| Load | creates sent in | all Jobs after | requests / TJ | operator CPU / TJ | emulator CPU / TJ | peak RSS |
|---|---|---|---|---|---|---|
{rows}

- Emulator floor, same run: {BURST_SIZES[-1]} x (create TransferJob, create Job, patch status) from a plain
  client without operator: {floor_s:.1f} s. Operator burst of {int(big["count"])} / floor:
  **{big["all_jobs_s"] / floor_s:.2f}x** (target: every Job within 60 s: {big["all_jobs_s"]:.1f} s).
- {limit}
- Steady {STEADY_RATE:.0f} TransferJobs/s for {STEADY_SECONDS:.0f} s ({len(latencies)} objects): creation to
  Job p50 **{p50 * 1000:.0f} ms**, p99 **{p99 * 1000:.0f} ms**, max {latencies[-1] * 1000:.0f} ms
  (target p99 < 1 s).
- Operator peak RSS after everything ({sum(int(b["count"]) for b in bursts) + len(latencies)} TransferJobs):
  **{peak_mib:.0f} MiB** (target < 200 MiB).
- Requests during the bursts (method, resource): {breakdown}.
"""


if __name__ == "__main__":
    print(run())
