"""A burst of TransferJobs through a faulty API server while the operator is SIGKILLed at random moments.

Who uses it: tests/integration/operator/test_api_faults.py (10 TransferJobs, 10 kills, in `make test`) and
bench/bench_chaos.py (`BENCH=chaos make bench`: 30 TransferJobs, 60 kills, figures in docs/reliability.md).

`run_chaos` starts a cluster whose operator talks to the API through `tests.harness.faults` (429 with
Retry-After, 500, 504 after a committed write, 409 Conflict on PATCH/PUT, watches cut at random), creates the
burst (half at once, half spread over the kills, so creates also land while no operator runs), kills and
restarts the operator `kills` times at random moments (during its start-up as well as mid-run), then leaves
the last one running and waits until every TransferJob ends. It then checks, from the clean API port:

- every TransferJob ended in the phase its stand-in mode gives (Succeeded; Failed for `invalid`);
- exactly one Job was ever created per TransferJob (the faulty port counts every `201` answer), named
  `<name>-1`, and no second run started (`status.run` 1);
- no status was lost: `modelUri`, `metrics`, `epoch` and `stage` equal the final word the trainer wrote in
  its pod's termination message; `observedGeneration` (status and every condition) is the generation;
  the terminal condition is True and `Reconciling` is False;
- each trainer notice became exactly one Event (the `nogain` runs); no run has two JobCreated Events.

Each broken rule is a line in `ChaosReport.problems` (with the TransferJob's name and what was seen).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubegraft.runtime import TrainingProgress
from tests.harness.cluster import Cluster, OperatorProcess
from tests.harness.faults import FaultPlan
from tests.integration.operator.conftest import API_VERSION, free_port, operator_process_env, stand_in_spec

TERMINAL = frozenset({"Succeeded", "Failed"})
# Stand-in modes of the burst and the phase each ends in (see stand_in_trainer.py).
MODES = {"succeed": "Succeeded", "nogain": "Succeeded", "flaky": "Succeeded", "invalid": "Failed"}
MODE_WEIGHTS = {"succeed": 6, "nogain": 2, "flaky": 1, "invalid": 1}
NOTICE_REASONS = ("BatchNormReestimated", "NoTransferGain")
METRIC_DIGITS = 4  # the operator rounds status.metrics (planning.STATUS_METRIC_DIGITS)


def default_plan(seed: int) -> FaultPlan:
    """The fault mix of the test and the bench: about one request in eight fails, watches live 1-8 s.

    One PATCH in ten gets a 409 Conflict: kopf gives up on a handler's patch that gets one (the status it
    carried included), the loss the operator must repair (`reconcile`, "in doubt"); at one in twenty-five
    a 30-TransferJob burst showed it in one run of four.
    """
    return FaultPlan(
        seed=seed,
        throttle=0.04,
        retry_after=1,
        error=0.03,
        committed_error=0.02,
        conflict=0.1,
        watch_drop=(1.0, 8.0),
    )


@dataclass
class ChaosReport:
    """What a chaos run did and found."""

    seed: int
    transferjobs: int
    kills: int
    plan: FaultPlan
    burst_seconds: float = 0.0
    settle_seconds: float = 0.0
    tally: dict[str, Any] = field(default_factory=dict)
    phases: Counter[str] = field(default_factory=Counter)
    jobs_created: int = 0
    duplicate_jobs: int = 0  # Jobs created beyond one per TransferJob
    lost_status: list[str] = field(default_factory=list)  # TransferJobs whose final status broke a rule
    ended: int = 0  # TransferJobs in a terminal phase at the end
    job_created_events: int = (
        0  # JobCreated Events (at most one per TransferJob: a failed post is not retried)
    )
    problems: list[str] = field(default_factory=list)
    kill_moments: list[float] = field(default_factory=list)

    def summary(self) -> str:
        """One paragraph for logs and assertion messages."""
        injected = ", ".join(f"{k} {v}" for k, v in sorted(self.tally.get("injected", {}).items()))
        return (
            f"seed {self.seed}: {self.transferjobs} TransferJobs, {self.kills} SIGKILLs over "
            f"{self.burst_seconds:.0f} s, all ended {self.settle_seconds:.0f} s after the last restart; "
            f"phases {dict(self.phases)}; {self.ended} ended; {self.jobs_created} Jobs created "
            f"({self.duplicate_jobs} duplicates), {self.job_created_events} JobCreated Events; "
            f"{len(self.lost_status)} lost status; "
            f"{self.tally.get('requests', 0)} operator API requests, injected: {injected or 'none'}; "
            f"{len(self.problems)} problems" + ("".join(f"\n  - {p}" for p in self.problems[:40]))
        )


class _Chaos:
    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.metrics_port = free_port()
        self.operator: OperatorProcess | None = None

    def start_operator(self) -> None:
        self.operator = self.cluster.start_operator(
            "--standalone",
            "--all-namespaces",
            "-m",
            "kubegraft_operator.main",
            env=operator_process_env(self.metrics_port),
            log_name="operator.log" if self.operator is None else None,
        )

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def apply(self, name: str, mode: str) -> None:
        seconds = round(self.rng.uniform(0.2, 0.8), 2)
        spec = stand_in_spec(mode, seconds, epochs=self.rng.randint(3, 8))
        if mode == "flaky":
            spec["runPolicy"] = {"backoffLimit": 2}
        manifest = {
            "apiVersion": API_VERSION,
            "kind": "TransferJob",
            "metadata": {"name": name},
            "spec": spec,
        }
        self.cluster.apply(manifest)

    def phases(self, names: list[str]) -> dict[str, str | None]:
        items = {t["metadata"]["name"]: t for t in self.cluster.list(API_VERSION, "transferjobs")}
        return {n: (items.get(n, {}).get("status") or {}).get("phase") for n in names}


def _final_word(pods: list[dict[str, Any]]) -> TrainingProgress | None:
    """The trainer's final TrainingProgress from the termination message of the pod that exited 0."""
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode") == 0 and terminated.get("message"):
                return TrainingProgress.model_validate(json.loads(terminated["message"]))
    return None


def _check_status(name: str, mode: str, tj: dict[str, Any], pods: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    status = tj.get("status") or {}
    generation = tj["metadata"].get("generation")
    expected = MODES[mode]
    if status.get("phase") != expected:
        problems.append(f"{name} ({mode}): phase {status.get('phase')!r}, expected {expected}")
    if (status.get("run"), status.get("jobName")) != (1, f"{name}-1"):
        problems.append(f"{name}: run {status.get('run')!r}, jobName {status.get('jobName')!r}")
    if status.get("observedGeneration") != generation:
        problems.append(f"{name}: observedGeneration {status.get('observedGeneration')} != {generation}")
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    stale = sorted(t for t, c in conditions.items() if c.get("observedGeneration") != generation)
    if stale:
        problems.append(f"{name}: conditions {stale} not at generation {generation}")
    if conditions.get(expected, {}).get("status") != "True":
        problems.append(f"{name}: condition {expected} is not True: {conditions.get(expected)}")
    if conditions.get("Reconciling", {}).get("status") == "True":
        problems.append(f"{name}: Reconciling still True after the run ended")
    if expected == "Succeeded":
        word = _final_word(pods)
        if word is None:
            problems.append(f"{name}: no pod holds the trainer's final word")
            return problems
        want = {
            "modelUri": word.model_uri,
            "metrics": {k: round(v, METRIC_DIGITS) for k, v in word.metrics.items()},
            "epoch": word.epoch,
            "stage": word.stage,
        }
        got = {k: status.get(k) for k in want}
        if got != want:
            problems.append(f"{name}: status {got} != the trainer's final word {want}")
    return problems


def _check(cluster: Cluster, report: ChaosReport, modes: dict[str, str]) -> None:
    """Check every rule of the module docstring from the clean port; record what broke in `report`."""
    report.tally = cluster.fault_tally()
    created = report.tally.get("created", {}).get("jobs", {})
    report.jobs_created = sum(created.values())
    transferjobs_now = {t["metadata"]["name"]: t for t in cluster.list(API_VERSION, "transferjobs")}
    pods_by_owner: dict[str, list[dict[str, Any]]] = {}
    for pod in cluster.list("v1", "pods"):
        owner = (pod["metadata"].get("labels") or {}).get("kubegraft.io/transferjob")
        if owner:
            pods_by_owner.setdefault(owner, []).append(pod)
    events = Counter((e.get("involvedObject", {}).get("name"), e.get("reason")) for e in cluster.events())
    for name, mode in modes.items():
        mine = {k: v for k, v in created.items() if k.split("/", 1)[1].rsplit("-", 1)[0] == name}
        report.duplicate_jobs += max(0, sum(mine.values()) - 1)
        if mine != {f"default/{name}-1": 1}:
            report.problems.append(f"{name}: Jobs created {mine}, expected one {name}-1")
        tj = transferjobs_now.get(name)
        if tj is None:
            report.problems.append(f"{name}: the TransferJob is gone")
            continue
        phase = (tj.get("status") or {}).get("phase")
        report.phases[str(phase)] += 1
        report.ended += phase in TERMINAL
        status_problems = _check_status(name, mode, tj, pods_by_owner.get(name, []))
        if status_problems:
            report.lost_status.append(name)
        report.problems += status_problems
        report.job_created_events += events[(name, "JobCreated")]
        if events[(name, "JobCreated")] > 1:
            report.problems.append(f"{name}: {events[(name, 'JobCreated')]} JobCreated Events, expected one")
        if mode == "nogain":
            counts = {r: events[(name, r)] for r in NOTICE_REASONS}
            if counts != dict.fromkeys(NOTICE_REASONS, 1):
                report.problems.append(f"{name}: notice Events {counts}, expected one each")


def run_chaos(
    workdir: Path,
    *,
    transferjobs: int,
    kills: int,
    seed: int,
    plan: FaultPlan | None = None,
    up_seconds: tuple[float, float] = (0.3, 4.0),
    down_seconds: tuple[float, float] = (0.0, 1.0),
    settle_timeout: float = 240.0,
) -> ChaosReport:
    """Run the scenario of the module docstring; return what happened (problems listed, never raised).

    Args:
        workdir: where the cluster's files go (logs stay there for a failing run).
        transferjobs: size of the burst.
        kills: how many times the operator is SIGKILLed (and restarted).
        seed: seeds the kill moments, the burst's modes and durations, and (unless `plan`) the faults.
        plan: the faults; `default_plan(seed)` if None.
        up_seconds: range of how long each operator lives before its SIGKILL (from its start).
        down_seconds: range of how long the operator stays dead before the next one starts.
        settle_timeout: how long the last operator may take to bring every TransferJob to its end.
    """
    rng = random.Random(seed)
    plan = plan or default_plan(seed)
    report = ChaosReport(seed=seed, transferjobs=transferjobs, kills=kills, plan=plan)
    names = [f"burst-{i:02d}" for i in range(transferjobs)]
    drawn = rng.choices(list(MODE_WEIGHTS), list(MODE_WEIGHTS.values()), k=transferjobs)
    modes = dict(zip(names, drawn, strict=True))
    venv_bin = str(Path(sys.executable).parent)
    pod_env = {"PATH": os.pathsep.join((venv_bin, os.environ.get("PATH", "")))}
    with Cluster(workdir, gpus=0, pod_env=pod_env, faults=plan) as cluster:
        chaos = _Chaos(cluster, rng)
        chaos.start_operator()
        cluster.wait_for(chaos.ready, timeout=120, interval=0.2, message="the first operator is ready")
        first, later = names[: transferjobs // 2], names[transferjobs // 2 :]
        for name in first:
            chaos.apply(name, modes[name])
        started = time.monotonic()
        for kill in range(kills):
            time.sleep(rng.uniform(*up_seconds))
            if later and rng.random() < len(later) / max(1, kills - kill):
                name = later.pop(0)
                chaos.apply(name, modes[name])
            assert chaos.operator is not None
            chaos.operator.kill()
            report.kill_moments.append(round(time.monotonic() - started, 2))
            time.sleep(rng.uniform(*down_seconds))
            chaos.start_operator()
        for name in later:
            chaos.apply(name, modes[name])
        report.burst_seconds = time.monotonic() - started
        settled = time.monotonic()
        try:
            cluster.wait_for(
                lambda: all(p in TERMINAL for p in chaos.phases(names).values()),
                timeout=settle_timeout,
                interval=0.5,
                message="every TransferJob ends",
            )
        except TimeoutError:
            stuck = {n: p for n, p in chaos.phases(names).items() if p not in TERMINAL}
            report.problems.append(f"not ended after {settle_timeout:.0f} s: {stuck}")
        report.settle_seconds = time.monotonic() - settled
        time.sleep(3.0)  # late writes (Events, a last status patch) land before the checks
        _check(cluster, report, modes)
    return report
