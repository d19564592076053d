"""The trainer against a misbehaving S3: retryable faults end with the same model, the others fail cleanly.

Real runs (`tests.harness.reliability`: a tiny backbone, 120 images, two stages of two epochs) read their data
set, backbone and checkpoints and publish through `FaultProxy` before the session's SeaweedFS. The fault-free
run at the same seed is the reference every run's weights are compared with.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kubegraft.runtime import FailureReason
from kubegraft.spec import StorageSpec
from kubegraft_trainer.storage import S3Storage
from tests.harness.reliability import SCENARIOS, Scenario, Workbench, workbench
from tests.harness.s3 import SeaweedFS
from tests.harness.s3_fault_proxy import Fault, FaultProxy

_GET, _PUT = frozenset({"GET"}), frozenset({"PUT"})


@pytest.fixture(scope="module")
def bench(s3_server: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workbench]:
    with workbench(tmp_path_factory.mktemp("reliability"), s3_server) as bench:
        yield bench


def _scenario(name: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name == name)


def test_throttling_resets_cut_bodies_and_slow_answers_on_reads_and_writes_end_with_the_fault_free_model(
    bench: Workbench,
) -> None:
    mixed = Scenario(
        "mixed",
        "every retryable class at once",
        lambda _: [
            Fault("slowdown", methods=_GET, path=r"/data/", start=2, every=9, times=6),
            Fault("truncate", methods=_GET, path=r"/data/", start=5, every=9, times=6),
            Fault("reset", methods=_GET, path=r"list-type", times=1),
            Fault("truncate", methods=_GET, path=r"/bb/", times=1),
            Fault("reset", methods=_PUT, path=r"/checkpoints/", start=1, every=3, times=3),
            Fault("slowdown", methods=_PUT, header="x-amz-copy-source", start=1, every=3, times=2),
            Fault("slow", methods=_PUT, header="x-amz-copy-source", times=1, delay=0.3),
        ],
    )

    outcome = bench.run(mixed)

    assert outcome.verdict == "finished", outcome.problems
    assert outcome.injected == {"slowdown": 8, "truncate": 7, "reset": 4, "slow": 1}


def test_expired_credentials_mid_training_fail_as_access_denied_and_the_rerun_resumes_from_the_checkpoint(
    bench: Workbench,
) -> None:
    outcome = bench.run(_scenario("expired"))

    assert outcome.verdict == "failed cleanly", outcome.problems
    assert outcome.reason == FailureReason.STORAGE_ACCESS_DENIED
    assert "ExpiredToken" in outcome.message
    assert outcome.resumed_epochs is not None and 0 < outcome.resumed_epochs < 4


def test_a_bucket_deleted_mid_run_fails_as_output_not_writable_naming_the_bucket(bench: Workbench) -> None:
    outcome = bench.run(_scenario("bucket-deleted"))

    assert outcome.verdict == "failed cleanly", outcome.problems
    assert outcome.reason == FailureReason.OUTPUT_NOT_WRITABLE
    assert "does not exist" in outcome.message


def test_throttled_fast_reads_are_retried_by_boto3_and_do_not_turn_the_fast_path_off(
    s3_server: SeaweedFS, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    keys = [f"{i}.png" for i in range(30)]
    client = s3_server.client()
    for key in keys:
        client.put_object(Bucket=s3_bucket, Key=f"t/{key}", Body=key.encode())
    # Every other GET answers 503 SlowDown: each key's fast GET, then boto3's call gets through.
    with FaultProxy(s3_server.endpoint, [Fault("slowdown", methods=_GET, every=2, times=30)]) as proxy:
        spec = StorageSpec.model_validate({"endpoint": proxy.endpoint, "addressingStyle": "path"})
        storage = S3Storage(f"s3://{s3_bucket}/t", spec, batched_get=False)

        assert [storage.read_bytes(key) for key in keys] == [key.encode() for key in keys]

    assert proxy.injected["slowdown"] == 30
    assert storage._http is not None  # throttling says nothing against the fast path: it stays on
