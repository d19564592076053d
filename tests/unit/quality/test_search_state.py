"""A restarted search trusts only the search.json that a search of the same spec wrote."""

from __future__ import annotations

from pathlib import Path

from kubegraft.spec import StorageSpec
from kubegraft_trainer.checkpoints import CheckpointStore
from kubegraft_trainer.search import SEARCH_STATE, CandidateResult, _load_search, _save_search


def _store(tmp_path: Path, digest: str = "abc") -> CheckpointStore:
    return CheckpointStore(str(tmp_path / "models"), "run", StorageSpec(), digest)


def test_saved_candidates_and_time_come_back_for_the_same_spec(tmp_path: Path) -> None:
    result = CandidateResult("head", "head(0x30,adam 0.001)", "done", 0.5, 3.0, 7, 30, False, False)
    result.curve, result.notices = [0.3, 0.5], [("FineTuneRegressed", "rolled back")]
    _save_search(_store(tmp_path), [result], 12.5)

    finished, seconds = _load_search(_store(tmp_path))

    assert seconds == 12.5
    assert finished["head"]["result"] == result.to_dict()
    assert finished["head"]["curve"] == [0.3, 0.5]
    assert _load_search(_store(tmp_path, digest="other")) == ({}, 0.0)  # another spec's search


def test_unreadable_or_incomplete_search_state_starts_the_search_over(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.write_json(SEARCH_STATE, {"seconds": 3, "candidates": [{"result": {"name": "head"}}]})
    assert _load_search(store) == ({}, 0.0)

    store.storage.write_bytes(SEARCH_STATE, b"{not json")
    assert _load_search(_store(tmp_path)) == ({}, 0.0)
