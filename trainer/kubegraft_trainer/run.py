"""The trainer's entry point: one TransferJob spec in, one published model version out.

`kubegraft train` (in the pod: the manifest at ``$KUBEGRAFT_SPEC``) and `kubegraft run FILE` (a local run)
call `main`, which serves progress, calls `train`, writes the termination message and returns the exit code.
`train` reads top to bottom: data (`dataset`, `pipeline`) -> model (`backbones`, `model`) -> stages (`stages`,
`checkpoints`) -> evaluation and report (`report`) -> export and publish (`export`) -> delete checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import yaml
from pydantic import ValidationError

from kubegraft.logs import console
from kubegraft.manifests import load_manifest
from kubegraft.runtime import (
    ENV_RUN_ID,
    ENV_SCRATCH_DIR,
    ENV_SPEC_PATH,
    SCRATCH_DIR,
    SPEC_FILE_NAME,
    SPEC_MOUNT_DIR,
    ExitCode,
    FailureReason,
    NoticeReason,
)
from kubegraft.spec import API_VERSION, KIND, TransferJob, TransferJobSpec
from kubegraft.status import ImageCounts
from kubegraft_trainer.backbones import LoadedBackbone, load_backbone
from kubegraft_trainer.baseline import fit_pixel_baseline, transfer_gain
from kubegraft_trainer.cache import DiskCache
from kubegraft_trainer.checkpoints import CheckpointStore, default_run_id, spec_hash
from kubegraft_trainer.cluster import WorkerCluster, from_env
from kubegraft_trainer.dataset import DatasetSplits, discover
from kubegraft_trainer.devices import configure_devices, replica_devices
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.export import (
    KERAS_FILE,
    LABELS_FILE,
    TFLITE_FILE,
    write_keras,
    write_labels,
    write_savedmodel,
    write_tflite,
)
from kubegraft_trainer.gate import compare_with_published, decide
from kubegraft_trainer.health import SPREAD_SAMPLE, check_backbone_health
from kubegraft_trainer.inference import warm_while
from kubegraft_trainer.model import TransferModel, build_transfer_model, trainable_summary
from kubegraft_trainer.multiworker import lost_worker
from kubegraft_trainer.pipeline import ImageLoader
from kubegraft_trainer.pixels import split_pixels
from kubegraft_trainer.progress import (
    EPOCH_METRICS,
    ProgressServer,
    ProgressTracker,
    write_termination_message,
)
from kubegraft_trainer.report import (
    CONFUSION_FILE,
    CURVES_FILE,
    METRICS_FILE,
    build_metrics,
    evaluate,
    write_report,
)
from kubegraft_trainer.repository import (
    publish,
    published_by,
    save_report,
    tensorboard_uri,
    work_storage,
)
from kubegraft_trainer.search import CandidateHook, SearchOutcome, search_recipe
from kubegraft_trainer.sources import PipelineSource
from kubegraft_trainer.stages import ImageSource, StageRecord, StageRunner, predict_split
from kubegraft_trainer.storage import Storage, open_storage
from kubegraft_trainer.tensorboard_log import TEST_RUN, TensorBoardLog
from kubegraft_trainer.termination import TerminationRequested, on_sigterm

log = logging.getLogger(__name__)

SPEC_FILE = "transferjob.json"
RECIPE_FILE = "recipe.yaml"
# What a run that published no version keeps in <work area>/reports/<run id>/.
REPORT_FILES = [METRICS_FILE, CURVES_FILE, CONFUSION_FILE, SPEC_FILE, RECIPE_FILE]
PINNED_NAME = "pinned-recipe"  # metadata.name of recipe.yaml: a valid placeholder the user renames
# Training images the health check measures and re-estimates BN statistics on (one forward pass each).
HEALTH_IMAGES = 1024
# Training images the raw-pixel baseline is fitted on (a logistic regression on 16 px pixels, C by 3-fold CV:
# about 1 s for 500 images and 1.5 s for 1,000 on 2 cores, docs/quality.md); larger splits use the first ones.
BASELINE_MAX_TRAIN = 5000
BASELINE_SIDE = 16
_DISK_CACHE_BYTES = 8 * 1024**3


@dataclass
class RunResult:
    """What a successful run produced."""

    run_id: str
    version: int | None  # None: the publish gate kept the model back (see metrics["publish"])
    model_uri: str | None
    class_names: list[str]
    records: list[StageRecord]
    metrics: dict[str, Any]
    parts: TransferModel


def load_spec(path: str | Path) -> TransferJobSpec:
    """Read a TransferJob manifest (or a bare spec) from a YAML or JSON file.

    Args:
        path: The file.

    Returns:
        The validated spec.

    Raises:
        TrainerError: The file is missing, not YAML, or not a valid TransferJob (InvalidSpec).
    """
    try:
        data = load_manifest(Path(path).read_text(encoding="utf-8"))  # 1e-5 is a float, as kubectl reads it
    except (OSError, ValueError) as exc:  # ManifestError and UnicodeDecodeError are ValueErrors
        raise TrainerError(
            FailureReason.INVALID_SPEC, f"cannot read the TransferJob at {path}: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise TrainerError(FailureReason.INVALID_SPEC, f"{path} does not hold a TransferJob mapping")
    try:
        if "spec" in data or "kind" in data:
            return TransferJob.model_validate(data).spec
        return TransferJobSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise TrainerError(
            FailureReason.INVALID_SPEC,
            f"invalid TransferJob in {path}: {where}: {first.get('msg')} ({exc.error_count()} error(s))",
        ) from exc


def _scratch_dir() -> Path:
    base = os.environ.get(ENV_SCRATCH_DIR) or (SCRATCH_DIR if Path(SCRATCH_DIR).is_dir() else "")
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="kubegraft-", dir=base))
    return Path(tempfile.mkdtemp(prefix="kubegraft-"))


def train(
    spec: TransferJobSpec,
    *,
    run_id: str | None = None,
    tracker: ProgressTracker | None = None,
    verbose: int = 0,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    workdir: Path | None = None,
    cluster: WorkerCluster | None = None,
) -> RunResult:
    """Train a spec (its stages, or strategy auto's recipe search) and publish the model as the next version.

    Every run checks the backbone's health before training (re-estimating collapsed BatchNormalization
    statistics), and reports a raw-pixel logistic regression beside the model on the test split
    (``baseline_accuracy``, ``transfer_gain``).

    Args:
        spec: The TransferJob spec.
        run_id: Identity of the run (names its checkpoints); default ``$KUBEGRAFT_RUN_ID`` or a spec hash.
        tracker: Progress reporting; a private one if omitted.
        verbose: Keras fit verbosity (1: progress bar).
        extra_callbacks: More Keras callbacks for every fit.
        workdir: Scratch folder; a temporary one (removed afterwards) if omitted.
        cluster: This worker's place when several train together (`cluster.from_env`): all of them train;
            only the chief (worker 0) writes the run's checkpoints, evaluates and publishes.

    Returns:
        The published version and what produced it (no version and no model URI on a worker that is not the
        chief).

    Raises:
        TrainerError: The spec, data, weights or storage made the run fail.
    """
    started = time.monotonic()
    tracker = tracker or ProgressTracker()
    run_id = run_id or os.environ.get(ENV_RUN_ID) or default_run_id(spec)
    chief = cluster is None or cluster.chief
    board = _open_tensorboard(spec, run_id, chief=chief)
    scratch = workdir or _scratch_dir()
    timings: dict[str, float] = {}
    tracker.set_state("loading")
    try:
        # First: logical devices and a multi-worker strategy must be set before TensorFlow starts.
        strategy = configure_devices(cluster)
        keras.utils.set_random_seed(spec.dataset.seed)
        data_storage = open_storage(spec.dataset.uri, spec.storage)
        splits = discover(spec.dataset, data_storage)
        tracker.set_images(ImageCounts(**splits.counts))
        with strategy.scope():
            loaded = load_backbone(spec.model, spec.dataset.image_size, spec.storage, scratch / "backbone")
            # Seeded again after the downloads: botocore's retry backoff draws its jitter from Python's global
            # `random`, which Keras seeds its layers from, so a retried request must not change the model.
            keras.utils.set_random_seed(spec.dataset.seed)
            parts = build_transfer_model(
                loaded,
                spec.model.head,
                len(splits.classes),
                spec.augmentation,
                linear=spec.classifier == "linear",
                seed=spec.dataset.seed,
            )
        timings["load"] = time.monotonic() - started
        trained = _train_and_predict(
            spec,
            splits,
            loaded,
            parts,
            strategy=strategy,
            run_id=run_id,
            tracker=tracker,
            scratch=scratch,
            timings=timings,
            verbose=verbose,
            extra_callbacks=extra_callbacks,
            chief=chief,
            tensorboard=board,
        )
        parts, records = trained.parts, trained.runner.records
        if not chief:  # the chief evaluates and publishes what all of them trained
            return _finish_worker(trained, tracker, run_id, splits.classes)

        test = evaluate(trained.probabilities, trained.labels, splits.classes)
        counts = ImageCounts(**splits.counts, skipped=len(trained.skipped))
        tracker.set_images(counts)
        if test["accuracy"] is not None:
            tracker.add_metrics({"test_accuracy": test["accuracy"], "test_loss": test["loss"]})
        quality = _report_transfer_gain(
            trained.baseline, trained.transfer_accuracy, tracker, published=test["accuracy"]
        )
        _write_test_scalars(board, records, test, quality)

        phase = time.monotonic()
        build = scratch / "version"
        pinned = trained.search.spec if trained.search is not None else None
        selection = trained.search.selection if trained.search is not None else None
        note = selection.summary() if selection is not None else ""
        write_version(
            build, trained.published, parts.image_size, spec, splits.classes, pinned=pinned, note=note
        )
        timings["export"] = time.monotonic() - phase
        timings["total"] = time.monotonic() - started
        extra = _run_record(spec, loaded, trained, strategy=strategy, counts=counts, quality=quality)
        metrics = build_metrics(
            records=records,
            test=test,
            class_names=splits.classes,
            split_record=splits.record(),
            skipped=trained.skipped,
            timings=timings,
            run_id=run_id,
            recipe=trained.search.recipe if trained.search is not None else trained.runner.recipe(),
            extra=extra,
        )
        version, model_uri = _publish_or_keep_back(
            spec,
            build,
            metrics,
            records,
            splits,
            data=data_storage,
            run_id=run_id,
            tracker=tracker,
            timings=timings,
        )
        trained.store.delete()  # the run's checkpoints (with strategy auto, every candidate's too)
        tracker.set_state("succeeded", model_uri=model_uri)
        console(f"published {model_uri or 'nothing'} test_accuracy={test['accuracy']}", model_uri=model_uri)
        return RunResult(run_id, version, model_uri, list(splits.classes), records, metrics, parts)
    finally:
        if board is not None:
            board.close()
        if workdir is None:  # a scratch folder of its own
            shutil.rmtree(scratch, ignore_errors=True)


def _open_tensorboard(spec: TransferJobSpec, run_id: str, *, chief: bool) -> TensorBoardLog | None:
    """The run's TensorBoard log ``<work area>/tensorboard/<run id>/``: the chief's, if output.tensorboard."""
    if not chief or not spec.output.tensorboard:
        return None
    return TensorBoardLog(tensorboard_uri(spec.output.uri, run_id), spec.storage)


def _write_test_scalars(
    board: TensorBoardLog | None,
    records: Sequence[StageRecord],
    test: dict[str, Any],
    quality: dict[str, Any],
) -> None:
    """The final test metrics as TensorBoard run ``test_metrics``, at the step of the epochs trained."""
    if board is None:
        return
    values = {
        "test_accuracy": test.get("accuracy"),
        "test_loss": test.get("loss"),
        "baseline_accuracy": quality.get("baseline_accuracy"),
        "transfer_gain": quality.get("transfer_gain"),
    }
    scalars = {tag: float(v) for tag, v in values.items() if v is not None and np.isfinite(v)}
    writer = board.run(TEST_RUN)
    writer.write_missing(sum(r.epochs_run for r in records), scalars)
    writer.upload()


def _run_record(
    spec: TransferJobSpec,
    loaded: LoadedBackbone,
    trained: Trained,
    *,
    strategy: tf.distribute.Strategy,
    counts: ImageCounts,
    quality: dict[str, Any],
) -> dict[str, Any]:
    """metrics.json's account of the run beside its stage records: model, images, devices, search."""
    return {
        "model": _model_record(spec, loaded, trained.parts),
        "images": counts.model_dump(by_alias=True),
        "replicas": strategy.num_replicas_in_sync,
        "devices": replica_devices(strategy),
        "precision": keras.mixed_precision.global_policy().name,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "strategy": spec.resolved_strategy,
        "health": trained.health,
        **quality,
        **_search_records(trained),
    }


def _finish_worker(
    trained: Trained, tracker: ProgressTracker, run_id: str, classes: Sequence[str]
) -> RunResult:
    """A worker other than the chief, trained: drop its scratch checkpoints, leave the rest to worker 0."""
    trained.store.delete()
    tracker.set_state("succeeded")
    print("this worker trained its share; worker 0 evaluates and publishes the model", flush=True)
    return RunResult(run_id, None, None, list(classes), trained.runner.records, {}, trained.parts)


def _publish_or_keep_back(
    spec: TransferJobSpec,
    build: Path,
    metrics: dict[str, Any],
    records: Sequence[StageRecord],
    splits: DatasetSplits,
    *,
    data: Storage,
    run_id: str,
    tracker: ProgressTracker,
    timings: dict[str, float],
) -> tuple[int | None, str | None]:
    """Ask the publish gate, write the report, then publish the build or keep its report in the work area.

    Returns:
        The published version and its URI, or (None, None) when the gate kept the model back (its notice
        names the reason; metrics.json goes to ``<work area>/reports/<run id>/``).
    """
    accuracy = metrics["test"].get("accuracy")
    output = open_storage(spec.output.uri, spec.storage, not_found_reason=FailureReason.OUTPUT_NOT_WRITABLE)
    done = published_by(output, run_id)
    if done is not None:  # an earlier attempt of this run published and died before it exited
        log.info("run %s already published version %d", run_id, done)
        return done, output.join(str(done)) + "/"
    phase = time.monotonic()
    comparison = None
    if spec.output.publish_policy == "ifBetter":
        comparison = compare_with_published(spec.output, spec.storage, output, build, splits, data)
        if comparison is not None:
            tracker.add_metrics({"published_test_accuracy": comparison.published_accuracy})
    gate = decide(spec.output, accuracy, comparison)
    timings["gate"] = time.monotonic() - phase
    log.info("publish gate: %s", gate.message)
    metrics["publish"] = gate.record
    write_report(build, metrics, records, splits.classes)
    work = work_storage(spec.output.uri, spec.storage)
    if not gate.publish:
        report = save_report(build, work, run_id, REPORT_FILES)
        tracker.add_notice(gate.reason, f"{gate.message}; report at {report}{METRICS_FILE}")
        log.warning("%s; report at %s", gate.message, report)
        return None, None
    version = publish(build, output, work, run_id, record={"testAccuracy": accuracy})
    model_uri = output.join(str(version)) + "/"
    log.info("published %s (test accuracy %s)", model_uri, accuracy)
    return version, model_uri


@dataclass
class Trained:
    """What training produced before evaluation: the model, its runner, test predictions and side records.

    Attributes:
        parts: The trained transfer model (the search's best transfer recipe with strategy auto).
        runner: The stage runner that trained it (its records and recipe).
        probabilities: Test-split probabilities [N, C] of the published model.
        labels: Test-split labels [N].
        skipped: Keys of unreadable images (filled in by the loader).
        health: Backbone health records (``before_training``; ``after_training`` when BN layers trained).
        baseline: The raw-pixel baseline's record (test accuracy when fitted).
        search: The search's outcome with strategy auto.
        store: The run's checkpoint store (deleted after a successful publish).
        published: The model to export: ``parts.model``, or with strategy auto the selection's winner (a
            pixel model or an ensemble may beat the transfer model on validation: `selection`).
        transfer_accuracy: Test accuracy of the transfer model (what the transfer gain measures).
    """

    parts: TransferModel
    runner: StageRunner
    probabilities: np.ndarray[Any, Any]
    labels: np.ndarray[Any, Any]
    skipped: list[str]
    health: dict[str, Any]
    baseline: dict[str, Any]
    search: SearchOutcome | None
    store: CheckpointStore
    published: keras.Model
    transfer_accuracy: float | None


def _train_and_predict(
    spec: TransferJobSpec,
    splits: DatasetSplits,
    loaded: LoadedBackbone,
    parts: TransferModel,
    *,
    strategy: tf.distribute.Strategy,
    run_id: str,
    tracker: ProgressTracker,
    scratch: Path,
    timings: dict[str, float],
    verbose: int,
    extra_callbacks: Sequence[keras.callbacks.Callback],
    chief: bool = True,
    tensorboard: TensorBoardLog | None = None,
) -> Trained:
    """`train_on_source` over the data set's images; storage failures behind TensorFlow errors surface.

    A fresh run (nothing in its checkpoint folder) clears the TensorBoard folder of its id first.
    """
    remote = spec.dataset.uri.startswith("s3://")
    cache = DiskCache(scratch / "images", _DISK_CACHE_BYTES) if remote else None
    data_storage = open_storage(spec.dataset.uri, spec.storage)
    with ImageLoader(data_storage, cache=cache) as loader:  # threads and batch suit the storage
        source = PipelineSource(splits, loader, parts.image_size)
        store = CheckpointStore(spec.output.uri, run_id, spec.storage, spec_hash(spec), writable=chief)
        if tensorboard is not None and next(iter(store.storage.list("")), None) is None:
            tensorboard.reset()
        try:
            trained = train_on_source(
                spec,
                source,
                loaded,
                parts,
                num_classes=len(splits.classes),
                store=store,
                strategy=strategy,
                run_id=run_id,
                tracker=tracker,
                timings=timings,
                verbose=verbose,
                extra_callbacks=extra_callbacks,
                evaluate=chief,
                tensorboard=tensorboard,
            )
        except tf.errors.OpError:
            if loader.failure is not None:
                raise loader.failure from None
            raise
        loader.report_skipped()
        trained.skipped = list(loader.skipped)
        return trained


def train_on_source(
    spec: TransferJobSpec,
    source: ImageSource,
    loaded: LoadedBackbone,
    parts: TransferModel,
    *,
    num_classes: int,
    store: CheckpointStore,
    strategy: tf.distribute.Strategy,
    run_id: str,
    tracker: ProgressTracker,
    timings: dict[str, float],
    verbose: int = 0,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    on_candidate: CandidateHook | None = None,
    evaluate: bool = True,
    tensorboard: TensorBoardLog | None = None,
) -> Trained:
    """Check backbone health, train (stages, or strategy auto's search), predict test, fit the baseline.

    Args:
        spec: The TransferJob spec.
        source: The images by split.
        loaded: The backbone.
        parts: The model built for ``spec`` (used as is with strategy stages; its feature extractor serves
            the health check either way).
        num_classes: Number of classes.
        store: The run's checkpoint store (the stages', or the search's and its candidates').
        strategy: The distribution strategy.
        run_id: The run's id.
        tracker: Progress reporting.
        timings: Seconds per phase, filled in (health, train, evaluate, baseline).
        verbose: Keras fit verbosity.
        extra_callbacks: More Keras callbacks for every fit.
        on_candidate: With strategy auto, called with each trained candidate (benchmarks score them).
        evaluate: Predict the test split and fit the baseline (False on a worker that is not the chief: the
            arrays and the baseline's record come back empty).
        tensorboard: Where the stages' (or candidates') epochs go as TensorBoard runs (None: nowhere).

    Returns:
        What training produced (``skipped`` empty: the caller's loader knows).
    """
    search: SearchOutcome | None = None
    phase = time.monotonic()
    health: dict[str, Any] = {"before_training": _check_health(parts, source, tracker, "before training")}
    timings["health"] = time.monotonic() - phase
    phase = time.monotonic()
    if spec.resolved_strategy == "auto":
        search = search_recipe(
            spec,
            loaded,
            num_classes,
            source,
            tracker=tracker,
            strategy=strategy,
            run_id=run_id,
            verbose=verbose,
            extra_callbacks=extra_callbacks,
            on_candidate=on_candidate,
            checkpoints=store,
            tensorboard=tensorboard,
        )
        parts, runner = search.parts, search.runner
        epochs = sum(c.epochs for c in search.candidates)
        stage, epoch, val_accuracy = search.published_view()
        # The last candidate's epoch metrics would read as the published model's: keep only run-wide ones.
        metrics = {k: v for k, v in tracker.snapshot().metrics.items() if k not in EPOCH_METRICS}
        if val_accuracy is not None:
            metrics["val_accuracy"] = val_accuracy
        # One update: the search's epochs move into the plan, so progress never dips in between.
        tracker.update(
            stages=runner.step_names,
            total_epochs=epochs,
            completed_epochs=epochs,
            recipe=search.recipe,
            search_epochs_done=0,
            search_epochs_left=0,
            stage=stage,
            epoch=epoch,
            metrics=metrics,
        )
        if _trained_batchnorm(parts, runner):  # the winner's BN layers trained: check them once more
            health["after_training"] = _check_health(parts, source, tracker, "after training")
    else:
        model = parts

        def after_stage(record: StageRecord) -> None:
            """After a stage that trained BN layers (a backbone from scratch): check the features again."""
            trains = record.trainable == "all" or (isinstance(record.trainable, int) and record.trainable > 0)
            if trains and not model.pretrained:
                check = _check_health(model, source, tracker, f"after stage {record.name}")
                health.setdefault("after_stages", []).append({"stage": record.name, **check})

        runner = StageRunner(
            parts,
            spec,
            source,
            store=store,
            tracker=tracker,
            strategy=strategy,
            verbose=verbose,
            extra_callbacks=extra_callbacks,
            after_stage=after_stage,
            tensorboard=tensorboard,
        )
        runner.run_all()
    timings["train"] = time.monotonic() - phase
    if not evaluate:
        empty = np.zeros((0,), "float32")
        return Trained(parts, runner, empty, empty, [], health, {}, search, store, parts.model, None)
    tracker.set_state("exporting")
    phase = time.monotonic()
    published = search.published if search is not None else parts.model
    probabilities, labels = predict_split(published, source, "test")
    transfer_probabilities = probabilities
    if published is not parts.model:  # the transfer gain is the transfer model's, published or not
        transfer_probabilities, _ = predict_split(parts.model, source, "test")
    transfer_accuracy = (
        float(np.mean(np.argmax(transfer_probabilities, axis=1) == labels)) if len(labels) else None
    )
    timings["evaluate"] = time.monotonic() - phase
    phase = time.monotonic()
    baseline = _fit_baseline(source, spec.dataset.seed)
    timings["baseline"] = time.monotonic() - phase
    return Trained(
        parts,
        runner,
        probabilities,
        labels,
        [],
        health,
        baseline,
        search,
        store,
        published,
        transfer_accuracy,
    )


def _check_health(
    parts: TransferModel, source: ImageSource, tracker: ProgressTracker, when: str
) -> dict[str, Any]:
    """Measure the backbone's inference-mode feature spread on training images; repair a collapsed one.

    The first check of a run decodes the splits (all that fit in memory, in one pass: the stages and the
    evaluation reuse them) while TensorFlow optimises the extractor's graph, as the stages' feature pass does.
    """
    phase = time.monotonic()
    images = warm_while(parts.features, lambda: _training_images(source, HEALTH_IMAGES))
    if len(images) < 2:
        return {"checked": False, "reason": "fewer than two training images"}
    # parts.features is preprocessing + backbone in inference mode: raw pixels in, as the stages see them.
    report = check_backbone_health(parts.features, images)
    # "sample": images the spread was measured on (one forward pass each, twice when repaired).
    sample = min(len(images), SPREAD_SAMPLE)
    record = {"checked": True, **report.to_dict(), "sample": sample, "seconds": time.monotonic() - phase}
    if report.repaired:
        message = (
            f"the backbone's features {when} were collapsed (spread {report.spread_before:.2g} < "
            f"{report.threshold:g}): stale BatchNormalization statistics; re-estimated "
            f"{report.layers_updated} BN layers on {report.images} training images, spread now "
            f"{report.spread_after:.3f}"
        )
        tracker.add_notice(NoticeReason.BATCH_NORM_REESTIMATED, message)
        log.warning(message)
    return record


def _training_images(source: ImageSource, limit: int) -> np.ndarray[Any, Any]:
    """The first ``limit`` raw training images, from the decoded splits where the source keeps them."""
    preload = getattr(source, "preload", None)
    if callable(preload):
        preload()
    in_memory = getattr(source, "in_memory", None)
    held = in_memory("train") if callable(in_memory) else None
    if held is not None:
        return np.asarray(held[0][:limit])
    return split_pixels(source, "train", limit)[0]


def _trained_batchnorm(parts: TransferModel, runner: StageRunner) -> bool:
    """Whether a stage trained BatchNormalization layers (only a backbone from scratch trains them)."""
    return not parts.pretrained and any(s.trains_backbone for s in runner.stages)


def _fit_baseline(source: ImageSource, seed: int) -> dict[str, Any]:
    """Fit the raw-pixel logistic regression on the training split and score it on the test split."""
    started = time.monotonic()
    train_x, train_y = split_pixels(source, "train", BASELINE_MAX_TRAIN, BASELINE_SIDE)
    test_x, test_y = split_pixels(source, "test", source.count("test"), BASELINE_SIDE)
    if len(np.unique(train_y)) < 2 or len(test_x) == 0:
        return {"fitted": False, "reason": "needs two training classes and test images"}
    baseline = fit_pixel_baseline(train_x, train_y, seed=seed, side=BASELINE_SIDE)
    return {
        "fitted": True,
        "model": "logistic regression on raw pixels",
        "side": baseline.side,
        "C": baseline.c,
        "cv_accuracy": {str(c): a for c, a in baseline.cv_accuracy.items()},
        "train_images": len(train_x),
        "accuracy": baseline.score(test_x, test_y),
        "seconds": time.monotonic() - started,
    }


def _report_transfer_gain(
    baseline: dict[str, Any],
    model_accuracy: float | None,
    tracker: ProgressTracker,
    *,
    published: float | None = None,
) -> dict[str, Any]:
    """metrics.json's baseline entries; the tracker's metrics; NoTransferGain when transfer does not win.

    Args:
        baseline: `_fit_baseline`'s record.
        model_accuracy: Test accuracy of the transfer model (the backbone and its recipe).
        tracker: Progress reporting.
        published: Test accuracy of the published model when it is not the transfer model (strategy auto
            may publish a pixel model or an ensemble); the notice then says so.
    """
    if not baseline.get("fitted") or model_accuracy is None:
        return {"baseline": baseline}
    accuracy = float(baseline["accuracy"])
    gain = transfer_gain(float(model_accuracy), accuracy)
    tracker.add_metrics({"baseline_accuracy": accuracy, "transfer_gain": gain})
    if gain <= 0:
        served = (
            ""
            if published is None or published == model_accuracy
            else f"; the published model, chosen on validation, scores {published:.3f}"
        )
        tracker.add_notice(
            NoticeReason.NO_TRANSFER_GAIN,
            f"the transfer model's test accuracy {model_accuracy:.3f} does not beat a logistic regression on "
            f"raw pixels ({accuracy:.3f}, transfer gain {gain:+.3f}): the backbone's features do not help "
            f"on this data{served}; see metrics.json and docs/quality.md",
        )
    return {"baseline": baseline, "baseline_accuracy": accuracy, "transfer_gain": gain}


def _search_records(trained: Trained) -> dict[str, Any]:
    """metrics.json's ``search`` and ``selection`` entries with strategy auto (nothing otherwise)."""
    if trained.search is None:
        return {}
    records: dict[str, Any] = {"search": trained.search.record()}
    if trained.search.selection is not None:
        selection = trained.search.selection.record()
        records["selection"] = {**selection, "transfer_test_accuracy": trained.transfer_accuracy}
    return records


def _model_record(spec: TransferJobSpec, loaded: LoadedBackbone, parts: TransferModel) -> dict[str, Any]:
    return {
        "backbone": spec.model.backbone,
        "weights": loaded.source,
        "imageSize": parts.image_size,
        "preprocess": loaded.preprocess_mode,
        "classifier": spec.classifier,
        **trainable_summary(parts),
    }


def write_version(
    build: Path,
    model: keras.Model,
    image_size: int,
    spec: TransferJobSpec,
    class_names: list[str],
    *,
    pinned: TransferJobSpec | None = None,
    note: str = "",
) -> None:
    """Write a version's model files into a fresh local folder: SavedModel, labels, asked formats, the spec.

    Args:
        build: The folder (replaced if it exists).
        model: The model to publish (raw pixels in, probabilities out).
        image_size: Its input side.
        spec: The spec, written next to the model as transferjob.json.
        class_names: Class names in output order.
        pinned: With strategy auto, the best transfer recipe as an explicit spec, written as recipe.yaml (a
            TransferJob manifest with ``strategy: stages`` that reruns it).
        note: With strategy auto, what the selection published and why (recipe.yaml's header).
    """
    shutil.rmtree(build, ignore_errors=True)
    write_savedmodel(model, class_names, image_size, build)
    write_labels(class_names, build / LABELS_FILE)
    if "keras" in spec.output.formats:
        write_keras(model, build / KERAS_FILE)
    if "tflite" in spec.output.formats:
        write_tflite(model, image_size, build / TFLITE_FILE)
    (build / SPEC_FILE).write_text(spec.model_dump_json(by_alias=True, indent=1) + "\n", encoding="utf-8")
    if pinned is not None:
        manifest = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": PINNED_NAME},
            "spec": pinned.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
        header = (
            "# The transfer recipe strategy auto chose, as explicit stages (strategy: stages): rename\n"
            "# it and apply it to rerun exactly this recipe without a search (and without the pixel\n"
            "# model and the ensemble, which compete only under strategy auto).\n"
        )
        if note:
            wrapped = textwrap.wrap(f"This version: strategy auto {note}.", 100)
            header += "".join(f"# {line}\n" for line in wrapped)
        (build / RECIPE_FILE).write_text(header + yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")


def spec_path_from_env() -> str:
    """The mounted manifest's path: ``$KUBEGRAFT_SPEC`` or /etc/kubegraft/transferjob.yaml."""
    return os.environ.get(ENV_SPEC_PATH) or f"{SPEC_MOUNT_DIR}/{SPEC_FILE_NAME}"


def main(
    spec_path: str | Path,
    *,
    progress_port: int | None = None,
    verbose: int = 0,
    run_id: str | None = None,
    termination_log: str | None = None,
) -> int:
    """Run a TransferJob manifest end to end as a process would: progress server, exit code, termination note.

    Args:
        spec_path: The manifest.
        progress_port: Port of the progress server; None: ``$KUBEGRAFT_PROGRESS_PORT`` or 9090; 0: any free.
        verbose: Keras fit verbosity.
        run_id: The run's id; default ``$KUBEGRAFT_RUN_ID`` or a hash of the spec.
        termination_log: Termination message file; default ``$KUBEGRAFT_TERMINATION_LOG`` or
            /dev/termination-log.

    Returns:
        The `ExitCode`: SUCCEEDED, INVALID (spec or data wrong, do not retry), RETRYABLE, WORKER_LOST
        (another worker of the run failed, so this one stopped too) or TERMINATED (SIGTERM: stopped at
        the next batch boundary; the retry resumes from the last epoch's checkpoint).
    """
    tracker = ProgressTracker()
    server: ProgressServer | None = None
    code = ExitCode.RETRYABLE
    try:
        cluster = from_env()
        if cluster is None or cluster.chief:  # the operator reads the chief's progress only
            try:
                server = ProgressServer(tracker, progress_port).start()
                log.info("progress on port %d (/progress, /metrics)", server.port)
            except OSError as exc:
                log.warning("progress server not started: %s", exc)
        spec = load_spec(spec_path)
        with on_sigterm():
            try:
                train(spec, run_id=run_id, tracker=tracker, verbose=verbose, cluster=cluster)
            except Exception as exc:  # another worker failed: say which, exit so that the pod set restarts
                lost = lost_worker(exc, cluster) if cluster is not None else None
                if lost is None:
                    raise
                raise lost from exc
        code = ExitCode.SUCCEEDED
    except TerminationRequested:
        done = tracker.snapshot().completed_epochs
        log.warning("SIGTERM: stopping; a retry resumes from the checkpoint after epoch %d", done)
        message = f"stopped by SIGTERM after {done} finished epochs; a retry resumes from the last checkpoint"
        tracker.set_state("failed", reason=FailureReason.TERMINATED, message=message)
        code = ExitCode.TERMINATED
    except TrainerError as exc:
        log.error("run failed: %s", exc)
        tracker.set_state("failed", reason=exc.reason, message=exc.message)
        code = exc.exit_code
    except Exception as exc:  # anything unforeseen: report it, let the Job retry
        log.exception("run failed unexpectedly")
        message = f"{type(exc).__name__}: {exc}"[:500]
        tracker.set_state("failed", reason=FailureReason.TRAINING_ERROR, message=message)
        code = ExitCode.RETRYABLE
    finally:
        write_termination_message(tracker, termination_log)
        if server is not None:
            server.stop()
    state = tracker.snapshot()
    outcome = {"state": state.state, "reason": state.reason, "modelUri": state.model_uri}
    console(json.dumps(outcome), **outcome)
    return int(code)
