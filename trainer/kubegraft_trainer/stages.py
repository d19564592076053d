"""The training schedule: the linear classifier fit (optional) and the stages, in order, resumable per epoch.

`kubegraft_trainer.run` builds a `StageRunner` and calls `run_all`. For each stage it sets the trainable
backbone layers (`model.set_trainable`), recompiles with the stage's optimizer and trains with per-stage early
stopping (best weights restored) and a checkpoint after every epoch (`checkpoints`).

Frozen work is not repeated: a stage that trains only the head (``trainable: 0``) without augmentation runs
the backbone once per training and validation image (`FeatureCache`) and trains the head on those bottleneck
features; the head is shared with the full model, so the full model holds the result without a copy. The
features stay valid until a stage changes the backbone. With augmentation on, every epoch sees different
pixels, so head stages run the full model (augmentation -> backbone -> head) each epoch.

``classifier: linear`` fits a multinomial logistic regression (scikit-learn) on the cached features, choosing
its regularisation on the validation split, and writes its coefficients into the head's Dense softmax layer.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf

from kubegraft.spec import EarlyStopping, Stage, TransferJobSpec
from kubegraft_trainer.checkpoints import CheckpointStore, RunState, StageCheckpoint, restore_optimizer
from kubegraft_trainer.model import TransferModel, compile_for_stage, set_trainable
from kubegraft_trainer.progress import ProgressCallback, ProgressTracker

log = logging.getLogger(__name__)

LINEAR_STEP = "linear"
_LINEAR_C_GRID = (0.01, 0.1, 1.0, 10.0)


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


def extract_features(
    extractor: keras.Model, dataset: tf.data.Dataset
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Run ``extractor`` once over every batch of ``dataset``.

    Args:
        extractor: Pixels to features (or probabilities), inference mode.
        dataset: Batches of (pixels, labels).

    Returns:
        The outputs [N, D] and the labels [N], in dataset order.
    """
    outputs: list[np.ndarray[Any, Any]] = []
    labels: list[np.ndarray[Any, Any]] = []
    for pixels, batch_labels in dataset:
        outputs.append(np.asarray(extractor.predict_on_batch(pixels)))
        labels.append(np.asarray(batch_labels))
    if not outputs:
        width = int(extractor.output.shape[-1])
        return np.zeros((0, width), dtype="float32"), np.zeros((0,), dtype="int32")
    return np.concatenate(outputs).astype("float32"), np.concatenate(labels).astype("int32")


class FeatureCache:
    """Bottleneck features of the train and validation splits, computed once while the backbone is unchanged.

    Args:
        parts: The transfer model (its feature extractor).
        source: The images.
        batch_size: Batch size of the extraction pass.
    """

    def __init__(self, parts: TransferModel, source: ImageSource, batch_size: int = 256) -> None:
        self.parts = parts
        self.source = source
        self.batch_size = batch_size
        self.seconds = 0.0
        self._cache: dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = {}

    def get(self, split: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Features and labels of ``split``, computing them on first use."""
        if split not in self._cache:
            started = time.monotonic()
            dataset = self.source.images(split, self.batch_size, shuffle=False, seed=0)
            self._cache[split] = extract_features(self.parts.features, dataset)
            self.seconds += time.monotonic() - started
        return self._cache[split]

    def invalidate(self) -> None:
        """Forget the features (the backbone is about to change)."""
        self._cache.clear()


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
    """

    def __init__(
        self,
        store: CheckpointStore,
        index: int,
        history: dict[str, list[float]],
        early_stopping: ResumableEarlyStopping | None,
        cached_features: bool,
    ) -> None:
        super().__init__()
        self.store = store
        self.index = index
        self.history = history
        self.early_stopping = early_stopping
        self.cached_features = cached_features

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
        verbose: Keras fit verbosity (1 shows a progress bar).
        extra_callbacks: More Keras callbacks for every fit (tests use this to interrupt a run).
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
    ) -> None:
        self.parts = parts
        self.spec = spec
        self.source = source
        self.store = store
        self.tracker = tracker
        self.strategy = strategy
        self.verbose = verbose
        self.extra_callbacks = list(extra_callbacks)
        self.stages = spec.resolved_stages()
        self.linear = spec.classifier == "linear"
        self.features = FeatureCache(parts, source)
        self.records: list[StageRecord] = []

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
        if self.linear and not records:
            records.append(self._run_linear())
        for i, stage in enumerate(self.stages):
            index = i + offset
            if index < len(records):
                continue
            stage_state = (
                state.stage if state is not None and state.stage and state.stage.index == index else None
            )
            records.append(self._run_stage(index, stage, state if stage_state else None))
        self.records = records
        return records

    def recipe(self) -> str:
        """The schedule in short form, e.g. ``MobileNetV2 head(0x10,adam 0.001) -> finetune(50x10,sgd 1e-4)``.

        Returns:
            One line naming the backbone and each step.
        """
        parts = [f"{self.spec.model.backbone}"]
        steps = ["linear"] if self.linear else []
        steps += [
            f"{s.name}({s.trainable}x{s.epochs},{s.optimizer} {s.learning_rate:g})" for s in self.stages
        ]
        return parts[0] + " " + " -> ".join(steps)

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
        probs = self.parts.head.predict_on_batch(validation[0]) if len(validation[0]) else np.zeros((0, 1))
        val_acc = (
            float((probs.argmax(axis=1) == validation[1]).mean()) if len(validation[0]) else float("nan")
        )
        history = {"val_accuracy": [val_acc], "accuracy": [record["train_accuracy"]]}
        seconds = time.monotonic() - started
        out = StageRecord(
            LINEAR_STEP, 0, True, 0, 0, history, None, seconds, self.features.seconds, None, 0, record
        )
        self.store.finish_stage(0, self.parts.model, asdict(out))
        self.tracker.add_metrics({"val_accuracy": val_acc})
        print(f"[linear] C={record['C']} val_accuracy={val_acc:.4f} {seconds:.1f}s", flush=True)
        return out

    def _resume(
        self, trained: keras.Model, checkpoint: StageCheckpoint | None, cached: bool, name: str
    ) -> tuple[int, dict[str, list[float]], dict[str, Any] | None, list[np.ndarray[Any, Any]] | None]:
        """Load a stage checkpoint into ``trained``: (epochs done, history, early stopping, best weights)."""
        if checkpoint is None or checkpoint.cached_features != cached:
            return 0, {}, None, None
        # Optimizer first: Keras weight files hold the optimizer's variables too, and load only into a built
        # optimizer of the same shape.
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
        cached: bool,
        initial_epoch: int,
        callbacks: list[keras.callbacks.Callback],
        has_validation: bool,
    ) -> None:
        batch = stage.batch_size * self.strategy.num_replicas_in_sync
        if cached:
            train_x, train_y = self.features.get("train")
            trained.fit(
                train_x,
                train_y,
                batch_size=batch,
                epochs=stage.epochs,
                initial_epoch=initial_epoch,
                validation_data=self.features.get("validation") if has_validation else None,
                shuffle=True,
                callbacks=callbacks,
                verbose=self.verbose,
            )
            return
        with warnings.catch_warnings():
            # The pipeline's length is unknown until a pass ends (unreadable images are dropped), so Keras
            # warns at the end of every epoch that the input "ran out of data": expected here.
            warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
            trained.fit(
                self.source.images("train", batch, shuffle=True, seed=self.spec.dataset.seed + index),
                epochs=stage.epochs,
                initial_epoch=initial_epoch,
                validation_data=(
                    self.source.images("validation", batch, shuffle=False, seed=0) if has_validation else None
                ),
                shuffle=False,  # the pipeline reshuffles every epoch itself
                callbacks=callbacks,
                verbose=self.verbose,
            )

    def _run_stage(self, index: int, stage: Stage, state: RunState | None) -> StageRecord:
        started = time.monotonic()
        cached = self.uses_cached_features(stage)
        if stage.trains_backbone:
            self.features.invalidate()
        with self.strategy.scope():
            set_trainable(self.parts, stage.trainable)
            trained = self.parts.head if cached else self.parts.model
            compile_for_stage(trained, stage)
        feature_seconds_before = self.features.seconds
        has_validation = self.source.count("validation") > 0
        images = len(self.features.get("train")[0]) if cached else self.source.count("train")

        initial_epoch, history, es_state, best = self._resume(
            trained, state.stage if state is not None else None, cached, stage.name
        )
        self.tracker.start_stage(index, stage.name, stage.epochs, initial_epoch)
        if initial_epoch:
            self.tracker.update(completed_epochs=self.tracker.snapshot().completed_epochs + initial_epoch)
        es = None
        if stage.early_stopping.enabled:
            monitor = monitor_for(stage.early_stopping, has_validation)
            es = ResumableEarlyStopping(stage.early_stopping, monitor, es_state, best)
        progress = ProgressCallback(self.tracker, images)
        callbacks: list[keras.callbacks.Callback] = [
            *([es] if es is not None else []),
            EpochCheckpoint(self.store, index, history, es, cached),
            progress,
            *self.extra_callbacks,
        ]
        if initial_epoch < stage.epochs and not (es_state and es_state.get("stopped")):
            self._fit(
                trained,
                stage,
                index,
                cached=cached,
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
            feature_seconds=self.features.seconds - feature_seconds_before,
            images_per_second=_steady_rate(images, progress.epoch_seconds),
            epoch_seconds=progress.epoch_seconds,
            resumed_at_epoch=initial_epoch,
        )
        self.store.finish_stage(index, self.parts.model, asdict(record))
        self.tracker.end_stage(epochs_run)
        return record


def _steady_rate(images: int, epoch_seconds: list[float]) -> float | None:
    """Training images per second at steady state: the median epoch, so tracing in epoch 1 does not count."""
    if not epoch_seconds:
        return None
    median = float(np.median(epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds))
    return images / median if median > 0 else None


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
    """
    return extract_features(model, source.images(split, batch_size, shuffle=False, seed=0))
