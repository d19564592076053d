"""Trainer runs against S3 faults: each scenario injects one fault class (`FaultProxy`) and judges the end.

A scenario runs a small real transfer run (a tiny conv backbone, three Fashion-MNIST classes, 32 px, two
stages of two epochs) with SeaweedFS behind the fault proxy: the data set's listing and images (the fast
paths), the backbone download, the per-epoch checkpoints and the publish's server-side copies all pass
through it. The outcome is one of:

- ``finished``: the run published a complete version whose weights equal the fault-free run's (same seed);
- ``failed cleanly``: the run failed with the scenario's `FailureReason`, the highest version present is
  complete (or there is none), the checkpoint's state names only files that exist, and (where the bucket
  still exists) a rerun of the same run id without faults resumes from that checkpoint and publishes the
  fault-free run's model;
- ``lost``: anything else (another model, an unclear failure, a partial top version, a broken checkpoint).

`tests/integration/trainer_data/test_s3_faults.py` runs some scenarios;
``python -m tests.harness.reliability`` runs all of them and writes the figures into docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kubegraft.runtime import FailureReason
from kubegraft.spec import TransferJobSpec
from kubegraft_trainer.checkpoints import STATE_FILE
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.progress import ProgressTracker
from kubegraft_trainer.repository import COMPLETE_MARKER, work_uri
from kubegraft_trainer.run import train
from tests.harness.fashion import upload_dir, write_class_folders
from tests.harness.s3 import SeaweedFS
from tests.harness.s3_fault_proxy import Fault, FaultProxy

__all__ = ["SCENARIOS", "Outcome", "Scenario", "Workbench", "tiny_backbone", "workbench"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
OPERATOR_SECTION = "\n## API server faults and operator kills"
_DATA = r"/data/"
_CHECKPOINTS = r"/checkpoints/"
_GET = frozenset({"GET"})
_PUT = frozenset({"PUT"})
_COPY = "x-amz-copy-source"


@dataclass(frozen=True)
class Scenario:
    """One fault class: its rules (given a way to delete the run's bucket) and the reason it must fail with.

    Attributes:
        name: Short name.
        what: One sentence for the report.
        faults: Builds the rules; its argument deletes the scenario's bucket upstream.
        reason: The `FailureReason` a clean failure has; None: the run must finish with the same model.
    """

    name: str
    what: str
    faults: Callable[[Callable[[], None]], list[Fault]]
    reason: str | None = None


def _everywhere(kind: Any, **extra: Any) -> Callable[[Callable[[], None]], list[Fault]]:
    """Reads of the data set (listing and images) and the backbone, checkpoint writes, publish copies."""

    def build(_: Callable[[], None]) -> list[Fault]:
        return [
            Fault(kind, methods=_GET, path=_DATA, start=3, every=7, times=8, **extra),
            Fault(kind, methods=_GET, path=r"/bb/", times=1, **extra),
            Fault(kind, methods=_GET, path=r"list-type", times=1, **extra),
            Fault(kind, methods=_PUT, path=_CHECKPOINTS, start=1, every=2, times=3, **extra),
            Fault(kind, methods=_PUT, header=_COPY, start=1, every=3, times=2, **extra),
        ]

    return build


SCENARIOS = (
    Scenario(
        "slowdown", "503 SlowDown on reads, checkpoint writes and publish copies", _everywhere("slowdown")
    ),
    Scenario("reset", "connections reset before the request reaches the server", _everywhere("reset")),
    Scenario(
        "truncated",
        "object bodies cut off halfway by a reset (data set images, backbone)",
        lambda _: [
            Fault("truncate", methods=_GET, path=_DATA, start=3, every=5, times=10),
            Fault("truncate", methods=_GET, path=r"/bb/", times=1),
        ],
    ),
    Scenario("slow", "answers trickled out over 0.3 s", _everywhere("slow", delay=0.3)),
    Scenario(
        "expired",
        "403 ExpiredToken on every request from the seventh checkpoint write on (mid-training)",
        lambda _: [Fault("expired", methods=_PUT, path=_CHECKPOINTS, start=6, times=None, latch=True)],
        reason=FailureReason.STORAGE_ACCESS_DENIED,
    ),
    Scenario(
        "bucket-deleted",
        "the bucket deleted (with everything in it) at the third checkpoint write; NoSuchBucket from then on",
        lambda delete: [
            Fault(
                "nosuchbucket",
                methods=_PUT,
                path=_CHECKPOINTS,
                start=2,
                times=None,
                latch=True,
                action=delete,
            )
        ],
        reason=FailureReason.OUTPUT_NOT_WRITABLE,
    ),
)


@dataclass
class Outcome:
    """How one scenario's run ended."""

    scenario: str
    verdict: str  # "finished", "failed cleanly" or "lost"
    injected: Counter[str]
    reason: str | None = None
    message: str = ""
    resumed_epochs: int | None = None  # epochs the rerun trained (of the run's total), for a failed run
    problems: list[str] = field(default_factory=list)
    resumed_same_model: bool | None = None  # whether the rerun's weights equal the fault-free run's


class _CountEpochs(keras.callbacks.Callback):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.epochs = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epochs += 1


@dataclass
class Workbench:
    """SeaweedFS, the fault proxy before it, the data set and backbone on disk, and the fault-free model."""

    server: SeaweedFS
    proxy: FaultProxy
    data: Path
    backbone: Path
    baseline: list[np.ndarray[Any, Any]] = field(default_factory=list)

    def spec(self, bucket: str) -> TransferJobSpec:
        """The runs' spec on ``bucket``, through the proxy."""
        from tests.integration.trainer.conftest import build_spec, stage

        return build_spec(
            f"s3://{bucket}/data",
            f"s3://{bucket}/bb/tiny.keras",
            [stage("head", 0, 2), stage("finetune", 4, 2, learningRate=1e-3)],
            {"uri": f"s3://{bucket}/models/m"},
            storage={"endpoint": self.proxy.endpoint},
        )

    def bucket(self) -> str:
        """A fresh bucket holding the data set and the backbone."""
        bucket = self.server.create_bucket()
        client = self.server.client()
        upload_dir(client, bucket, "data", self.data)
        client.upload_file(str(self.backbone), bucket, "bb/tiny.keras")
        return bucket

    def train(self, bucket: str, run_id: str) -> tuple[list[np.ndarray[Any, Any]], int]:
        """One run; its model's weights and the epochs it trained."""
        counter = _CountEpochs()
        tracker = ProgressTracker(out=io.StringIO())
        result = train(self.spec(bucket), run_id=run_id, tracker=tracker, extra_callbacks=[counter])
        return result.parts.model.get_weights(), counter.epochs

    def run_baseline(self) -> None:
        """The fault-free run every scenario's model is compared with."""
        self.proxy.set_faults([])
        self.baseline, _ = self.train(self.bucket(), "baseline")

    def same_model(self, weights: list[np.ndarray[Any, Any]]) -> bool:
        """Whether ``weights`` equal the fault-free run's."""
        return len(weights) == len(self.baseline) and all(
            np.array_equal(a, b) for a, b in zip(weights, self.baseline, strict=True)
        )

    def repository_problems(self, bucket: str) -> list[str]:
        """What is wrong with the run's output: a top version without its marker, a broken checkpoint."""
        client = self.server.client()
        try:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            keys = {item["Key"] for page in pages for item in page.get("Contents", [])}
        except client.exceptions.NoSuchBucket:
            return []
        problems = []
        versions = {
            int(k.split("/")[2]) for k in keys if k.startswith("models/m/") and k.split("/")[2].isdigit()
        }
        if versions and f"models/m/{max(versions)}/{COMPLETE_MARKER}" not in keys:
            problems.append(f"the highest version {max(versions)} has no {COMPLETE_MARKER} marker")
        work = work_uri(f"s3://{bucket}/models/m").removeprefix(f"s3://{bucket}/")
        for key in (k for k in keys if k.startswith(f"{work}/checkpoints/") and k.endswith(STATE_FILE)):
            state = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
            folder = key.removesuffix(STATE_FILE)
            named = [state.get("modelWeights")]
            stage = state.get("stage") or {}
            named += [stage.get("weights"), stage.get("optimizer"), stage.get("best")]
            problems += [f"{key} names the missing {n}" for n in named if n and folder + n not in keys]
        return problems

    def repository_has_version(self, bucket: str) -> bool:
        """Whether the output holds a complete version."""
        listed = self.server.client().list_objects_v2(Bucket=bucket, Prefix="models/m/")
        return any(item["Key"].endswith(f"/{COMPLETE_MARKER}") for item in listed.get("Contents", []))

    def checkpointed(self, bucket: str, run_id: str) -> bool:
        """Whether the run left a checkpoint state in its work area."""
        work = work_uri(f"s3://{bucket}/models/m").removeprefix(f"s3://{bucket}/")
        key = f"{work}/checkpoints/{run_id}/{STATE_FILE}"
        listed = self.server.client().list_objects_v2(Bucket=bucket, Prefix=key)
        return bool(listed.get("KeyCount"))

    def run(self, scenario: Scenario) -> Outcome:
        """Run ``scenario`` and judge how it ended."""
        bucket = self.bucket()
        run_id = f"faults-{scenario.name}"
        self.proxy.set_faults(scenario.faults(lambda: self.server.delete_bucket(bucket)))
        self.proxy.injected.clear()
        try:
            weights, _ = self.train(bucket, run_id)
        except TrainerError as exc:
            injected = Counter(self.proxy.injected)
            self.proxy.set_faults([])
            return self._failed(scenario, bucket, run_id, exc, injected)
        injected = Counter(self.proxy.injected)
        self.proxy.set_faults([])
        problems = self.repository_problems(bucket)
        if scenario.reason is not None:
            problems.append(f"the run finished where it should have failed with {scenario.reason}")
        if not self.same_model(weights):
            problems.append("the run published a different model than the fault-free run")
        verdict = "lost" if problems else "finished"
        return Outcome(scenario.name, verdict, injected, problems=problems)

    def _failed(
        self, scenario: Scenario, bucket: str, run_id: str, exc: TrainerError, injected: Counter[str]
    ) -> Outcome:
        outcome = Outcome(scenario.name, "lost", injected, reason=exc.reason, message=exc.message)
        problems = self.repository_problems(bucket)
        if exc.reason != scenario.reason:
            problems.append(f"failed with {exc.reason} where {scenario.reason} was due")
        if _bucket_exists(self.server, bucket):
            saved = self.checkpointed(bucket, run_id)
            weights, epochs = self.train(bucket, run_id)  # the retry, credentials back
            outcome.resumed_epochs = epochs
            if saved and epochs >= 4:
                problems.append("the rerun started over instead of resuming from the checkpoint")
            outcome.resumed_same_model = self.same_model(weights)
            if not self.repository_has_version(bucket):
                problems.append("the resumed run published no complete version")
        outcome.problems = problems
        outcome.verdict = "lost" if problems else "failed cleanly"
        return outcome


def _bucket_exists(server: SeaweedFS, bucket: str) -> bool:
    return any(b["Name"] == bucket for b in server.client().list_buckets().get("Buckets", []))


def tiny_backbone(path: Path) -> Path:
    """A small conv backbone of plain Keras layers (32 px; loads in any process), saved as ``path``."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for filters in (8, 16):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)).save(path)
    return path


@contextlib.contextmanager
def workbench(root: Path, server: SeaweedFS | None = None) -> Iterator[Workbench]:
    """SeaweedFS (``server``, else a new one) behind the fault proxy, AWS_* set, the fault-free run done."""
    saved = {
        k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    with contextlib.ExitStack() as stack:
        if server is None:
            server = stack.enter_context(SeaweedFS())
        proxy = stack.enter_context(FaultProxy(server.endpoint))
        os.environ.update(server.env())
        try:
            bench = Workbench(
                server,
                proxy,
                write_class_folders(root / "data", (0, 1, 2), 40, seed=0),
                tiny_backbone(root / "tiny.keras"),
            )
            bench.run_baseline()
            yield bench
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _report(outcomes: list[Outcome], seconds: float) -> str:
    verdicts = Counter(o.verdict for o in outcomes)
    injected = sum((o.injected for o in outcomes), Counter())
    lines = [
        "# Reliability",
        "",
        "## The trainer against S3 faults",
        "",
        "Produced by `PYTHONPATH=. .venv/bin/python -m tests.harness.reliability` "
        f"({seconds:.0f} s on the shared 2-core development machine). Each scenario runs a small real "
        "transfer run (tiny conv backbone, 3 Fashion-MNIST classes, 120 images at 32 px, two stages of two "
        "epochs) against SeaweedFS through `tests/harness/s3_fault_proxy.py`, which injects one fault class "
        "into the data set's listing and image reads (boto3, urllib3 and libcurl fast paths), the backbone "
        "download, the per-epoch checkpoint writes and the publish's server-side copies. Faults are counted "
        "per rule (the n-th matching request), so the numbers injected are exact. How each run is judged is "
        "in the module's docstring (`tests/harness/reliability.py`): *finished* means the published weights "
        "equal a fault-free run's at the same seed; *failed cleanly* means the expected failure reason, no "
        "incomplete top version, a checkpoint naming only existing files and, where the bucket still exists, "
        "a rerun that resumes from it (when one was written) and publishes a complete version; whether "
        "the resumed model's weights equal the uninterrupted run's is the last column (resuming restores "
        "weights, optimizer and early-stopping state, but is not bit-exact).",
        "",
        f"**Faults injected: {sum(injected.values())}; runs finished: {verdicts['finished']}; "
        f"failed cleanly: {verdicts['failed cleanly']}; lost: {verdicts['lost']}** "
        f"(of {len(outcomes)} runs).",
        "",
        "| scenario | faults | injected | outcome | reason | rerun epochs (of 4) | rerun same weights |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for outcome in outcomes:
        scenario = next(s for s in SCENARIOS if s.name == outcome.scenario)
        detail = outcome.verdict + ("".join(f"; {p}" for p in outcome.problems))
        injected_text = ", ".join(f"{n} {k}" for k, n in sorted(outcome.injected.items()))
        resumed = "" if outcome.resumed_epochs is None else str(outcome.resumed_epochs)
        lines.append(
            f"| {outcome.scenario} | {scenario.what} | {injected_text} | {detail} | {outcome.reason or ''} "
            f"| {resumed} | {'' if outcome.resumed_same_model is None else outcome.resumed_same_model} |"
        )
    lines += ["", "Failure messages, as the TransferJob's status shows them:", ""]
    lines += [f"- {o.scenario}: {o.reason}: {o.message}" for o in outcomes if o.reason]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Run every scenario and write docs/reliability.md; exit 1 if any run was lost."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kubegraft-reliability-") as root, workbench(Path(root)) as bench:
        outcomes = []
        for scenario in SCENARIOS:
            outcome = bench.run(scenario)
            print(
                f"{scenario.name}: {outcome.verdict} {dict(outcome.injected)} {outcome.problems}", flush=True
            )
            outcomes.append(outcome)
    # The operator's section (API faults and kills, bench/bench_chaos.py) is written by hand: kept.
    before = DOC.read_text() if DOC.exists() else ""
    kept = before[before.index(OPERATOR_SECTION) :] if OPERATOR_SECTION in before else ""
    DOC.write_text(_report(outcomes, time.monotonic() - started) + kept)
    print(f"wrote {DOC}")
    return 1 if any(o.verdict == "lost" for o in outcomes) else 0


if __name__ == "__main__":
    import kubegraft_trainer  # noqa: F401  # before TensorFlow, for libcurl

    sys.exit(main())
