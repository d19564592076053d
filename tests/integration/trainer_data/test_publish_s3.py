"""Publishing to a real SeaweedFS: only versions in the served base path; a crash never leaves the top one.

A model server given ``<output.uri>`` as its base path (TF Serving; KServe's storage initializer, which copies
every key that *starts with* the URI's key) must find nothing there but complete versions, however a pod
died while publishing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from kubegraft_trainer.repository import (
    COMPLETE_MARKER,
    STALE_SECONDS,
    complete_versions,
    publish,
    remove_incomplete,
    work_storage,
)
from kubegraft_trainer.storage import S3Storage, Storage, open_storage
from tests.harness.s3 import SeaweedFS

pytestmark = pytest.mark.usefixtures("s3_env")


class CrashError(Exception):
    """The pod dies here (SIGKILL: nothing after this line runs)."""


def _build(tmp_path: Path, name: str) -> Path:
    build = tmp_path / name
    (build / "variables").mkdir(parents=True)
    (build / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights" * 1000)
    (build / "variables" / "variables.index").write_bytes(b"index")
    (build / "saved_model.pb").write_bytes(b"graph")
    (build / "fingerprint.pb").write_bytes(b"fp")
    (build / "labels.txt").write_text("a\nb\n")
    (build / "metrics.json").write_text("{}")
    return build


def _repo(s3_server: SeaweedFS, bucket: str) -> tuple[Storage, Storage]:
    uri = f"s3://{bucket}/models/cars/"
    spec = s3_server.storage_spec()
    return open_storage(uri, spec), work_storage(uri, spec)


def _served(s3_server: SeaweedFS, bucket: str) -> list[str]:
    """What KServe's storage initializer copies for storageUri s3://<bucket>/models/cars (a string prefix)."""
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="models/cars")
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def _crash_after(monkeypatch: pytest.MonkeyPatch, method: str, calls: int) -> None:
    original = getattr(S3Storage, method)
    count = {"n": 0}

    def dying(self: S3Storage, *args: Any) -> None:
        count["n"] += 1
        if count["n"] > calls:
            raise CrashError(method)
        original(self, *args)

    monkeypatch.setattr(S3Storage, method, dying)


def test_the_base_path_holds_only_complete_versions_and_the_work_area_is_cleaned(
    s3_server: SeaweedFS, s3_bucket: str, tmp_path: Path
) -> None:
    output, work = _repo(s3_server, s3_bucket)
    assert publish(_build(tmp_path, "b1"), output, work, "run-1") == 1
    assert publish(_build(tmp_path, "b2"), output, work, "run-2") == 2

    served = _served(s3_server, s3_bucket)
    assert {key.split("/")[2] for key in served} == {"1", "2"}, served
    assert f"models/cars/2/{COMPLETE_MARKER}" in served
    assert json.loads(output.read_bytes(f"2/{COMPLETE_MARKER}"))["runId"] == "run-2"
    assert list(work.list("")) == []  # staging and claims deleted after the marker


def test_a_crash_while_uploading_leaves_the_base_path_untouched(
    s3_server: SeaweedFS, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output, work = _repo(s3_server, s3_bucket)
    publish(_build(tmp_path, "b1"), output, work, "run-1")
    before = _served(s3_server, s3_bucket)
    with monkeypatch.context() as patch:
        _crash_after(patch, "upload_file", 2)  # the big upload goes to the work area's staging first
        with pytest.raises(CrashError):
            publish(_build(tmp_path, "b2"), output, work, "run-2")
    assert _served(s3_server, s3_bucket) == before


def test_a_crash_mid_copy_is_deleted_by_the_retry_which_publishes_that_number_complete(
    s3_server: SeaweedFS, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output, work = _repo(s3_server, s3_bucket)
    publish(_build(tmp_path, "b1"), output, work, "run-1")
    with monkeypatch.context() as patch:
        _crash_after(patch, "copy_from", 3)  # variables and one more file copied, saved_model.pb not
        with pytest.raises(CrashError):
            publish(_build(tmp_path, "b2"), output, work, "run-2")
    partial = [key for key in _served(s3_server, s3_bucket) if key.startswith("models/cars/2/")]
    assert "models/cars/2/variables/variables.index" in partial
    assert "models/cars/2/saved_model.pb" not in partial  # copied last: the partial folder does not load
    assert complete_versions(output) == [1]

    assert publish(tmp_path / "b2", output, work, "run-2") == 2  # the Job's retry of the same run

    served = _served(s3_server, s3_bucket)
    assert complete_versions(output) == [1, 2]
    assert {key.split("/")[2] for key in served} == {"1", "2"}
    assert f"models/cars/2/{COMPLETE_MARKER}" in served and "models/cars/2/saved_model.pb" in served


def test_another_runs_incomplete_version_is_kept_while_fresh_and_deleted_once_stale(
    s3_server: SeaweedFS, s3_bucket: str, tmp_path: Path
) -> None:
    output, work = _repo(s3_server, s3_bucket)
    publish(_build(tmp_path, "b1"), output, work, "run-1")
    output.write_bytes("2/variables/variables.index", b"another pod is copying")

    assert remove_incomplete(output, work, "run-3") == []
    assert publish(_build(tmp_path, "b3"), output, work, "run-3") == 3  # 2 is taken while it may finish

    later = time.time() + STALE_SECONDS + 1
    assert remove_incomplete(output, work, "run-4", now=later) == [2]
    assert complete_versions(output) == [1, 3]
    assert not list(output.list("2/"))
