"""Chaos benchmark: a burst of TransferJobs through a faulty API server while the operator is SIGKILLed.

`BENCH=chaos make bench` calls `run()`: `tests.integration.operator.chaos.run_chaos` with 30 TransferJobs
and 60 SIGKILLs (each operator lives 0.3-4 s, stays dead 0-1 s; kills land during its start-up as well as
mid-run) through `tests.harness.faults` with `chaos.default_plan` (429 with Retry-After, 500, 504 after a
committed write, 409 on PATCH, watches cut after 1-8 s). The rules it checks are in chaos.py's docstring.

What it reports: the faults injected by kind, Jobs created and duplicates, TransferJobs whose status broke a
rule (lost), JobCreated Events, TransferJobs ended, the burst and settle times, the wall time, the load
around the run. The targets are 0 duplicates, 0 lost, all ended; the times depend on the machine (the kill
moments are seeded, the rest is not).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.operator.chaos import ChaosReport, run_chaos

TRANSFERJOBS = 30
KILLS = 60
SEED = 3
FAULT_KINDS = ("throttle", "error", "committed_error", "conflict", "watch_drop")
FAULT_NAMES = {
    "throttle": "429 TooManyRequests (Retry-After 1 s)",
    "error": "500 before the commit",
    "committed_error": "504 after the commit",
    "conflict": "409 Conflict on PATCH",
    "watch_drop": "watch cut",
}


def _load() -> tuple[float, float, float]:
    return os.getloadavg()


def _section(report: ChaosReport, wall: float, before: tuple[float, ...], after: tuple[float, ...]) -> str:
    injected = report.tally.get("injected", {})
    requests = int(report.tally.get("requests", 0))
    rows = "\n".join(f"| {FAULT_NAMES[k]} | {injected.get(k, 0)} |" for k in FAULT_KINDS)
    verdict = (
        "**0 duplicate Jobs, 0 lost status, every TransferJob ended.**"
        if not report.problems
        else f"**{len(report.problems)} problems** (listed below)."
    )
    problems = "".join(f"\n- {p}" for p in report.problems[:20])
    return f"""## Chaos: API faults and operator kills

`BENCH=chaos make bench` ({platform.machine()}, {os.cpu_count()} CPUs, load average {before[0]:.2f} before,
{after[0]:.2f} after). {report.transferjobs} TransferJobs (half at once, half during the kills),
{len(report.kill_moments)} SIGKILLs of the real `kopf run` operator over {report.burst_seconds:.0f} s, seed
{report.seed}; the operator talks to the emulator through the fault front (`tests/harness/faults.py`),
{requests} of its API requests counted there. {verdict}

| fault injected | count |
| --- | ---: |
{rows}
| total | {sum(injected.values())} |

| result | value |
| --- | ---: |
| TransferJobs | {report.transferjobs} |
| SIGKILLs | {len(report.kill_moments)} |
| Jobs created | {report.jobs_created} |
| duplicate Jobs | {report.duplicate_jobs} |
| TransferJobs with lost status | {len(report.lost_status)} |
| JobCreated Events (at most one per TransferJob) | {report.job_created_events} |
| TransferJobs ended | {report.ended} ({", ".join(f"{k} {v}" for k, v in sorted(report.phases.items()))}) |
| burst (first create to last restart) | {report.burst_seconds:.0f} s |
| all ended after the last restart | {report.settle_seconds:.0f} s |
| wall time | {wall:.0f} s |
{problems}
"""


def run(log: Callable[[str], None] = print) -> str:
    """Run the benchmark; return its Markdown section for docs/benchmarks.md."""
    before = _load()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        report = run_chaos(Path(tmp), transferjobs=TRANSFERJOBS, kills=KILLS, seed=SEED)
    wall = time.monotonic() - started
    log(report.summary())
    return _section(report, wall, before, _load())
