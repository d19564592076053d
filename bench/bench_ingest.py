"""Ingest rate: images per second through `make_dataset` (fetch, check, decode, resize, batch).

The same Fashion-MNIST PNG files are read from a real SeaweedFS (S3) and from local disk in the same run,
interleaved, each pass with a fresh `ImageLoader` (so every pass fetches and checks every object, like a
first epoch). Two shapes: the 28 px files as stored (per-request overhead dominates) and the same images
upscaled to 224 px (a typical transfer-learning input). The S3 rate is reported for several thread counts,
for plain boto3 ``get_object`` calls, and as a ratio of the local rate: once with the trainer process and the
S3 server sharing every core (the server's CPU then counts against S3), and once with each pinned to a core
of its own, as in a cluster where storage runs on other machines and the trainer has a fixed CPU budget.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.harness.fashion import CLASS_NAMES, write_class_folders
from tests.harness.s3 import SeaweedFS, upload_tree

from kubegraft.spec import StorageSpec
from kubegraft_trainer.dataset import Example
from kubegraft_trainer.pipeline import S3_BATCH, ImageLoader, make_dataset
from kubegraft_trainer.storage import LocalStorage, S3Storage, Storage

PER_CLASS = int(os.environ.get("BENCH_INGEST_PER_CLASS", "200"))
BATCH_SIZE = 64
ROUNDS = 3
LOCAL_THREADS = 4
CURL_THREADS = (4, 8)  # fetch tasks in flight, each a batch of S3_BATCH GETs on one libcurl multi handle
S3_THREADS = (16, 32)
BOTO_THREADS = 16


def _examples(root: Path) -> list[Example]:
    return [
        Example(key=f"{p.parent.name}/{p.name}", label=CLASS_NAMES.index(p.parent.name))
        for p in sorted(root.rglob("*.png"))
    ]


def _cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of this process, or of process ``pid``."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Pass:
    """One measured pass: steady-state rate, and CPU milliseconds per image in the client and the server."""

    rate: float
    client_ms: float
    server_ms: float


def _measure(
    storage: Storage, examples: list[Example], threads: int, server_pid: int | None, image_size: int
) -> Pass:
    """One full pass with a fresh loader; the rate counts from the first batch on."""
    with ImageLoader(storage, threads=threads) as loader:
        dataset = make_dataset(
            examples, loader, image_size=image_size, batch_size=BATCH_SIZE, shuffle=True, seed=0
        )
        batches = iter(dataset)
        first, _ = next(batches)
        client, server = _cpu_seconds(), _cpu_seconds(server_pid) if server_pid else 0.0
        started = time.perf_counter()
        count = sum(int(images.shape[0]) for images, _ in batches)
        elapsed = time.perf_counter() - started
        client = _cpu_seconds() - client
        server = (_cpu_seconds(server_pid) if server_pid else 0.0) - server
        if count + int(first.shape[0]) != len(examples) or loader.skipped:
            raise RuntimeError(f"pass read {count} of {len(examples)} images, skipped {loader.skipped[:3]}")
    return Pass(rate=count / elapsed, client_ms=1000 * client / count, server_ms=1000 * server / count)


def _measure_gets(
    storage: Storage, examples: list[Example], threads: int, server_pid: int | None, batch: int = 1
) -> Pass:
    """Only the GETs (no check, no decode): ``read_bytes`` per key, or ``read_many`` per ``batch`` keys."""
    from concurrent.futures import ThreadPoolExecutor

    keys = [ex.key for ex in examples]
    batches = [keys[i : i + batch] for i in range(0, len(keys), batch)]
    with ThreadPoolExecutor(threads) as pool:
        client, server = _cpu_seconds(), _cpu_seconds(server_pid) if server_pid else 0.0
        started = time.perf_counter()
        total = sum(
            isinstance(data, bytes) and len(data) > 0
            for chunk in pool.map(storage.read_many, batches)
            for data in chunk
        )
        elapsed = time.perf_counter() - started
        client = _cpu_seconds() - client
        server = (_cpu_seconds(server_pid) if server_pid else 0.0) - server
    return Pass(rate=total / elapsed, client_ms=1000 * client / total, server_ms=1000 * server / total)


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Put every thread of process ``pid`` on ``cpus`` (threads started later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):  # a thread that just ended
            os.sched_setaffinity(int(task.name), cpus)


@contextlib.contextmanager
def _one_core_each(server_pid: int) -> Iterator[str]:
    """The benchmark (trainer) process on one CPU and the S3 server on another, restored afterwards."""
    everything = os.sched_getaffinity(0)
    trainer, server = sorted(everything)[:2]
    _set_affinity(os.getpid(), {trainer})
    _set_affinity(server_pid, {server})
    try:
        yield f"trainer on CPU {trainer}, SeaweedFS on CPU {server}"
    finally:
        _set_affinity(os.getpid(), everything)
        _set_affinity(server_pid, everything)


@dataclass(frozen=True)
class Scenario:
    """A data set shape: Fashion-MNIST PNGs at ``file_px``, decoded and resized to ``image_size``."""

    name: str
    file_px: int
    per_class: int
    image_size: int


SCENARIOS = (
    Scenario("Fashion-MNIST as stored (28 px PNG)", 28, PER_CLASS, 32),
    Scenario("The same images upscaled to 224 px PNG", 224, max(10, PER_CLASS // 6), 224),
)


def _scenario(server: SeaweedFS, tmp: Path, scenario: Scenario) -> list[str]:
    root = write_class_folders(
        tmp / f"data-{scenario.file_px}",
        range(len(CLASS_NAMES)),
        scenario.per_class,
        seed=0,
        size=scenario.file_px,
    )
    examples = _examples(root)
    size = sum(p.stat().st_size for p in root.rglob("*.png"))
    bucket = server.create_bucket(f"bench-ingest-{scenario.file_px}")
    upload_tree(server.client(), bucket, "fashion", root, threads=32)
    spec: StorageSpec = server.storage_spec()
    uri = f"s3://{bucket}/fashion"
    curl = S3Storage(uri, spec)
    if not curl.batches_reads:
        raise RuntimeError("pycurl did not load: import kubegraft_trainer before TensorFlow")
    urllib = S3Storage(uri, spec, batched_get=False)
    setups: list[tuple[str, Storage, int, int | None]] = [  # label, storage, threads, S3 server pid
        ("local disk", LocalStorage(str(root)), LOCAL_THREADS, None),
        *((f"S3, {S3_BATCH} GETs at once on libcurl", curl, n, server.pid) for n in CURL_THREADS),
        *(("S3, signed GETs on urllib3", urllib, n, server.pid) for n in S3_THREADS),
        ("S3, boto3 get_object", S3Storage(uri, spec, fast_get=False), BOTO_THREADS, server.pid),
    ]
    for _, storage, threads, pid in setups:  # warm up TensorFlow, the server and the connection pools
        _measure(storage, examples[: 4 * BATCH_SIZE], threads, pid, scenario.image_size)
    passes: list[list[Pass]] = [[] for _ in setups]
    gets: list[Pass] = []
    url_gets: list[Pass] = []
    for round_ in range(ROUNDS):
        for i, (label, storage, threads, pid) in enumerate(setups):
            passes[i].append(_measure(storage, examples, threads, pid, scenario.image_size))
            print(f"  {scenario.file_px} px, round {round_}: {label} x{threads}: {passes[i][-1]}", flush=True)
        gets.append(_measure_gets(curl, examples, CURL_THREADS[0], server.pid, S3_BATCH))
        url_gets.append(_measure_gets(urllib, examples, S3_THREADS[0], server.pid))
        print(f"  {scenario.file_px} px, round {round_}: GETs only: {gets[-1]}, {url_gets[-1]}", flush=True)

    pinned_setups = [setups[0], *(setup for setup in setups if "libcurl" in setup[0])]
    pinned: list[list[Pass]] = [[] for _ in pinned_setups]
    placement = ""
    if server.pid is not None and len(os.sched_getaffinity(0)) >= 2:
        with _one_core_each(server.pid) as placement:
            for round_ in range(ROUNDS):
                for i, (label, storage, threads, pid) in enumerate(pinned_setups):
                    pinned[i].append(_measure(storage, examples, threads, pid, scenario.image_size))
                    print(
                        f"  {scenario.file_px} px, one core each, round {round_}: {label} x{threads}: "
                        f"{pinned[i][-1]}",
                        flush=True,
                    )

    local_rate = statistics.median(p.rate for p in passes[0])
    local_client = statistics.median(p.client_ms for p in passes[0])
    lines = [
        f"### {scenario.name}",
        "",
        f"{len(examples)} images ({size / len(examples) / 1024:.1f} KiB on average) in "
        f"{len(CLASS_NAMES)} class folders, resized to {scenario.image_size}x{scenario.image_size}, "
        f"batch {BATCH_SIZE}, shuffled.",
        "",
        *_table(setups, passes, local_rate),
    ]
    best = max(range(1, len(setups)), key=lambda i: statistics.median(p.rate for p in passes[i]))
    best_rate = statistics.median(p.rate for p in passes[best])
    best_client = statistics.median(p.client_ms for p in passes[best])
    best_server = statistics.median(p.server_ms for p in passes[best])
    get_rate = statistics.median(p.rate for p in gets)
    get_client = statistics.median(p.client_ms for p in gets)
    get_server = statistics.median(p.server_ms for p in gets)
    url_rate = statistics.median(p.rate for p in url_gets)
    url_client = statistics.median(p.client_ms for p in url_gets)
    url_server = statistics.median(p.server_ms for p in url_gets)
    cpus = os.cpu_count() or 1
    s3_cap = 1000 * cpus / (best_client + best_server)
    local_cap = 1000 * cpus / local_client
    lines += [
        "",
        f"Best S3 rate, sharing the cores with the server: {best_rate:.0f} images/s ({setups[best][0]}, "
        f"{setups[best][2]} threads): **{100 * best_rate / local_rate:.0f}% of the local rate**; the trainer "
        f"process spends {best_client:.2f} CPU ms per image from S3 against {local_client:.2f} from disk.",
        "",
        f"What bounds it here: the GETs alone (no check or decode) run at {get_rate:.0f} objects/s in "
        f"batches of {S3_BATCH} on libcurl ({CURL_THREADS[0]} threads), with {get_client:.2f} client and "
        f"{get_server:.2f} server CPU ms each; one by one on urllib3 ({S3_THREADS[0]} threads) at "
        f"{url_rate:.0f}/s with {url_client:.2f} and {url_server:.2f}. A pass from S3 costs "
        f"{best_client:.2f} + {best_server:.2f} CPU ms per image between client and server, which share "
        f"{cpus} cores: at most {s3_cap:.0f} images/s if nothing else ran, against {local_cap:.0f} from disk "
        f"({100 * s3_cap / local_cap:.0f}%). In a cluster, where the server has its own machines, only the "
        "client's share counts.",
        "",
    ]
    if any(pinned):
        lines += _pinned_lines(pinned_setups, pinned, placement)
    return lines


def _table(
    setups: list[tuple[str, Storage, int, int | None]], passes: list[list[Pass]], local_rate: float
) -> list[str]:
    """Markdown table rows: each setup's median rate, its passes, the share of the local rate, CPU costs."""
    rows = [
        "| source | threads | images/s, median | passes | vs local | client CPU ms/img | server CPU ms/img |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for (label, _, threads, _), runs in zip(setups, passes, strict=True):
        rate = statistics.median(p.rate for p in runs)
        rows.append(
            f"| {label} | {threads} | {rate:.0f} | {', '.join(f'{p.rate:.0f}' for p in runs)} | "
            f"{100 * rate / local_rate:.0f}% | {statistics.median(p.client_ms for p in runs):.2f} | "
            f"{statistics.median(p.server_ms for p in runs):.2f} |"
        )
    return rows


def _pinned_lines(
    setups: list[tuple[str, Storage, int, int | None]], passes: list[list[Pass]], placement: str
) -> list[str]:
    """The table and verdict of the passes with the trainer and the server on a core each."""
    local_rate = statistics.median(p.rate for p in passes[0])
    lines = [
        f"One core each ({placement}; the same passes, interleaved, median of {ROUNDS}): the trainer has the "
        "same CPU budget for both sources, and the server's work no longer counts against S3.",
        "",
        *_table(setups, passes, local_rate),
    ]
    best_rate = max(statistics.median(p.rate for p in runs) for runs in passes[1:])
    lines += [
        "",
        f"Best S3 rate with a core each: {best_rate:.0f} images/s: **{100 * best_rate / local_rate:.0f}% of "
        "the local rate** (target >= 50%).",
        "",
    ]
    return lines


def run() -> str:
    """Measure every scenario and return the Markdown section."""
    load_before = os.getloadavg()[0]
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp, SeaweedFS(Path(tmp) / "s3") as server:
        os.environ.update(server.env())
        for scenario in SCENARIOS:
            lines += _scenario(server, Path(tmp), scenario)
    load_after = os.getloadavg()[0]
    header = [
        "## Ingest: images/s through make_dataset, SeaweedFS (S3) vs local disk",
        "",
        f"Machine: {platform.node()}, {os.cpu_count()} CPUs shared by the S3 server, the trainer process and",
        f"other work (load average {load_before:.1f} before, {load_after:.1f} after), then one core each for",
        "the trainer and the server. Each pass is one epoch",
        "with a fresh `ImageLoader` (keys per fetch task as the trainer picks them: 64 from disk, "
        f"{S3_BATCH} on libcurl, 1 on urllib3 and boto3): every object fetched, checked with Pillow and "
        "decoded by TensorFlow.",
        f"The rate counts from the first batch on; median of {ROUNDS} interleaved passes. CPU columns split",
        "the cost between the trainer process (client) and SeaweedFS, which in a cluster runs elsewhere.",
        "",
    ]
    return "\n".join(header + lines)


if __name__ == "__main__":
    print(run())
