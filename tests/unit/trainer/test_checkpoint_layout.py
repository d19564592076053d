"""Where checkpoints live: the work area beside the output, or the earlier layout's folder to resume from."""

from __future__ import annotations

from pathlib import Path

from kubegraft.spec import StorageSpec
from kubegraft_trainer.checkpoints import CheckpointStore, RunState
from kubegraft_trainer.repository import work_uri


def test_checkpoints_go_to_the_work_area_outside_the_served_base_path(tmp_path: Path) -> None:
    output = str(tmp_path / "models" / "cars")
    store = CheckpointStore(output, "run-1", StorageSpec(), "digest")
    store.storage.write_bytes("state.json", RunState("digest").to_json().encode())
    assert store.uri == f"{work_uri(output)}/checkpoints/run-1"
    assert not (tmp_path / "models" / "cars").exists()
    child = store.child("search-a", "other")
    assert child.uri == f"{work_uri(output)}/checkpoints/run-1/search-a"


def test_a_run_checkpointed_in_the_earlier_layout_resumes_from_there(tmp_path: Path) -> None:
    output = tmp_path / "models" / "cars"
    legacy = output / "checkpoints" / "run-1"
    legacy.mkdir(parents=True)
    (legacy / "state.json").write_text(RunState("digest", finished=[{"name": "head"}]).to_json())

    store = CheckpointStore(str(output), "run-1", StorageSpec(), "digest")
    state = store.load()

    assert state is not None and state.finished == [{"name": "head"}]
    assert store.uri == str(legacy)
    assert store.child("search-a", "d").uri == str(legacy / "search-a")
    store.delete()
    assert not (output / "checkpoints").exists()


def test_a_new_run_ignores_the_earlier_layout_of_other_runs(tmp_path: Path) -> None:
    output = tmp_path / "models" / "cars"
    (output / "checkpoints" / "old-run").mkdir(parents=True)
    (output / "checkpoints" / "old-run" / "state.json").write_text(RunState("digest").to_json())
    store = CheckpointStore(str(output), "run-2", StorageSpec(), "digest")
    assert store.uri == f"{work_uri(str(output))}/checkpoints/run-2"
