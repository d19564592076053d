"""TrainerError exit codes, and the bounded LRU object cache on a real folder."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import pytest

from kubegraft.runtime import ExitCode, FailureReason
from kubegraft_trainer.cache import DiskCache
from kubegraft_trainer.errors import TrainerError


def test_trainer_error_exit_code_follows_retryable() -> None:
    invalid = TrainerError(FailureReason.DATASET_EMPTY, "no images")
    retry = TrainerError(FailureReason.TRAINING_ERROR, "storage unreachable", retryable=True)

    assert (invalid.reason, invalid.message, invalid.retryable) == ("DatasetEmpty", "no images", False)
    assert invalid.exit_code == ExitCode.INVALID
    assert retry.exit_code == ExitCode.RETRYABLE


def test_trainer_error_survives_pickling_with_its_flag() -> None:
    error = pickle.loads(pickle.dumps(TrainerError(FailureReason.TRAINING_ERROR, "x", retryable=True)))

    assert (error.reason, error.message, error.retryable) == (FailureReason.TRAINING_ERROR, "x", True)


def cache_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.obj"))


def test_cache_returns_what_was_put_and_counts_hits(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=1000)

    assert cache.get("a/b.png") is None
    assert cache.put("a/b.png", b"x" * 10)
    assert cache.get("a/b.png") == b"x" * 10
    assert (cache.hits, cache.misses) == (1, 1)


def test_cache_total_size_never_exceeds_its_bound(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=1000)

    for i in range(50):
        cache.put(f"k{i}", bytes([i]) * (90 + i))
        assert cache.size_bytes <= 1000
        assert sum(p.stat().st_size for p in cache_files(tmp_path)) == cache.size_bytes

    assert 0 < len(cache) < 50


def test_cache_evicts_least_recently_used_first(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=300)
    for key in ("a", "b", "c"):
        cache.put(key, b"." * 100)

    cache.get("a")  # a is now the most recently used
    cache.put("d", b"." * 100)

    assert cache.get("b") is None
    assert cache.get("a") == cache.get("c") == cache.get("d") == b"." * 100


def test_object_bigger_than_the_cache_is_not_stored(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=100)
    cache.put("small", b"s" * 60)

    assert not cache.put("huge", b"h" * 101)
    assert cache.get("small") == b"s" * 60
    assert cache.size_bytes == 60


def test_restarted_cache_adopts_entries_and_applies_a_smaller_bound(tmp_path: Path) -> None:
    first = DiskCache(tmp_path, max_bytes=1000)
    for i in range(5):
        first.put(f"k{i}", b"." * 100)

    again = DiskCache(tmp_path, max_bytes=250)

    assert again.size_bytes == 200
    assert len(cache_files(tmp_path)) == 2


def test_cache_stays_bounded_under_concurrent_puts(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=5000)

    def worker(start: int) -> None:
        for i in range(start, start + 100):
            cache.put(f"k{i}", b"." * 97)
            cache.get(f"k{i - 3}")

    threads = [threading.Thread(target=worker, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert cache.size_bytes <= 5000
    assert sum(p.stat().st_size for p in cache_files(tmp_path)) == cache.size_bytes


def test_negative_bound_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        DiskCache(tmp_path, max_bytes=-1)
