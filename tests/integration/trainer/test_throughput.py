"""The images counter grows during an epoch of a real fit on pixels, so rate() over it is smooth."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import keras
import pytest

from kubegraft_trainer import progress
from kubegraft_trainer.progress import ProgressTracker
from kubegraft_trainer.run import train
from tests.integration.trainer.conftest import SpecFactory, stage


class _ImagesAtBatchEnds(keras.callbacks.Callback):  # type: ignore[misc]
    """Records the tracker's imagesTrained and images counter after every training step of stage ``name``."""

    def __init__(self, tracker: ProgressTracker, name: str) -> None:
        super().__init__()
        self.tracker, self.name = tracker, name
        self.seen: list[tuple[int, int, float]] = []  # (epoch, imagesTrained, kubegraft_train_images_total)
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.tracker.snapshot().stage != self.name:
            return
        text = self.tracker.metrics_text().decode()
        total = next(line for line in text.splitlines() if line.startswith("kubegraft_train_images_total "))
        self.seen.append((self._epoch, self.tracker.snapshot().images_trained, float(total.split()[1])))


def test_images_counter_advances_within_an_epoch_of_a_pixel_fine_tune(
    tiny_backbone: Path, transfer_images: Path, make_spec: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "BATCH_REPORT_SECONDS", 0.0)  # count at every step: no timing in the test
    spec = make_spec(transfer_images, tiny_backbone, [stage("full", "all", 2, batchSize=16)])
    tracker = ProgressTracker(out=io.StringIO())
    seen = _ImagesAtBatchEnds(tracker, "full")
    result = train(spec, run_id="throughput", tracker=tracker, extra_callbacks=[seen])

    (record,) = result.records
    assert (record.cached_features, record.frozen_prefix) == (False, None)  # Keras' fit on pixels
    first = [(trained, total) for epoch, trained, total in seen.seen if epoch == 0]
    assert len(first) >= 3, seen.seen  # a few steps of 16 images
    trained = [t for t, _ in first]
    assert trained == sorted(trained) and len(set(trained)) == len(trained)  # grows at every step
    assert trained[0] == 16
    assert all(t == c for t, c in first)  # the Prometheus counter and /progress agree
    epoch_images = tracker.snapshot().images.train  # every epoch trains on the whole training split
    assert tracker.snapshot().images_trained == 2 * epoch_images
    assert trained[-1] == epoch_images  # the epoch's last step reached its image count, none counted twice
    assert next(t for epoch, t, _ in seen.seen if epoch == 1) == epoch_images + 16
