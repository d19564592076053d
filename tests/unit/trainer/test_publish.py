"""Versioned, atomic publishing to a local model repository, and what readers see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubegraft.spec import StorageSpec
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.export import COMPLETE_MARKER, complete_versions, next_version, publish
from kubegraft_trainer.predict import _resolve
from kubegraft_trainer.storage import LocalStorage


def _build(tmp_path: Path, name: str) -> Path:
    build = tmp_path / name
    (build / "variables").mkdir(parents=True)
    (build / "saved_model.pb").write_bytes(b"pb")
    (build / "variables" / "variables.index").write_bytes(b"ix")
    (build / "labels.txt").write_text("a\nb\n")
    return build


def test_versions_increment_and_each_is_complete_with_its_marker(tmp_path: Path) -> None:
    repo = LocalStorage(str(tmp_path / "models"))
    assert publish(_build(tmp_path, "b1"), repo, "run-a") == 1
    assert publish(_build(tmp_path, "b2"), repo, "run-b") == 2
    assert complete_versions(repo) == [1, 2]
    marker = json.loads((tmp_path / "models" / "2" / COMPLETE_MARKER).read_text())
    assert marker["runId"] == "run-b" and marker["version"] == 2
    assert (tmp_path / "models" / "2" / "variables" / "variables.index").read_bytes() == b"ix"
    assert not list((tmp_path / "models").glob(".staging-*"))


def test_incomplete_version_is_invisible_to_readers_and_its_number_not_reused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    repo = LocalStorage(str(root))
    publish(_build(tmp_path, "b1"), repo, "run-a")
    (root / "2").mkdir()
    (root / "2" / "saved_model.pb").write_bytes(b"half-written")  # a writer died before its marker
    assert complete_versions(repo) == [1]
    assert next_version(repo) == 3
    _, version = _resolve(str(root), StorageSpec(), None)
    assert version == 1
    with pytest.raises(TrainerError, match="not a complete"):
        _resolve(str(root / "2"), StorageSpec(), None)
    assert publish(_build(tmp_path, "b3"), repo, "run-c") == 3


def test_reading_an_empty_repository_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    with pytest.raises(TrainerError, match="no complete model version"):
        _resolve(str(tmp_path / "models"), StorageSpec(), None)
