"""Versioned, atomic publishing to a local model repository, its work area, and what readers see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubegraft.spec import StorageSpec
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.predict import _resolve
from kubegraft_trainer.repository import (
    COMPLETE_MARKER,
    STALE_SECONDS,
    complete_versions,
    copy_order,
    next_version,
    publish,
    published_by,
    remove_incomplete,
    work_uri,
)
from kubegraft_trainer.storage import LocalStorage


def _build(tmp_path: Path, name: str) -> Path:
    build = tmp_path / name
    (build / "variables").mkdir(parents=True)
    (build / "saved_model.pb").write_bytes(b"pb")
    (build / "variables" / "variables.index").write_bytes(b"ix")
    (build / "labels.txt").write_text("a\nb\n")
    return build


def _repo(tmp_path: Path) -> tuple[LocalStorage, LocalStorage]:
    output = str(tmp_path / "models" / "cars")
    return LocalStorage(output), LocalStorage(work_uri(output))


def test_versions_increment_and_each_is_complete_with_its_marker(tmp_path: Path) -> None:
    repo, work = _repo(tmp_path)
    assert publish(_build(tmp_path, "b1"), repo, work, "run-a") == 1
    assert publish(_build(tmp_path, "b2"), repo, work, "run-b") == 2
    assert complete_versions(repo) == [1, 2]
    marker = json.loads((repo.root / "2" / COMPLETE_MARKER).read_text())
    assert marker["runId"] == "run-b" and marker["version"] == 2
    assert (repo.root / "2" / "variables" / "variables.index").read_bytes() == b"ix"


def test_the_served_base_path_holds_only_version_folders(tmp_path: Path) -> None:
    repo, work = _repo(tmp_path)
    publish(_build(tmp_path, "b1"), repo, work, "run-a")
    assert sorted(p.name for p in repo.root.iterdir()) == ["1"]
    assert not (work.root / "staging" / "run-a").exists()


@pytest.mark.parametrize(
    ("output", "work"),
    [
        ("s3://b/models/cars/", "s3://b/models/.kubegraft/cars"),
        ("s3://b/models/cars", "s3://b/models/.kubegraft/cars"),
        ("s3://b/cars", "s3://b/.kubegraft/cars"),
        ("s3://b", "s3://b/.kubegraft"),
        ("s3://b/", "s3://b/.kubegraft"),
        ("file:///data/models/", "file:///data/.kubegraft/models"),
        ("file:///models", "file:///.kubegraft/models"),
        ("/mnt/models", "/mnt/.kubegraft/models"),
        ("models", ".kubegraft/models"),
    ],
)
def test_work_area_is_beside_the_output_and_never_starts_with_its_key(output: str, work: str) -> None:
    assert work_uri(output) == work
    if output.rstrip("/").count("/") > 2:  # a prefix, not a bucket root: KServe copies key-prefix matches
        assert not work.startswith(output.rstrip("/"))


def test_copy_order_puts_variables_first_and_saved_model_pb_after_every_other_file() -> None:
    keys = [
        "saved_model.pb",
        "labels.txt",
        "variables/variables.index",
        "metrics.json",
        "_COMPLETE",
        "fingerprint.pb",
        "variables/variables.data-00000-of-00001",
    ]
    order = copy_order(keys)
    assert order[:2] == ["variables/variables.data-00000-of-00001", "variables/variables.index"]
    assert order[-1] == "saved_model.pb"
    assert COMPLETE_MARKER not in order and len(order) == len(keys) - 1


def _half_version(root: Path, number: int, age: float = 0.0) -> None:
    import os
    import time

    (root / str(number) / "variables").mkdir(parents=True)
    path = root / str(number) / "variables" / "variables.index"
    path.write_bytes(b"half")
    when = time.time() - age
    os.utime(path, (when, when))


def test_this_runs_crashed_copy_is_deleted_before_it_picks_a_number(tmp_path: Path) -> None:
    repo, work = _repo(tmp_path)
    publish(_build(tmp_path, "b1"), repo, work, "run-a")
    _half_version(repo.root, 2)
    work.write_bytes("publishing/run-b.json", json.dumps({"version": 2, "runId": "run-b"}).encode())
    assert remove_incomplete(repo, work, "run-b") == [2]
    assert publish(_build(tmp_path, "b2"), repo, work, "run-b") == 2
    assert complete_versions(repo) == [1, 2]


def test_another_writers_fresh_copy_is_kept_and_its_number_skipped_but_a_stale_one_is_deleted(
    tmp_path: Path,
) -> None:
    repo, work = _repo(tmp_path)
    _half_version(repo.root, 1, age=STALE_SECONDS + 60)  # crashed long ago
    _half_version(repo.root, 2)  # another run copying right now
    assert remove_incomplete(repo, work, "run-c") == [1]
    assert next_version(repo) == 3


def test_incomplete_version_is_invisible_to_readers_and_its_fresh_number_not_reused(tmp_path: Path) -> None:
    repo, work = _repo(tmp_path)
    root = repo.root
    publish(_build(tmp_path, "b1"), repo, work, "run-a")
    (root / "2").mkdir()
    (root / "2" / "saved_model.pb").write_bytes(b"half-written")  # a writer is copying, marker not yet there
    assert complete_versions(repo) == [1]
    assert next_version(repo) == 3
    _, version = _resolve(str(root), StorageSpec(), None)
    assert version == 1
    with pytest.raises(TrainerError, match="not a complete"):
        _resolve(str(root / "2"), StorageSpec(), None)
    assert publish(_build(tmp_path, "b3"), repo, work, "run-c") == 3


def test_reading_an_empty_repository_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    with pytest.raises(TrainerError, match="no complete model version"):
        _resolve(str(tmp_path / "models"), StorageSpec(), None)


def test_the_version_a_run_published_is_found_by_its_run_id_for_a_retried_pod(tmp_path: Path) -> None:
    repo, work = _repo(tmp_path)
    publish(_build(tmp_path, "b1"), repo, work, "run-a")
    publish(_build(tmp_path, "b2"), repo, work, "run-b")
    assert published_by(repo, "run-a") == 1
    assert published_by(repo, "run-b") == 2
    assert published_by(repo, "run-c") is None
