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

from kubegraft.runtime import (
    ENV_RUN_ID,
    ENV_SCRATCH_DIR,
    ENV_SPEC_PATH,
    SCRATCH_DIR,
    SPEC_FILE_NAME,
    SPEC_MOUNT_DIR,
    ExitCode,
    FailureReason,
)
from kubegraft.spec import TransferJob, TransferJobSpec
from kubegraft.status import ImageCounts
from kubegraft_trainer.backbones import LoadedBackbone, load_backbone
from kubegraft_trainer.cache import DiskCache
from kubegraft_trainer.checkpoints import CheckpointStore, default_run_id, spec_hash
from kubegraft_trainer.dataset import DatasetSplits, discover
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.export import (
    KERAS_FILE,
    LABELS_FILE,
    TFLITE_FILE,
    publish,
    write_keras,
    write_labels,
    write_savedmodel,
    write_tflite,
)
from kubegraft_trainer.model import TransferModel, build_transfer_model, configure_devices, trainable_summary
from kubegraft_trainer.pipeline import ImageLoader
from kubegraft_trainer.progress import ProgressServer, ProgressTracker, write_termination_message
from kubegraft_trainer.report import build_metrics, evaluate, write_report
from kubegraft_trainer.sources import PipelineSource
from kubegraft_trainer.stages import StageRecord, StageRunner, predict_split
from kubegraft_trainer.storage import open_storage

log = logging.getLogger(__name__)

SPEC_FILE = "transferjob.json"
_DISK_CACHE_BYTES = 8 * 1024**3


@dataclass
class RunResult:
    """What a successful run produced."""

    run_id: str
    version: int
    model_uri: str
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
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
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
) -> RunResult:
    """Train a spec's stages and publish the model as the output's next version.

    Args:
        spec: The TransferJob spec.
        run_id: Identity of the run (names its checkpoints); default ``$KUBEGRAFT_RUN_ID`` or a spec hash.
        tracker: Progress reporting; a private one if omitted.
        verbose: Keras fit verbosity (1: progress bar).
        extra_callbacks: More Keras callbacks for every fit.
        workdir: Scratch folder; a temporary one (removed afterwards) if omitted.

    Returns:
        The published version and what produced it.

    Raises:
        TrainerError: The spec, data, weights or storage made the run fail.
    """
    started = time.monotonic()
    tracker = tracker or ProgressTracker()
    run_id = run_id or os.environ.get(ENV_RUN_ID) or default_run_id(spec)
    scratch = workdir or _scratch_dir()
    own_scratch = workdir is None
    timings: dict[str, float] = {}
    keras.utils.set_random_seed(spec.dataset.seed)
    tracker.set_state("loading")
    try:
        strategy = configure_devices()
        data_storage = open_storage(spec.dataset.uri, spec.storage)
        splits = discover(spec.dataset, data_storage)
        tracker.set_images(ImageCounts(**splits.counts))
        with strategy.scope():
            loaded = load_backbone(spec.model, spec.dataset.image_size, spec.storage, scratch / "backbone")
            parts = build_transfer_model(
                loaded,
                spec.model.head,
                len(splits.classes),
                spec.augmentation,
                linear=spec.classifier == "linear",
                seed=spec.dataset.seed,
            )
        timings["load"] = time.monotonic() - started
        runner, store, probabilities, labels, skipped = _train_and_predict(
            spec,
            splits,
            parts,
            strategy=strategy,
            run_id=run_id,
            tracker=tracker,
            scratch=scratch,
            timings=timings,
            verbose=verbose,
            extra_callbacks=extra_callbacks,
        )
        records = runner.records

        test = evaluate(probabilities, labels, splits.classes)
        counts = ImageCounts(**splits.counts, skipped=len(skipped))
        tracker.set_images(counts)
        if test["accuracy"] is not None:
            tracker.add_metrics({"test_accuracy": test["accuracy"], "test_loss": test["loss"]})

        phase = time.monotonic()
        build = scratch / "version"
        write_version(build, parts, spec, splits.classes)
        timings["export"] = time.monotonic() - phase
        timings["total"] = time.monotonic() - started
        metrics = build_metrics(
            records=records,
            test=test,
            class_names=splits.classes,
            split_record=splits.record(),
            skipped=skipped,
            timings=timings,
            run_id=run_id,
            recipe=runner.recipe(),
            extra={
                "model": _model_record(spec, loaded, parts),
                "images": counts.model_dump(by_alias=True),
                "replicas": strategy.num_replicas_in_sync,
                "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
            },
        )
        write_report(build, metrics, records, splits.classes)

        output = open_storage(
            spec.output.uri, spec.storage, not_found_reason=FailureReason.OUTPUT_NOT_WRITABLE
        )
        version = publish(build, output, run_id, record={"testAccuracy": test["accuracy"]})
        model_uri = output.join(str(version)) + "/"
        store.delete()
        tracker.set_state("succeeded", model_uri=model_uri)
        log.info("published %s (test accuracy %s)", model_uri, test["accuracy"])
        print(f"published {model_uri} test_accuracy={test['accuracy']}", flush=True)
        return RunResult(run_id, version, model_uri, list(splits.classes), records, metrics, parts)
    finally:
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _train_and_predict(
    spec: TransferJobSpec,
    splits: DatasetSplits,
    parts: TransferModel,
    *,
    strategy: tf.distribute.Strategy,
    run_id: str,
    tracker: ProgressTracker,
    scratch: Path,
    timings: dict[str, float],
    verbose: int,
    extra_callbacks: Sequence[keras.callbacks.Callback],
) -> tuple[StageRunner, CheckpointStore, np.ndarray[Any, Any], np.ndarray[Any, Any], list[str]]:
    """Run the stages, then predict the test split; storage failures behind TensorFlow errors surface."""
    remote = spec.dataset.uri.startswith("s3://")
    cache = DiskCache(scratch / "images", _DISK_CACHE_BYTES) if remote else None
    data_storage = open_storage(spec.dataset.uri, spec.storage)
    with ImageLoader(data_storage, threads=32 if remote else 4, cache=cache) as loader:
        source = PipelineSource(splits, loader, parts.image_size)
        store = CheckpointStore(spec.output.uri, run_id, spec.storage, spec_hash(spec))
        runner = StageRunner(
            parts,
            spec,
            source,
            store=store,
            tracker=tracker,
            strategy=strategy,
            verbose=verbose,
            extra_callbacks=extra_callbacks,
        )
        try:
            phase = time.monotonic()
            runner.run_all()
            timings["train"] = time.monotonic() - phase
            tracker.set_state("exporting")
            phase = time.monotonic()
            probabilities, labels = predict_split(parts.model, source, "test")
            timings["evaluate"] = time.monotonic() - phase
        except tf.errors.OpError:
            if loader.failure is not None:
                raise loader.failure from None
            raise
        loader.report_skipped()
        return runner, store, probabilities, labels, loader.skipped


def _model_record(spec: TransferJobSpec, loaded: LoadedBackbone, parts: TransferModel) -> dict[str, Any]:
    return {
        "backbone": spec.model.backbone,
        "weights": loaded.source,
        "imageSize": parts.image_size,
        "preprocess": loaded.preprocess_mode,
        "classifier": spec.classifier,
        **trainable_summary(parts),
    }


def write_version(build: Path, parts: TransferModel, spec: TransferJobSpec, class_names: list[str]) -> None:
    """Write a version's model files into a fresh local folder: SavedModel, labels, asked formats, the spec.

    Args:
        build: The folder (replaced if it exists).
        parts: The trained model.
        spec: The spec, written next to the model as transferjob.json.
        class_names: Class names in output order.
    """
    shutil.rmtree(build, ignore_errors=True)
    write_savedmodel(parts.model, class_names, parts.image_size, build)
    write_labels(class_names, build / LABELS_FILE)
    if "keras" in spec.output.formats:
        write_keras(parts.model, build / KERAS_FILE)
    if "tflite" in spec.output.formats:
        write_tflite(parts.model, parts.image_size, build / TFLITE_FILE)
    (build / SPEC_FILE).write_text(spec.model_dump_json(by_alias=True, indent=1) + "\n", encoding="utf-8")


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
        The `ExitCode`: SUCCEEDED, INVALID (spec or data wrong, do not retry) or RETRYABLE.
    """
    tracker = ProgressTracker()
    server: ProgressServer | None = None
    try:
        server = ProgressServer(tracker, progress_port).start()
        log.info("progress on port %d (/progress, /metrics)", server.port)
    except OSError as exc:
        log.warning("progress server not started: %s", exc)
    code = ExitCode.RETRYABLE
    try:
        spec = load_spec(spec_path)
        train(spec, run_id=run_id, tracker=tracker, verbose=verbose)
        code = ExitCode.SUCCEEDED
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
    print(json.dumps({"state": state.state, "reason": state.reason, "modelUri": state.model_uri}), flush=True)
    return int(code)
