"""Per-epoch checkpoints in the output's work area, so a restarted pod resumes its run.

They live in ``<work area>/checkpoints/<run id>/`` (`repository.work_uri`: ``<parent>/.kubegraft/<name>/``
beside ``output.uri``, never inside the served base path). A run that finds no checkpoint there but one in
the earlier layout's ``<output.uri>/checkpoints/<run id>/`` resumes from that one and keeps writing there.

`kubegraft_trainer.stages` saves after every epoch (`EpochCheckpoint`, a Keras callback) and after every
finished stage (`CheckpointStore.finish_stage`); `kubegraft_trainer.run` deletes the folder after a successful
publish. What is stored:

- ``state.json``: the run's spec hash, the finished stages with their histories, and for the current stage
  the finished epochs, its history, the early-stopping state and the names of the files below. It is written
  last, so it always names complete files;
- ``model-s<i>.weights.npz``: the full model's weights (``model.get_weights()`` order) after finished stage
  ``i``;
- ``stage-s<i>-e<e>.weights.npz``, ``.optimizer.npz`` and ``.best.npz``: what the stage trains (the head alone
  for cached-feature stages, else the full model), its optimizer's variables and the early-stopping best
  weights, after epoch ``e``.

Weights are plain NumPy archives of the variables in the model's own order (the model is rebuilt from the same
spec on resume): writing one takes milliseconds, where Keras' ``.weights.h5`` took about half a second for a
MobileNetV2, inside the stage's time. Checkpoints written as ``.weights.h5`` by earlier versions still load.

A checkpoint written by a different spec (its hash differs) is ignored and the run starts over.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kubegraft.runtime import FailureReason
from kubegraft.spec import StorageSpec, TransferJobSpec
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.repository import CHECKPOINTS, work_uri
from kubegraft_trainer.storage import LocalStorage, Storage, open_storage
from kubegraft_trainer.termination import shielded

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
LEGACY_CHECKPOINTS_DIR = "checkpoints"  # <output.uri>/checkpoints/: the layout before the work area


def spec_hash(spec: TransferJobSpec) -> str:
    """A short stable hash of everything in the spec that shapes training (not scheduling or resources)."""
    relevant = spec.model_dump(
        mode="json", by_alias=True, include={"dataset", "model", "stages", "classifier", "augmentation"}
    )
    relevant["resolvedStages"] = [s.model_dump(mode="json", by_alias=True) for s in spec.resolved_stages()]
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def default_run_id(spec: TransferJobSpec) -> str:
    """The run id of a local run: ``local-<spec hash>`` (in pods the operator sets KUBEGRAFT_RUN_ID)."""
    return f"local-{spec_hash(spec)}"


@dataclass
class StageCheckpoint:
    """Where the current stage stood after its last finished epoch."""

    index: int
    epochs_done: int
    history: dict[str, list[float]]
    early_stopping: dict[str, Any]
    weights: str
    optimizer: str
    best: str | None
    cached_features: bool
    frozen_prefix: str | None = None  # the cut of a fine-tune trained on cached prefix activations


@dataclass
class RunState:
    """What a restarted run needs to continue."""

    spec_hash: str
    finished: list[dict[str, Any]] = field(default_factory=list)
    model_weights: str | None = None
    stage: StageCheckpoint | None = None

    def to_json(self) -> str:
        """Serialise to JSON."""
        stage = None
        if self.stage is not None:
            stage = self.stage.__dict__
        return json.dumps(
            {
                "specHash": self.spec_hash,
                "finished": self.finished,
                "modelWeights": self.model_weights,
                "stage": stage,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> RunState:
        """Parse what `to_json` wrote."""
        data = json.loads(text)
        stage = StageCheckpoint(**data["stage"]) if data.get("stage") else None
        return cls(data["specHash"], list(data.get("finished", [])), data.get("modelWeights"), stage)


def _arrays_to_bytes(arrays: list[np.ndarray[Any, Any]]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    return buffer.getvalue()


def _bytes_to_arrays(data: bytes) -> list[np.ndarray[Any, Any]]:
    with np.load(io.BytesIO(data)) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]


def optimizer_arrays(optimizer: keras.optimizers.Optimizer) -> list[np.ndarray[Any, Any]]:
    """The optimizer's variables (iterations, moments, ...) as arrays."""
    return [np.asarray(v.numpy()) for v in optimizer.variables]


def restore_optimizer(model: keras.Model, arrays: list[np.ndarray[Any, Any]]) -> bool:
    """Build the compiled model's optimizer for its trainable variables and load saved variables into it.

    Returns:
        Whether the saved variables matched (in number and shapes) and were loaded.
    """
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    variables = list(optimizer.variables)
    if len(variables) != len(arrays) or any(
        tuple(v.shape) != a.shape for v, a in zip(variables, arrays, strict=True)
    ):
        log.warning("optimizer checkpoint does not match the model; optimizer state starts fresh")
        return False
    for variable, value in zip(variables, arrays, strict=True):
        variable.assign(value)
    return True


class CheckpointStore:
    """The checkpoint folder of one run, on object storage or disk.

    Args:
        output_uri: The spec's output.uri.
        run_id: The run's id (KUBEGRAFT_RUN_ID or `default_run_id`).
        storage: S3 settings.
        spec_digest: `spec_hash` of the run's spec.
        writable: False for a worker other than the chief of several: it resumes from the run's checkpoint
            like the chief, but what it saves goes to its own scratch folder (the chief's copy is the run's).
        base_uri: The folder holding run folders; default the work area's ``checkpoints/`` (or the earlier
            layout's ``<output.uri>/checkpoints/`` when only it holds this run's state).
    """

    def __init__(
        self,
        output_uri: str,
        run_id: str,
        storage: StorageSpec,
        spec_digest: str,
        *,
        writable: bool = True,
        base_uri: str | None = None,
    ) -> None:
        self.run_id = run_id
        self.spec_digest = spec_digest
        self.writable = writable
        self._output_uri, self._storage_spec = output_uri, storage
        self._base = base_uri or _base_uri(output_uri, run_id, storage)
        base = open_storage(self._base, storage, not_found_reason=FailureReason.OUTPUT_NOT_WRITABLE)
        self.uri = base.join(run_id)
        self.storage: Storage = open_storage(
            self.uri, storage, not_found_reason=FailureReason.OUTPUT_NOT_WRITABLE
        )
        self._scratch = Path(tempfile.mkdtemp(prefix="kubegraft-ckpt-"))
        # Where saves go: the run's folder, or this worker's scratch.
        self._writes: Storage = self.storage if writable else LocalStorage(str(self._scratch / "saved"))
        self.state = RunState(spec_digest)

    def load(self) -> RunState | None:
        """Read the saved state of this run, if any written by the same spec.

        Returns:
            The state, or None to start from scratch.
        """
        if not self.storage.exists(STATE_FILE):
            return None
        try:
            state = RunState.from_json(self.storage.read_bytes(STATE_FILE).decode())
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable checkpoint state at %s: %s", self.uri, exc)
            return None
        if state.spec_hash != self.spec_digest:
            log.warning("checkpoint at %s was written by a different spec; starting over", self.uri)
            return None
        self.state = state
        return state

    def _fetch(self, name: str) -> Path:
        local = self._scratch / name
        self.storage.download_file(name, local)
        return local

    def load_weights(self, model: keras.Model, name: str) -> None:
        """Load a weights file of this checkpoint into ``model`` (``.npz`` arrays or a Keras ``.h5``)."""
        if name.endswith(".npz"):
            model.set_weights(self.load_arrays(name))
            return
        model.load_weights(self._fetch(name))

    def load_arrays(self, name: str) -> list[np.ndarray[Any, Any]]:
        """Read a saved list of arrays (optimizer variables, best weights)."""
        return _bytes_to_arrays(self.storage.read_bytes(name))

    def _put_weights(self, model: keras.Model, name: str) -> None:
        self._writes.write_bytes(name, _arrays_to_bytes(model.get_weights()))

    def _write_state(self, stale: list[str]) -> None:
        self._writes.write_bytes(STATE_FILE, self.state.to_json().encode())
        for name in stale:
            if name:
                self._writes.delete_prefix(name)

    @shielded()  # a SIGTERM during the save is raised after it: the retry resumes from this epoch
    def save_epoch(
        self,
        *,
        index: int,
        epochs_done: int,
        trained: keras.Model,
        history: dict[str, list[float]],
        early_stopping: dict[str, Any],
        best_weights: list[np.ndarray[Any, Any]] | None,
        cached_features: bool,
        frozen_prefix: str | None = None,
    ) -> None:
        """Save the current stage after a finished epoch (files first, then the state naming them).

        Args:
            index: Stage index.
            epochs_done: Epochs finished in the stage.
            trained: The model the stage trains (head or full model), compiled.
            history: The stage's per-epoch metrics so far.
            early_stopping: Serialisable early-stopping state.
            best_weights: Early stopping's best weights so far, if any.
            cached_features: Whether the stage trains the head on cached features.
            frozen_prefix: The cut, when the stage trains the model's suffix on cached prefix activations
                (``trained`` is then that suffix).
        """
        stem = f"stage-s{index}-e{epochs_done}"
        weights, optimizer = f"{stem}.weights.npz", f"{stem}.optimizer.npz"
        self._put_weights(trained, weights)
        self._writes.write_bytes(optimizer, _arrays_to_bytes(optimizer_arrays(trained.optimizer)))
        best = None
        if best_weights is not None:
            best = f"{stem}.best.npz"
            self._writes.write_bytes(best, _arrays_to_bytes(best_weights))
        previous = self.state.stage
        self.state.stage = StageCheckpoint(
            index,
            epochs_done,
            history,
            early_stopping,
            weights,
            optimizer,
            best,
            cached_features,
            frozen_prefix=frozen_prefix,
        )
        stale = [previous.weights, previous.optimizer, previous.best or ""] if previous else []
        self._write_state([s for s in stale if s not in (weights, optimizer, best)])

    def finish_stage(self, index: int, model: keras.Model, record: dict[str, Any]) -> None:
        """Record a finished stage with the full model's weights; drops the stage's epoch files.

        Args:
            index: Stage index.
            model: The full model after the stage.
            record: The stage's summary (name, history, timings) as written to metrics.json.
        """
        with shielded():
            self._finish_stage(index, model, record)

    def _finish_stage(self, index: int, model: keras.Model, record: dict[str, Any]) -> None:
        name = f"model-s{index}.weights.npz"
        self._put_weights(model, name)
        previous_model = self.state.model_weights
        previous_stage = self.state.stage
        self.state.finished.append(record)
        self.state.model_weights = name
        self.state.stage = None
        stale = [previous_model or ""]
        if previous_stage is not None:
            stale += [previous_stage.weights, previous_stage.optimizer, previous_stage.best or ""]
        self._write_state(stale)

    def child(self, name: str, spec_digest: str) -> CheckpointStore:
        """A store inside this run's folder (``<run id>/<name>/``) for a part of the run with its own spec.

        `delete` of this store deletes the children too. The strategy auto search keeps one per candidate.
        """
        return CheckpointStore(
            self._output_uri,
            f"{self.run_id}/{name}",
            self._storage_spec,
            spec_digest,
            writable=self.writable,
            base_uri=self._base,
        )

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON object saved with `write_json` by a run of the same spec, or None."""
        if not self.storage.exists(name):
            return None
        try:
            data = json.loads(self.storage.read_bytes(name).decode())
        except ValueError as exc:
            log.warning("ignoring unreadable %s at %s: %s", name, self.uri, exc)
            return None
        if not isinstance(data, dict) or data.get("specHash") != self.spec_digest:
            return None
        return data

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        """Save a JSON object next to the checkpoint, stamped with the spec's hash."""
        self._writes.write_bytes(name, json.dumps({**data, "specHash": self.spec_digest}, indent=1).encode())

    def delete(self) -> None:
        """Delete the whole checkpoint folder (after a successful publish); a non-chief only its scratch."""
        if not self.writable:
            shutil.rmtree(self._scratch, ignore_errors=True)
            return
        try:
            self.storage.delete_prefix("")
        except TrainerError as exc:
            log.warning("could not delete checkpoints at %s: %s", self.uri, exc.message)
        if isinstance(self.storage, LocalStorage):  # folders are not objects: drop the empty ones too
            for folder in (self.storage.root, *self.storage.root.parents[:3]):
                with contextlib.suppress(OSError):
                    folder.rmdir()
        shutil.rmtree(self._scratch, ignore_errors=True)


def _base_uri(output_uri: str, run_id: str, storage: StorageSpec) -> str:
    """The work area's ``checkpoints/``, unless only the earlier layout's folder holds this run's state."""
    current = f"{work_uri(output_uri)}/{CHECKPOINTS}"
    legacy = open_storage(output_uri, storage, not_found_reason=FailureReason.OUTPUT_NOT_WRITABLE)
    legacy_key = f"{LEGACY_CHECKPOINTS_DIR}/{run_id}/{STATE_FILE}"
    work = open_storage(current, storage, not_found_reason=FailureReason.OUTPUT_NOT_WRITABLE)
    if not work.exists(f"{run_id}/{STATE_FILE}") and legacy.exists(legacy_key):
        log.info(
            "resuming from the checkpoint at %s (earlier layout)", legacy.join(LEGACY_CHECKPOINTS_DIR, run_id)
        )
        return legacy.join(LEGACY_CHECKPOINTS_DIR)
    return current
