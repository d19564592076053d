"""The training schedule: the linear classifier fit (optional) and the stages, in order, resumable per epoch.

`kubegraft_trainer.run` builds a `StageRunner` and calls `run_all`. For each stage it sets the trainable
backbone layers (`model.set_trainable`), recompiles with the stage's optimizer and trains with per-stage early
stopping (best weights restored) and a checkpoint after every epoch (`checkpoints`).

Frozen work is not repeated: a stage that trains only the head (``trainable: 0``) without augmentation runs
the backbone once per training and validation image (`FeatureCache`) and trains the head on those bottleneck
features; the head is shared with the full model, so the full model holds the result without a copy. The
features stay valid until a stage changes the backbone. With augmentation on, every epoch sees different
pixels, so head stages run the full model (augmentation -> backbone -> head) each epoch.

The bottleneck path is lean: one `tf.function` with a fixed input signature runs the extractor over every
split in memory (no retracing on the last partial batch), the head trains in one compiled function per epoch
over the in-memory feature arrays (`HeadLoop`, the same Keras callbacks as ``model.fit``), and the test
split's features are extracted in the same pass when no later stage changes the backbone, so `predict_split`
reuses them (a fingerprint of the backbone's weights guards against stale features).

Guard-rail: when a stage's best validation accuracy ends below the best the model held before it, the
previous weights are put back, the record says so (``regressed``, ``restored``) and the tracker gets a
`NoticeReason.FINE_TUNE_REGRESSED` notice. An optional ``after_stage`` hook sees every finished step's
record.

``classifier: linear`` fits a multinomial logistic regression (scikit-learn) on the cached features, choosing
its regularisation on the validation split, and writes its coefficients into the head's Dense softmax layer.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf

from kubegraft.logs import console
from kubegraft.runtime import NoticeReason
from kubegraft.spec import EarlyStopping, Stage, TransferJobSpec
from kubegraft_trainer.checkpoints import CheckpointStore, RunState, StageCheckpoint, restore_optimizer
from kubegraft_trainer.devices import (
    build_from_one_replica,
    eval_batch_size,
    feed_every_replica,
    per_replica_batch,
)
from kubegraft_trainer.head_loop import EVAL_CHUNK, HeadLoop, epoch_batches
from kubegraft_trainer.inference import (
    extract_arrays,
    extract_features,
    extraction_batch,
    run_inference,
    run_inference_many,
    warm_while,
)
from kubegraft_trainer.model import (
    FrozenPrefix,
    TransferModel,
    compile_for_stage,
    frozen_prefix,
    set_trainable,
)
from kubegraft_trainer.multiworker import distributable, is_multi_worker
from kubegraft_trainer.progress import ProgressCallback, ProgressTracker
from kubegraft_trainer.sources import DEFAULT_MEMORY_BUDGET
from kubegraft_trainer.tensorboard_log import RunWriter, TensorBoardCallback, TensorBoardLog

log = logging.getLogger(__name__)

LINEAR_STEP = "linear"
_LINEAR_C_GRID = (0.01, 0.1, 1.0, 10.0)

# Training (and optionally validation) arrays: cached features or prefix activations, with labels.
_Split = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
_Arrays = tuple[_Split, _Split | None]


class ImageSource(Protocol):
    """Where a split's images come from: batches of (raw RGB float32 pixels 0..255, int32 labels)."""

    def images(self, split: str, batch_size: int, *, shuffle: bool, seed: int) -> tf.data.Dataset:
        """A dataset of one pass over ``split`` (train, validation or test)."""
        ...

    def count(self, split: str) -> int:
        """Images in ``split``."""
        ...


@dataclass
class StageRecord:
    """What one step (a stage or the linear fit) did, as written to metrics.json."""

    name: str
    trainable: int | str
    cached_features: bool
    epochs_run: int
    max_epochs: int
    history: dict[str, list[float]]
    best_epoch: int | None
    seconds: float
    feature_seconds: float = 0.0
    images_per_second: float | None = None
    resumed_at_epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
    best_val_accuracy: float | None = None
    regressed: bool = False
    frozen_prefix: str | None = None
    restored: str | None = None
    global_batch_size: int | None = None  # batchSize: examples per optimizer step over all replicas
    per_replica_batch_size: int | None = None  # what each replica computes per step (global / replicas)


def weights_fingerprint(model: keras.Model) -> str:
    """A digest of every weight of ``model`` (trainable or not, BatchNormalization statistics included)."""
    digest = hashlib.blake2b(digest_size=16)
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


# Feature caches by the full model they were computed for, so `predict_split` can find valid test features.
_CACHES: weakref.WeakValueDictionary[int, FeatureCache] = weakref.WeakValueDictionary()


class FeatureCache:
    """Bottleneck features of the splits, computed once while the backbone is unchanged.

    The cache remembers a fingerprint of the backbone's weights as they were when it extracted; when they
    differ (a stage trained the backbone, BatchNormalization statistics were re-estimated), cached features
    are stale and are recomputed on the next use. `invalidate` forgets them at once.

    Args:
        parts: The transfer model (its feature extractor).
        source: The images. A source with ``preload(splits)`` (`PipelineSource`) decodes the splits asked for
            in one pass; one with ``in_memory(split)`` serves them from memory without a pipeline.
        batch_size: Batch size of the extraction pass (default: `extraction_batch` of the extractor).
    """

    def __init__(self, parts: TransferModel, source: ImageSource, batch_size: int | None = None) -> None:
        self.parts = parts
        self.source = source
        self.batch_size = batch_size or extraction_batch(parts.features)
        self.seconds = 0.0
        self._cache: dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = {}
        self._fingerprint: str | None = None
        _CACHES[id(parts.model)] = self

    def _extract(self, splits: list[str]) -> None:
        """Features of ``splits``: those held in memory in one run of equal calls, the others streamed."""
        arrays = getattr(self.source, "in_memory", None)
        held = {split: arrays(split) for split in splits} if callable(arrays) else {}
        in_memory = {split: pair for split, pair in held.items() if pair is not None}
        features = run_inference_many(
            self.parts.features, [pixels for pixels, _ in in_memory.values()], self.batch_size
        )
        for (split, (_, labels)), outputs in zip(in_memory.items(), features, strict=True):
            self._cache[split] = (outputs, np.asarray(labels).astype("int32"))
        for split in splits:
            if split not in in_memory:
                dataset = self.source.images(split, self.batch_size, shuffle=False, seed=0)
                self._cache[split] = extract_features(self.parts.features, dataset)

    def is_valid(self) -> bool:
        """Whether the backbone still has the weights the cached features were computed with."""
        if not self._cache:
            return True
        return self._fingerprint == weights_fingerprint(self.parts.backbone)

    def cached(self, split: str) -> bool:
        """Whether valid features of ``split`` are at hand (nothing is computed)."""
        return split in self._cache and self.is_valid()

    def get_many(self, splits: Iterable[str], alongside: Callable[[], None] | None = None) -> None:
        """Compute the features of every split in ``splits`` not cached yet, in one pass.

        The extractor's trace (Python) runs first; its first call (graph optimisation in TensorFlow's own
        threads) overlaps the fetching and decoding; ``alongside`` (more Python, e.g. tracing the head's
        loop) overlaps the extraction, whose arithmetic releases the GIL. Run one after the other, or all at
        once, they held each other up: 1.3 s instead of 0.85 s for 2,000 small PNGs on two cores.

        Args:
            splits: Split names (train, validation, test).
            alongside: Work to run in another thread during the extraction (also when nothing is missing).
        """
        if not self.is_valid():
            self.invalidate()
        missing = [s for s in dict.fromkeys(splits) if s not in self._cache]
        started = time.monotonic()
        preload = getattr(self.source, "preload", None)
        if missing and callable(preload):
            warm_while(self.parts.features, lambda: preload(missing))  # every split asked for, in one pass
        with ThreadPoolExecutor(1, thread_name_prefix="kubegraft-trace") as pool:
            side = pool.submit(alongside) if alongside is not None else None
            if missing:
                self._extract(missing)
                # After the pass: a layer that counts or tracks what flows through it has settled.
                self._fingerprint = weights_fingerprint(self.parts.backbone)
                self.seconds += time.monotonic() - started
            if side is not None:
                side.result()

    def get(self, split: str, *, verify: bool = True) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Features and labels of ``split``, computing them on first use (or when they went stale).

        Args:
            split: The split.
            verify: Check that the backbone is unchanged (costs a pass over its weights); the stages skip it
                right after `get_many`.
        """
        if verify or split not in self._cache:
            self.get_many([split])
        return self._cache[split]

    def invalidate(self) -> None:
        """Forget the features (the backbone is about to change)."""
        self._cache.clear()
        self._fingerprint = None


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):  # type: ignore[misc]
    """Keras early stopping (best weights restored at the end) whose state survives a restart.

    Args:
        spec: The stage's early-stopping spec.
        monitor: The metric to watch (the spec's, or a training metric when there is no validation data).
        restored: State saved by `state` before the restart, if any.
        best_weights: Best weights saved before the restart, if any.
    """

    def __init__(
        self,
        spec: EarlyStopping,
        monitor: str,
        restored: dict[str, Any] | None = None,
        best_weights: list[np.ndarray[Any, Any]] | None = None,
    ) -> None:
        super().__init__(
            monitor=monitor,
            patience=spec.patience,
            min_delta=spec.min_delta,
            mode="max" if "accuracy" in monitor else "min",
            restore_best_weights=True,
        )
        self._restored = restored or {}
        self._restored_weights = best_weights

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Reset, then apply the state saved before a restart."""
        super().on_train_begin(logs)
        if self._restored:
            self.wait = int(self._restored.get("wait", 0))
            self.best = self._restored.get("best")
            self.best_epoch = int(self._restored.get("best_epoch", 0))
            self.best_weights = self._restored_weights

    def state(self) -> dict[str, Any]:
        """The serialisable state (wait, best, best epoch, whether it stopped)."""
        best = None if self.best is None else float(self.best)
        return {
            "wait": int(self.wait),
            "best": best,
            "best_epoch": int(self.best_epoch),
            "stopped": self.stopped,
        }

    @property
    def stopped(self) -> bool:
        """Whether it stopped training."""
        return bool(self.stopped_epoch > 0)


class EpochCheckpoint(keras.callbacks.Callback):  # type: ignore[misc]
    """After every epoch: append to the stage history and checkpoint (after early stopping has updated).

    Args:
        store: The run's checkpoint store.
        index: Step index.
        history: The stage's history so far (extended in place).
        early_stopping: The stage's early stopping callback, or None.
        cached_features: Whether the stage trains the head on cached features.
        frozen_prefix: The cut, when the stage trains the suffix on cached prefix activations.
    """

    def __init__(
        self,
        store: CheckpointStore,
        index: int,
        history: dict[str, list[float]],
        early_stopping: ResumableEarlyStopping | None,
        *,
        cached_features: bool,
        frozen_prefix: str | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.index = index
        self.history = history
        self.early_stopping = early_stopping
        self.cached_features = cached_features
        self.frozen_prefix = frozen_prefix

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Record and save epoch ``epoch`` (0-based)."""
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        es = self.early_stopping
        self.store.save_epoch(
            index=self.index,
            epochs_done=epoch + 1,
            trained=self.model,
            history=self.history,
            early_stopping=es.state() if es is not None else {},
            best_weights=es.best_weights if es is not None else None,
            cached_features=self.cached_features,
            frozen_prefix=self.frozen_prefix,
        )


def monitor_for(spec: EarlyStopping, has_validation: bool) -> str:
    """The metric early stopping watches: the spec's, or its training counterpart without validation data."""
    if has_validation:
        return spec.monitor
    return spec.monitor.removeprefix("val_")


def fit_linear_classifier(
    train: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
    validation: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
    num_classes: int,
    seed: int,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], dict[str, Any]]:
    """Fit a multinomial logistic regression on standardised features; fold the scaling into its weights.

    The inverse regularisation strength C is chosen from a small grid by validation accuracy (training
    accuracy when there is no validation data).

    Args:
        train: Training features [N, D] and labels [N].
        validation: Validation features and labels (may be empty).
        num_classes: Number of classes (columns of the result even if a class has no training image).
        seed: Seed of the solver.

    Returns:
        The kernel [D, C] and bias [C] of a Dense softmax layer that reproduces the classifier on raw
        features, and a record (chosen C, accuracies).
    """
    from sklearn.linear_model import LogisticRegression

    x, y = train
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    xs = (x - mean) / scale
    vx, vy = validation
    vxs = (vx - mean) / scale if len(vx) else vx
    best: tuple[float, float, Any] | None = None
    scores: dict[str, float] = {}
    for c in _LINEAR_C_GRID:
        clf = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(xs, y)
        score = float(clf.score(vxs, vy)) if len(vx) else float(clf.score(xs, y))
        scores[str(c)] = score
        if best is None or score > best[0]:
            best = (score, c, clf)
    assert best is not None
    _, chosen, clf = best
    coef = np.zeros((num_classes, x.shape[1]), dtype="float64")
    intercept = np.full((num_classes,), -1e4, dtype="float64")  # classes absent from training: never chosen
    present = clf.classes_.astype(int)
    if len(present) == 2:  # scikit-learn stores one row for two classes: logits (0, w.x + b)
        coef[present[1]] = clf.coef_[0]
        intercept[present[1]] = clf.intercept_[0]
        intercept[present[0]] = 0.0
    else:
        coef[present] = clf.coef_
        intercept[present] = clf.intercept_
    kernel = (coef / scale).T
    bias = intercept - (coef * (mean / scale)).sum(axis=1)
    record = {"C": chosen, "validation_accuracy_by_C": scores, "train_accuracy": float(clf.score(xs, y))}
    return kernel.astype("float32"), bias.astype("float32"), record


class StageRunner:
    """Runs the linear fit (if asked) and the stages of one spec, resuming from a checkpoint.

    Args:
        parts: The transfer model.
        spec: The TransferJob spec.
        source: The images.
        store: The run's checkpoint store.
        tracker: Progress reporting.
        strategy: The distribution strategy models were built under.
        verbose: Keras fit verbosity (1 shows a progress bar; head stages on cached features print one line
            per epoch instead).
        extra_callbacks: More Keras callbacks for every fit (tests use this to interrupt a run).
        after_stage: Called with each step's record once it finished (after the guard-rail, before the next
            step starts); it may change the model's weights.
        restore_on_regression: The guard-rail: put back the previous weights when a stage's best validation
            accuracy ends below the best before it.
        tensorboard: Where each step's epochs go as a TensorBoard run of the step's name (None: nowhere).
    """

    def __init__(
        self,
        parts: TransferModel,
        spec: TransferJobSpec,
        source: ImageSource,
        *,
        store: CheckpointStore,
        tracker: ProgressTracker,
        strategy: tf.distribute.Strategy,
        verbose: int = 0,
        extra_callbacks: Sequence[keras.callbacks.Callback] = (),
        after_stage: Callable[[StageRecord], None] | None = None,
        restore_on_regression: bool = True,
        tensorboard: TensorBoardLog | None = None,
    ) -> None:
        self.parts = parts
        self.spec = spec
        self.source = source
        self.store = store
        self.tracker = tracker
        self.strategy = strategy
        self.verbose = verbose
        self.extra_callbacks = list(extra_callbacks)
        self.after_stage = after_stage
        self.restore_on_regression = restore_on_regression
        self.tensorboard = tensorboard
        self.stages = spec.resolved_stages()
        self.linear = spec.classifier == "linear"
        self.features = FeatureCache(parts, source)
        self.records: list[StageRecord] = []
        # Validation accuracy of the weights the model now holds, and the step that produced them.
        self._best: tuple[float, str] | None = None
        self._loop: HeadLoop | None = None  # the current cached stage's head loop, traced ahead

    @property
    def step_names(self) -> list[str]:
        """Names of the steps in order: ``linear`` first with the linear classifier, then the stages."""
        return ([LINEAR_STEP] if self.linear else []) + [s.name for s in self.stages]

    def uses_cached_features(self, stage: Stage) -> bool:
        """Whether ``stage`` trains the head on cached bottleneck features."""
        return not stage.trains_backbone and not self.spec.augmentation.enabled

    def run_all(self) -> list[StageRecord]:
        """Run every step not finished before, in order.

        Returns:
            The records of all steps, those restored from the checkpoint included.
        """
        state = self.store.load()
        records: list[StageRecord] = []
        if state is not None and state.finished:
            records = [StageRecord(**r) for r in state.finished]
            if state.model_weights:
                self.store.load_weights(self.parts.model, state.model_weights)
            log.info("resuming run %s after %d finished step(s)", self.store.run_id, len(records))
        finished_epochs = sum(r.epochs_run for r in records)
        total = finished_epochs + sum(
            s.epochs for s in self.stages[max(len(records) - int(self.linear), 0) :]
        )
        self.tracker.set_plan(self.step_names, total, self.recipe())
        self.tracker.update(completed_epochs=finished_epochs)
        offset = int(self.linear)
        for record in records:
            self._note_best(record)
        if self.linear and not records:
            records.append(self._finish(self._run_linear()))
        for i, stage in enumerate(self.stages):
            index = i + offset
            if index < len(records):
                continue
            stage_state = (
                state.stage if state is not None and state.stage and state.stage.index == index else None
            )
            records.append(self._finish(self._run_stage(index, stage, state if stage_state else None)))
        self.records = records
        return records

    def _note_best(self, record: StageRecord) -> None:
        """Remember the validation accuracy the weights reach after ``record`` (unless rolled back)."""
        if record.regressed:
            return
        best = record.best_val_accuracy
        if best is None and record.history.get("val_accuracy"):
            best = float(np.nanmax(record.history["val_accuracy"]))
        if best is not None and np.isfinite(best):
            self._best = (float(best), record.name)

    def _board(self, name: str) -> RunWriter | None:
        """The TensorBoard run of step ``name``, if the runner writes TensorBoard events."""
        return self.tensorboard.run(name) if self.tensorboard is not None else None

    def _finish(self, record: StageRecord) -> StageRecord:
        """After a step: its epochs no TensorBoard file holds yet, the best so far, the ``after_stage`` hook.

        A step restored as finished from a checkpoint, or the linear fit, is written to TensorBoard here;
        a stage that trained now wrote its epochs as they ended (this writes none of them again).
        """
        board = self._board(record.name)
        if board is not None:
            rates = {s.name: s.learning_rate for s in self.stages}
            board.backfill(
                record.history, learning_rate=rates.get(record.name), epoch_seconds=record.epoch_seconds
            )
            board.upload()
        self._note_best(record)
        if self.after_stage is not None:
            self.after_stage(record)
        return record

    def _guard(self, record: StageRecord, previous: list[np.ndarray[Any, Any]] | None) -> None:
        """The guard-rail: roll back a stage whose best validation accuracy fell below the best before it."""
        if not self.restore_on_regression or previous is None or self._best is None:
            return
        best = record.best_val_accuracy
        before, name = self._best
        if best is None or best >= before:
            return
        self.parts.model.set_weights(previous)
        record.regressed = True
        record.restored = name
        message = (
            f"Stage {record.name} reached a best validation accuracy of {best:.4f}, below {before:.4f} "
            f"after {name}; the weights after {name} were restored."
        )
        log.warning("%s", message)
        console(f"[{record.name}] regressed: {message}", stage=record.name)
        self.tracker.add_notice(NoticeReason.FINE_TUNE_REGRESSED, message)

    def recipe(self) -> str:
        """The schedule in short form, e.g. ``MobileNetV2 head(0x10,adam 0.001) -> finetune(50x10,sgd 1e-4)``.

        Augmentation, when on, follows as ``+ augment(horizontalFlip,rotation 30)``.

        Returns:
            One line naming the backbone, each step and the augmentation.
        """
        steps = ["linear"] if self.linear else []
        steps += [
            f"{s.name}({s.trainable}x{s.epochs},{s.optimizer} {s.learning_rate:g})" for s in self.stages
        ]
        line = f"{self.spec.model.backbone} " + " -> ".join(steps)
        augmentation = self.spec.augmentation.model_dump(by_alias=True)
        on = [k if v is True else f"{k} {v:g}" for k, v in augmentation.items() if v]
        return line + (f" + augment({','.join(on)})" if on else "")

    def _run_linear(self) -> StageRecord:
        started = time.monotonic()
        self.tracker.start_stage(0, LINEAR_STEP, 0, 0)
        set_trainable(self.parts, 0)
        train = self.features.get("train")
        validation = self.features.get("validation")
        kernel, bias, record = fit_linear_classifier(
            train, validation, int(self.parts.head.output.shape[-1]), self.spec.dataset.seed
        )
        self.parts.head.get_layer("probabilities").set_weights([kernel, bias])
        # Not predict_on_batch: under several replicas Keras 3 returns every replica's copy of the batch.
        probs = (
            run_inference(self.parts.head, validation[0], EVAL_CHUNK)
            if len(validation[0])
            else np.zeros((0, 1))
        )
        val_acc = (
            float((probs.argmax(axis=1) == validation[1]).mean()) if len(validation[0]) else float("nan")
        )
        history = {"val_accuracy": [val_acc], "accuracy": [record["train_accuracy"]]}
        seconds = time.monotonic() - started
        out = StageRecord(
            LINEAR_STEP, 0, True, 0, 0, history, None, seconds, self.features.seconds, None, 0, record
        )
        out.best_val_accuracy = val_acc if np.isfinite(val_acc) else None
        self.store.finish_stage(0, self.parts.model, asdict(out))
        self.tracker.add_metrics({"val_accuracy": val_acc})
        console(f"[linear] C={record['C']} val_accuracy={val_acc:.4f} {seconds:.1f}s", stage="linear")
        return out

    def _resume(
        self,
        trained: keras.Model,
        checkpoint: StageCheckpoint | None,
        cached: bool,
        cut: str | None,
        name: str,
    ) -> tuple[int, dict[str, list[float]], dict[str, Any] | None, list[np.ndarray[Any, Any]] | None]:
        """Load a stage checkpoint into ``trained``: (epochs done, history, early stopping, best weights).

        A checkpoint of a differently trained model (head, suffix at another cut, full model) is ignored:
        the stage starts over.
        """
        if checkpoint is None or checkpoint.cached_features != cached or checkpoint.frozen_prefix != cut:
            return 0, {}, None, None
        # Optimizer first: Keras weight files hold the optimizer's variables too, and load only into a built
        # optimizer of the same shape. Its variables are created here, so under the run's strategy (a
        # MirroredStrategy or the multi-worker one refuses them outside its scope).
        with self.strategy.scope():
            restore_optimizer(trained, self.store.load_arrays(checkpoint.optimizer))
        self.store.load_weights(trained, checkpoint.weights)
        best = self.store.load_arrays(checkpoint.best) if checkpoint.best else None
        log.info("stage %s resumes after epoch %d", name, checkpoint.epochs_done)
        return checkpoint.epochs_done, dict(checkpoint.history), checkpoint.early_stopping, best

    def _fit(
        self,
        trained: keras.Model,
        stage: Stage,
        index: int,
        *,
        arrays: _Arrays | None,
        initial_epoch: int,
        callbacks: list[keras.callbacks.Callback],
        has_validation: bool,
    ) -> None:
        """Train ``trained`` on ``arrays`` (cached features or prefix activations), else on the pixels.

        ``batchSize`` is the global batch: with several replicas (or workers) Keras splits each batch
        across them. On arrays one replica trains with `HeadLoop`, several with ``model.fit`` on the same
        batches in the same order (`epoch_batches`), so the replica count changes only how each step's
        arithmetic is spread. A batch too small to give every replica an example is computed whole by each
        (`feed_every_replica`), and evaluation batches are sized so that none is (`eval_batch_size`).
        """
        batch = stage.batch_size
        seed = self.spec.dataset.seed + index
        replicas = self.strategy.num_replicas_in_sync
        build_from_one_replica(trained, self.strategy)
        if arrays is not None and replicas == 1:
            train, validation = arrays
            (self._loop or HeadLoop(trained, batch)).fit(
                train,
                epochs=stage.epochs,
                initial_epoch=initial_epoch,
                validation=validation,
                callbacks=callbacks,
                seed=seed,
            )
            return
        if arrays is not None:
            # Several replicas, in this pod or over several workers: Keras' loop splits each of the head
            # loop's batches across them (every worker reads the same batches and keeps its share).
            train, validation = arrays
            batches, steps = epoch_batches(
                train[0], train[1], batch, seed=seed, epochs=range(initial_epoch, stage.epochs)
            )
            validation_batches = None
            if validation is not None:
                size = eval_batch_size(len(validation[0]), batch, replicas)
                validation_batches = tf.data.Dataset.from_tensor_slices(validation).batch(size)
            trained.fit(
                self._distributable(batches),
                steps_per_epoch=steps,
                epochs=stage.epochs,
                initial_epoch=initial_epoch,
                validation_data=self._distributable(validation_batches),
                shuffle=False,  # the batches come in epoch_order
                callbacks=callbacks,
                verbose=self.verbose,
            )
            return
        with warnings.catch_warnings():
            # The pipeline's length is unknown until a pass ends (unreadable images are dropped), so Keras
            # warns at the end of every epoch that the input "ran out of data": expected here.
            warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
            train_images = self.source.images("train", batch, shuffle=True, seed=seed)
            validation_images = None
            if has_validation:
                size = eval_batch_size(self.source.count("validation"), batch, replicas)
                validation_images = self.source.images("validation", size, shuffle=False, seed=0)
            trained.fit(
                self._distributable(train_images),
                epochs=stage.epochs,
                initial_epoch=initial_epoch,
                validation_data=self._distributable(validation_images),
                shuffle=False,  # the pipeline reshuffles every epoch itself
                callbacks=callbacks,
                verbose=self.verbose,
            )

    def _distributable(self, dataset: tf.data.Dataset | None) -> tf.data.Dataset | None:
        """``dataset`` as the strategy needs it: every batch feeds every replica, and with several workers
        each keeps its share of the same sequence (`distributable`). Unchanged with one replica."""
        if dataset is None or self.strategy.num_replicas_in_sync == 1:
            return dataset
        dataset = feed_every_replica(dataset, self.strategy.num_replicas_in_sync)
        return distributable(dataset) if is_multi_worker(self.strategy) else dataset

    def _prefix_activations(self, stage: Stage, has_validation: bool) -> tuple[FrozenPrefix, _Arrays] | None:
        """For a fine-tune without augmentation: the frozen prefix and its output for train and validation.

        None when the model has no exact cut (`model.frozen_prefix`) or the activations would not fit the
        source's memory budget; the stage then trains the full model on pixels.
        """
        if self.spec.augmentation.enabled or not stage.trains_backbone:
            return None
        split = frozen_prefix(self.parts)
        if split is None:
            return None
        splits = ["train", "validation"] if has_validation else ["train"]
        per_image = 4 * int(np.prod(split.prefix.output.shape[1:]))
        budget = int(getattr(self.source, "memory_budget_bytes", DEFAULT_MEMORY_BUDGET))
        if per_image * sum(self.source.count(s) for s in splits) > budget:
            log.info("stage %s: prefix activations over the memory budget; training on pixels", stage.name)
            return None
        preload = getattr(self.source, "preload", None)
        warm_while(split.prefix, lambda: preload(splits) if callable(preload) else None)
        batch = extraction_batch(split.prefix)
        in_memory = getattr(self.source, "in_memory", None)
        held = [in_memory(name) if callable(in_memory) else None for name in splits]
        if all(pair is not None for pair in held):
            pairs = [pair for pair in held if pair is not None]
            outputs = run_inference_many(split.prefix, [pixels for pixels, _ in pairs], batch)
            labels = [np.asarray(labels).astype("int32") for _, labels in pairs]
            out = list(zip(outputs, labels, strict=True))
        else:
            datasets = [self.source.images(name, batch, shuffle=False, seed=0) for name in splits]
            out = [extract_features(split.prefix, dataset) for dataset in datasets]
        return split, (out[0], out[1] if has_validation else None)

    def _feature_splits(self, index: int) -> list[str]:
        """Splits to extract for a cached stage: train, validation, and test when no later stage changes
        the backbone (the final evaluation then reuses them)."""
        later = self.stages[index - int(self.linear) + 1 :]
        splits = ["train", "validation"]
        if not any(s.trains_backbone for s in later):
            splits.append("test")
        return [s for s in splits if self.source.count(s) > 0]

    def _stage_inputs(
        self, index: int, stage: Stage, cached: bool, has_validation: bool
    ) -> tuple[keras.Model, _Arrays | None, str | None, float]:
        """What the stage trains and on what: (model, arrays or None for pixels, cut, prefix seconds).

        The head on cached features, the suffix on prefix activations, or the full model on the pixels;
        compiled for the stage, its head loop made when it trains on arrays with one replica.
        """
        arrays: _Arrays | None = None
        cut: str | None = None
        prefix_seconds = 0.0
        trained = self.parts.head if cached else self.parts.model
        if not cached:
            extracting = time.monotonic()
            prefix = self._prefix_activations(stage, has_validation)
            if prefix is not None:
                split, arrays = prefix
                trained, cut = split.suffix, split.cut
                prefix_seconds = time.monotonic() - extracting
        with self.strategy.scope():
            compile_for_stage(trained, stage)
        self._loop = None
        if cached:
            if self.strategy.num_replicas_in_sync == 1:
                self._loop = HeadLoop(trained, stage.batch_size)
                # The head's loop is traced (Python) while the backbone extracts (TensorFlow's threads).
                self.features.get_many(self._feature_splits(index), alongside=self._loop.trace)
            else:
                self.features.get_many(self._feature_splits(index))
            train = self.features.get("train", verify=False)
            validation = self.features.get("validation", verify=False) if has_validation else None
            arrays = (train, validation)
        elif arrays is not None and self.strategy.num_replicas_in_sync == 1:
            self._loop = HeadLoop(trained, stage.batch_size)
        return trained, arrays, cut, prefix_seconds

    def _run_stage(self, index: int, stage: Stage, state: RunState | None) -> StageRecord:
        started = time.monotonic()
        cached = self.uses_cached_features(stage)
        if stage.trains_backbone:
            self.features.invalidate()
        with self.strategy.scope():
            set_trainable(self.parts, stage.trainable)
        features_before = self.features.seconds
        has_validation = self.source.count("validation") > 0
        previous = self.parts.model.get_weights() if self.restore_on_regression and has_validation else None
        trained, arrays, cut, prefix_seconds = self._stage_inputs(index, stage, cached, has_validation)
        images = len(arrays[0][0]) if arrays is not None else self.source.count("train")

        initial_epoch, history, es_state, best = self._resume(
            trained, state.stage if state is not None else None, cached, cut, stage.name
        )
        self.tracker.start_stage(index, stage.name, stage.epochs, initial_epoch)
        replicas = self.strategy.num_replicas_in_sync
        self.tracker.update(
            replicas=replicas,
            global_batch_size=stage.batch_size,
            per_replica_batch_size=per_replica_batch(stage.batch_size, replicas),
        )
        if initial_epoch:
            self.tracker.update(completed_epochs=self.tracker.snapshot().completed_epochs + initial_epoch)
        es = None
        if stage.early_stopping.enabled:
            monitor = monitor_for(stage.early_stopping, has_validation)
            es = ResumableEarlyStopping(stage.early_stopping, monitor, es_state, best)
        progress = ProgressCallback(self.tracker, images, batch_size=stage.batch_size)
        board = self._board(stage.name)
        if board is not None and initial_epoch:  # what the checkpoint holds and no event file does yet
            board.backfill(history, learning_rate=stage.learning_rate, images=images)
        callbacks: list[keras.callbacks.Callback] = [
            *([es] if es is not None else []),
            EpochCheckpoint(self.store, index, history, es, cached_features=cached, frozen_prefix=cut),
            progress,  # after the checkpoint, as TensorBoard's events: an epoch is written once it is saved
            *([TensorBoardCallback(board, images, progress.epoch_seconds)] if board is not None else []),
            *self.extra_callbacks,
        ]
        if initial_epoch < stage.epochs and not (es_state and es_state.get("stopped")):
            self._fit(
                trained,
                stage,
                index,
                arrays=arrays,
                initial_epoch=initial_epoch,
                callbacks=callbacks,
                has_validation=has_validation,
            )
        elif es is not None and best is not None:
            trained.set_weights(best)  # the run stopped (or finished) before the restart: keep the best epoch

        epochs_run = len(history.get("loss", []))
        record = StageRecord(
            name=stage.name,
            trainable=stage.trainable,
            cached_features=cached,
            epochs_run=epochs_run,
            max_epochs=stage.epochs,
            history=history,
            best_epoch=_best_epoch(history, es.monitor if es is not None else None),
            seconds=time.monotonic() - started,
            feature_seconds=self.features.seconds - features_before + prefix_seconds,
            images_per_second=_steady_rate(images, progress.epoch_seconds),
            epoch_seconds=progress.epoch_seconds,
            resumed_at_epoch=initial_epoch,
            best_val_accuracy=_best_value(history.get("val_accuracy")),
            frozen_prefix=cut,
            global_batch_size=stage.batch_size,
            per_replica_batch_size=per_replica_batch(stage.batch_size, self.strategy.num_replicas_in_sync),
        )
        self._guard(record, previous)
        self.store.finish_stage(index, self.parts.model, asdict(record))
        self.tracker.end_stage(epochs_run)
        return record


def _steady_rate(images: int, epoch_seconds: list[float]) -> float | None:
    """Training images per second at steady state: the median epoch, so tracing in epoch 1 does not count."""
    if not epoch_seconds:
        return None
    median = float(np.median(epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds))
    return images / median if median > 0 else None


def _best_value(values: list[float] | None) -> float | None:
    """The highest finite value of a history, or None."""
    finite = [v for v in values or [] if np.isfinite(v)]
    return float(max(finite)) if finite else None


def _best_epoch(history: dict[str, list[float]], monitor: str | None) -> int | None:
    """The 1-based epoch with the best monitored value, if early stopping watched one."""
    if not monitor or not history.get(monitor):
        return None
    values = history[monitor]
    return 1 + int(np.argmax(values) if "accuracy" in monitor else np.argmin(values))


def predict_split(
    model: keras.Model, source: ImageSource, split: str, batch_size: int = 64
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Class probabilities of the full model over a split, and the true labels.

    Args:
        model: The full model.
        source: The images.
        split: train, validation or test.
        batch_size: Images per batch.

    Returns:
        Probabilities [N, C] and labels [N].

    When a `FeatureCache` of ``model`` over ``source`` holds valid features of ``split`` (the backbone is
    unchanged since they were extracted), the head runs on those instead of the backbone on the pixels.
    """
    cache = _CACHES.get(id(model))
    if cache is not None and cache.parts.model is model and cache.source is source and cache.cached(split):
        features, labels = cache.get(split, verify=False)
        probabilities, _ = extract_arrays(cache.parts.head, features, labels, EVAL_CHUNK)
        return probabilities, labels
    arrays = getattr(source, "in_memory", None)
    in_memory = arrays(split) if callable(arrays) else None
    if in_memory is not None:
        return extract_arrays(model, in_memory[0], in_memory[1], batch_size)
    return extract_features(model, source.images(split, batch_size, shuffle=False, seed=0))
