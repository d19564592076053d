"""The publish gate end to end: a GitOps retrain with ``publishPolicy: ifBetter`` that is not better.

Run 1 (the fast linear classifier) publishes version 1. The spec is then edited, as a Git commit would: a
head trained for one epoch at a learning rate too small to learn anything, with ``ifBetter``. Run 2 scores
version 1 and itself on its own test split through their serving signatures, keeps its model back, and
ends Succeeded with no version 2, the reason in the ``Published`` condition, an Event, and its report with
both numbers in the work area beside the model repository.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import E2E
from tests.harness.watch import StatusRecorder

NAME = "gate-e2e"
RUN_TIMEOUT = 300.0
# A head trained one epoch at this rate stays near chance (0.20): it cannot beat the fitted linear model.
USELESS_RATE = 1e-7


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for condition in status.get("conditions", []):
        if condition["type"] == type_:
            return dict(condition)
    raise AssertionError(f"no {type_} condition in {status}")


def _keys(e2e: E2E, prefix: str) -> list[str]:
    pages = e2e.s3.client().get_paginator("list_objects_v2").paginate(Bucket=e2e.inputs.bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture(scope="module")
def second_run(e2e: E2E) -> Iterator[dict[str, Any]]:
    """Run 1 publishes; the edited spec's run 2 (ifBetter, a useless head) ends; yields run 2's status."""
    manifest = e2e.transferjob(NAME, augment=False)
    manifest["spec"]["classifier"] = "linear"
    manifest["spec"].pop("stages")
    with StatusRecorder(e2e.cluster.url, e2e.namespace, NAME) as recorder:
        e2e.cluster.apply(manifest)
        first = recorder.wait_until(
            lambda s: s.get("run") == 1 and s.get("phase") in ("Succeeded", "Failed"),
            RUN_TIMEOUT,
            "run 1 ends",
        )
        assert first["phase"] == "Succeeded", first
        assert first["modelUri"] == f"s3://{e2e.inputs.bucket}/models/{NAME}/1/"
        manifest["spec"]["classifier"] = "softmax"
        manifest["spec"]["stages"] = [
            {"name": "head", "trainable": 0, "epochs": 1, "learningRate": USELESS_RATE},
        ]
        manifest["spec"]["output"]["publishPolicy"] = "ifBetter"
        e2e.cluster.apply(manifest)
        yield recorder.wait_until(
            lambda s: s.get("run") == 2 and s.get("phase") in ("Succeeded", "Failed"),
            RUN_TIMEOUT,
            "run 2 ends",
        )
    e2e.cluster.delete("kubegraft.io/v1alpha1", "transferjobs", NAME, e2e.namespace)


def test_a_retrain_that_is_not_better_succeeds_without_a_new_version(
    second_run: dict[str, Any], e2e: E2E
) -> None:
    status = second_run
    assert status["phase"] == "Succeeded", status
    assert _condition(status, "Succeeded")["status"] == "True"
    assert _condition(status, "Ready")["status"] == "True"
    assert "modelUri" not in status
    published = _condition(status, "Published")
    assert (published["status"], published["reason"]) == ("False", "NotBetter"), published
    assert "does not beat version 1" in published["message"]
    assert "No version published" in _condition(status, "Succeeded")["message"]
    assert 0.0 <= status["metrics"]["published_test_accuracy"] <= 1.0

    served = _keys(
        e2e, f"models/{NAME}"
    )  # what KServe would copy for storageUri s3://<bucket>/models/gate-e2e
    assert {key.split("/")[2] for key in served} == {"1"}, served


def test_the_kept_back_run_posts_an_event_and_keeps_its_report_with_both_numbers(
    second_run: dict[str, Any], e2e: E2E
) -> None:
    events = [
        e
        for e in e2e.cluster.list("v1", "events", e2e.namespace)
        if e.get("involvedObject", {}).get("name") == NAME and e.get("reason") == "NotBetter"
    ]
    assert events, "no NotBetter Event"
    assert events[0]["type"] == "Normal"

    reports = [k for k in _keys(e2e, f"models/.kubegraft/{NAME}/reports/") if k.endswith("/metrics.json")]
    assert len(reports) == 1, reports
    body = e2e.s3.client().get_object(Bucket=e2e.inputs.bucket, Key=reports[0])["Body"].read()
    record = json.loads(body)["publish"]
    assert (record["policy"], record["published"], record["reason"]) == ("ifBetter", False, "NotBetter")
    compared = record["comparedWith"]
    assert compared["version"] == 1 and compared["images"] > 0
    assert compared["newAccuracy"] <= compared["publishedAccuracy"]
    assert not _keys(e2e, f"models/.kubegraft/{NAME}/checkpoints/")  # the finished run's checkpoints are gone
