"""TensorBoard event files of a run: one TensorBoard run per stage and per search candidate's stage.

`kubegraft_trainer.run` opens a `TensorBoardLog` on ``<work area>/tensorboard/<run id>/`` (the chief only,
unless ``output.tensorboard`` is false); `kubegraft_trainer.stages` writes each epoch's scalars
(`EPOCH_TAGS`) into the run folder of its step (``<stage>/``, with strategy auto
``search-<candidate>/<stage>/``) through `TensorBoardCallback`, and `run` writes the final test metrics into
``test_metrics/``. The step of an epoch's scalars is its 1-based epoch number in the stage, as in
metrics.json's history (``history[tag][step - 1]``).

Events are written with ``tf.summary`` (scalar summaries, the format TensorBoard's scalars dashboard reads).
On a local output the event files are written in place; on S3 they are written to a scratch folder and each
is uploaded whole (one PUT) at most every `UPLOAD_SECONDS` at an epoch's end, and always when a fit ends.

A retried pod (same run id) appends: it writes a new event file beside the earlier attempt's. Epochs are
written after their checkpoint, so the earlier files hold no epoch the retry trains again; epochs that were
checkpointed but not yet uploaded when the pod died are written again from the checkpoint's history
(`RunWriter.backfill`, which reads the steps already stored and writes only the missing ones), so every
epoch appears once. A fresh run (no checkpoint under its id) starts from an empty folder
(`TensorBoardLog.reset`: a local rerun of the same spec has the same id). Storage failures here never fail a
run: they are logged.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kubegraft.runtime import FailureReason
from kubegraft.spec import StorageSpec
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.storage import LocalStorage, Storage, open_storage

__all__ = [
    "EPOCH_TAGS",
    "EVENT_FILE_MARK",
    "TEST_RUN",
    "UPLOAD_SECONDS",
    "RunWriter",
    "TensorBoardCallback",
    "TensorBoardLog",
    "epoch_scalars",
]

log = logging.getLogger(__name__)

# Scalars of every epoch: Keras' logs as metrics.json's history holds them, the optimizer's learning rate,
# and training images per second (the epoch's wall time, as the progress line reports it).
EPOCH_TAGS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "images_per_second")
TEST_RUN = "test_metrics"  # the run folder of the final test metrics (no stage name has an underscore)
EVENT_FILE_MARK = ".tfevents."  # in every event file's name (events.out.tfevents.<time>.<host>...)
UPLOAD_SECONDS = 10.0  # on S3: the longest an epoch's scalars wait for their upload while a fit runs


def epoch_scalars(
    logs: Mapping[str, Any],
    *,
    learning_rate: float | None = None,
    images: int | None = None,
    seconds: float | None = None,
) -> dict[str, float]:
    """The scalars of one epoch: the finite `EPOCH_TAGS` found in ``logs``, the learning rate, images/s.

    Args:
        logs: Keras epoch logs (or one epoch of metrics.json's history).
        learning_rate: The optimizer's learning rate in that epoch.
        images: Training images the epoch processed.
        seconds: The epoch's wall time.
    """
    values = {tag: float(logs[tag]) for tag in EPOCH_TAGS if tag in logs}
    if learning_rate is not None:
        values["learning_rate"] = float(learning_rate)
    if images and seconds:
        values["images_per_second"] = images / seconds
    return {tag: value for tag, value in values.items() if math.isfinite(value)}


class RunWriter:
    """One TensorBoard run folder (a stage): its event file of this attempt, and the steps stored before.

    Made by `TensorBoardLog.run`.

    Args:
        storage: The run's TensorBoard folder (``<work area>/tensorboard/<run id>``).
        name: The folder of this TensorBoard run inside it (e.g. ``finetune``, ``search-head/head``).
        local_dir: Where this attempt's event file is written (in the storage itself when it is local).
        upload_seconds: On S3, the longest written scalars wait for their upload (`maybe_upload`).
    """

    def __init__(self, storage: Storage, name: str, local_dir: Path, upload_seconds: float) -> None:
        self.storage = storage
        self.name = name
        self.local_dir = local_dir
        self.upload_seconds = upload_seconds
        self._writer: Any = None
        self._stored: set[int] | None = None  # steps the folder held when this attempt first looked
        self._uploaded = time.monotonic()
        self._dirty = False

    @property
    def in_place(self) -> bool:
        """Whether the event file is written straight into the storage (a local output)."""
        return isinstance(self.storage, LocalStorage)

    def _file_writer(self) -> Any:
        if self._writer is None:
            self.local_dir.mkdir(parents=True, exist_ok=True)
            self._writer = tf.summary.create_file_writer(str(self.local_dir))
        return self._writer

    def stored_steps(self) -> set[int]:
        """Steps with a scalar in the event files stored before this attempt wrote, and those it wrote."""
        if self._stored is None:
            self._stored = self._read_stored_steps()
        return self._stored

    def _read_stored_steps(self) -> set[int]:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        steps: set[int] = set()
        prefix = f"{self.name}/"
        try:
            keys = [
                info.key
                for info in self.storage.list(prefix)
                if EVENT_FILE_MARK in info.key and "/" not in info.key[len(prefix) :]
            ]
        except TrainerError as exc:
            log.warning("cannot list the TensorBoard events of %s: %s", self.name, exc.message)
            return steps
        with tempfile.TemporaryDirectory(prefix="kubegraft-tb-read-") as tmp:
            for number, key in enumerate(keys):
                if self.in_place:
                    path = self.local_dir / key[len(prefix) :]
                else:
                    path = Path(tmp) / f"{number}{EVENT_FILE_MARK}"
                    try:
                        self.storage.download_file(key, path)
                    except TrainerError as exc:
                        log.warning("cannot read %s: %s", self.storage.join(key), exc.message)
                        continue
                # The loader stops quietly at a record cut short (a file uploaded mid-write).
                for event in EventFileLoader(str(path)).Load():
                    if event.summary.value:
                        steps.add(int(event.step))
        return steps

    def write(self, step: int, values: Mapping[str, float]) -> None:
        """Write scalars ``values`` at ``step`` into this attempt's event file (flushed to disk)."""
        if not values:
            return
        self.stored_steps().add(step)  # read before the first write: what the earlier attempts left
        writer = self._file_writer()
        with writer.as_default():
            for tag, value in values.items():
                tf.summary.scalar(tag, value, step=step)
        writer.flush()
        self._dirty = True

    def write_missing(self, step: int, values: Mapping[str, float]) -> bool:
        """Write ``values`` at ``step`` unless it is stored already (by any attempt); whether it wrote."""
        if not values or step in self.stored_steps():
            return False
        self.write(step, values)
        return True

    def backfill(
        self,
        history: Mapping[str, Sequence[float]],
        *,
        learning_rate: float | None = None,
        images: int | None = None,
        epoch_seconds: Sequence[float] = (),
    ) -> int:
        """Write the epochs of a restored history (a checkpoint's) that no stored event file holds.

        Args:
            history: Per-metric lists, one value per epoch (metrics.json's stage history).
            learning_rate: The stage's learning rate.
            images: Training images per epoch (with ``epoch_seconds``: images per second).
            epoch_seconds: Wall time of each epoch, where known (a finished stage's record).

        Returns:
            The number of epochs written.
        """
        epochs = max((len(v) for v in history.values()), default=0)
        written = 0
        for index in range(epochs):
            logs = {tag: values[index] for tag, values in history.items() if index < len(values)}
            seconds = epoch_seconds[index] if index < len(epoch_seconds) else None
            values = epoch_scalars(logs, learning_rate=learning_rate, images=images, seconds=seconds)
            written += self.write_missing(index + 1, values)
        if written:
            log.info("TensorBoard run %s: %d restored epoch(s) written again", self.name, written)
        return written

    def maybe_upload(self) -> None:
        """Upload the event file if its last upload is `UPLOAD_SECONDS` old (S3; a local file is in place)."""
        if time.monotonic() - self._uploaded >= self.upload_seconds:
            self.upload()

    def upload(self) -> None:
        """Upload this attempt's event file as it is now (on S3: one PUT of the whole file)."""
        self._uploaded = time.monotonic()
        if self.in_place or not self._dirty:
            return
        for path in sorted(self.local_dir.glob(f"*{EVENT_FILE_MARK}*")):
            try:
                self.storage.write_bytes(f"{self.name}/{path.name}", path.read_bytes())
            except (TrainerError, OSError) as exc:
                message = exc.message if isinstance(exc, TrainerError) else str(exc)
                log.warning("TensorBoard events of %s not uploaded: %s", self.name, message)
                return
        self._dirty = False

    def close(self) -> None:
        """Close the event file and upload it."""
        if self._writer is not None:
            self._writer.close()
        self.upload()


class TensorBoardLog:
    """The TensorBoard folder of one run: a run folder per stage, written as the run goes.

    Args:
        uri: The run's folder, ``<work area>/tensorboard/<run id>`` (`repository.tensorboard_uri`).
        storage: S3 settings.
        upload_seconds: On S3, the longest an epoch's scalars wait for their upload.
        prefix: Folder of this log's runs inside ``uri`` (`child`).
    """

    def __init__(
        self, uri: str, storage: StorageSpec, *, upload_seconds: float = UPLOAD_SECONDS, prefix: str = ""
    ) -> None:
        self.storage = open_storage(uri, storage, not_found_reason=FailureReason.OUTPUT_NOT_WRITABLE)
        self.uri = self.storage.join("")
        self.upload_seconds = upload_seconds
        self.prefix = prefix
        local = isinstance(self.storage, LocalStorage)
        self._scratch = None if local else Path(tempfile.mkdtemp(prefix="kubegraft-tb-"))
        self._writers: dict[str, RunWriter] = {}

    def child(self, name: str) -> TensorBoardLog:
        """The same log with its runs in the folder ``name`` (a search candidate's: ``search-<name>``)."""
        view = TensorBoardLog.__new__(TensorBoardLog)
        view.__dict__.update(self.__dict__)
        view.prefix = f"{self.prefix}{name}/"
        return view

    def run(self, name: str) -> RunWriter:
        """The writer of TensorBoard run ``name`` (a stage's name) in this log's folder."""
        key = f"{self.prefix}{name}"
        if key not in self._writers:
            root = self.storage.root if isinstance(self.storage, LocalStorage) else self._scratch
            assert root is not None
            self._writers[key] = RunWriter(self.storage, key, root / key, self.upload_seconds)
        return self._writers[key]

    def reset(self) -> None:
        """Delete what an earlier run of the same id left (a fresh run of an id that finished before)."""
        try:
            if any(True for _ in self.storage.list(self.prefix)):
                log.info("TensorBoard: a fresh run replaces the events at %s", self.storage.join(self.prefix))
                self.storage.delete_prefix(self.prefix)
        except TrainerError as exc:
            log.warning("cannot clear the TensorBoard events at %s: %s", self.uri, exc.message)

    def close(self) -> None:
        """Close every event file and upload what is not uploaded yet."""
        for writer in self._writers.values():
            writer.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


class TensorBoardCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """After every epoch (and its checkpoint): the epoch's scalars into the stage's TensorBoard run.

    Goes after `stages.EpochCheckpoint` and `progress.ProgressCallback` (whose epoch times give images/s)
    in the callback list.

    Args:
        writer: The stage's run.
        images: Training images per epoch.
        epoch_seconds: The progress callback's list of epoch wall times (read at each epoch's end).
    """

    def __init__(self, writer: RunWriter, images: int, epoch_seconds: Sequence[float]) -> None:
        super().__init__()
        self.writer = writer
        self.images = images
        self.epoch_seconds = epoch_seconds

    def _learning_rate(self) -> float | None:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return None
        return float(np.asarray(keras.ops.convert_to_numpy(optimizer.learning_rate)))

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Write epoch ``epoch`` (0-based, as Keras passes it) at step ``epoch + 1``."""
        seconds = self.epoch_seconds[-1] if self.epoch_seconds else None
        values = epoch_scalars(
            logs or {}, learning_rate=self._learning_rate(), images=self.images, seconds=seconds
        )
        self.writer.write(epoch + 1, values)
        self.writer.maybe_upload()

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        """Upload what the fit wrote."""
        self.writer.upload()
