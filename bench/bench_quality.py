"""Quality by default: test accuracy of the candidate recipes on the developers' small transfer task, one run.

Task: Fashion-MNIST target classes 0-4 (never seen by the backbone), 100 training images per class, RGB 32 px
(bilinear, as the trainer decodes them); test on held-out t10k images of the same classes (`TEST_PER_CLASS`
each). Backbone: the tests' cached MobileNetV2 (alpha 0.35, 32 px) pretrained on classes 5-9 with its BN
statistics re-estimated (`tests.harness.backbone`).

Recipes, each written plainly here (not through the trainer's modules) so the numbers stay comparable while
the trainer changes:
- tutorial: frozen backbone + head (Dropout 0.3, Dense 256 ReLU, Dropout 0.3, softmax) on augmented images
  (rotation 30 degrees, zoom 0.2, shear 0.2), adam 1e-3 for `HEAD_EPOCHS`; then the top third of the
  backbone's layers unfrozen (BN frozen, backbone called with training=False), sgd 1e-4 momentum 0.9 for
  `HEAD_EPOCHS`.
- head on cached features: the same head on un-augmented inference-mode features, same epochs.
- linear on cached features: standardised features, logistic regression, C by 3-fold CV on train (BLAS
  single-threaded, as in the pixel baseline).
- pixel baseline: `kubegraft_trainer.baseline.fit_pixel_baseline` (16 px, C by CV on train).
- RBF SVM: the baseline's 16 px standardised pixels, C and gamma by 3-fold CV on train.
- full fine-tune: every backbone layer trainable, backbone called with training=False (BN in inference mode),
  adam 1e-3, `FULL_EPOCHS` epochs, no augmentation.
- pixel model: `kubegraft_trainer.pixels.fit_pixel_candidate` on all training images (the pixel baseline or
  an RBF kernel logistic regression on the same pixels, whichever cross-validates better).
- default spec: a TransferJob with only dataset, output and model (strategy auto) through the trainer's own
  code (`kubegraft_trainer.run.train_on_source`): 15% of the training images (stratified) are its validation
  split, on which the search chooses; every transfer candidate and every contender of the final selection
  (best transfer recipe, pixel model, ensemble) is also scored on the test images (never seen by the choice),
  and the published model is exported as a SavedModel and scored again from PNG bytes.
- end-to-end timing: `kubegraft_trainer.run.train` on a class-folder data set of `TIMING_PER_CLASS` images per
  class (1,000 in all) with the default spec, its own split (15% validation, 15% test). Alone (a few minutes
  instead of half an hour, nothing written to docs/benchmarks.md): `python -m bench.bench_quality end-to-end`.
- BN trap: a MobileNetV2 pretrained briefly from scratch on classes 5-9 with Keras' default BN momentum; its
  inference-mode feature spread and source test accuracy before and after
  `kubegraft_trainer.health.reestimate_batchnorm_statistics`.

Every row's time is its own wall time (fit and test predictions); the cached-feature rows exclude the one
feature extraction, reported separately. Times share 2 busy CPU cores: read them as rough ratios.
"""

from __future__ import annotations

import io
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from tests.harness.backbone import ensure_backbone
from tests.integration.quality.task import preprocess_tf, transfer_arrays
from threadpoolctl import threadpool_limits

from kubegraft.spec import StorageSpec, TransferJobSpec
from kubegraft_trainer.backbones import load_backbone
from kubegraft_trainer.baseline import area_downsample, fit_pixel_baseline
from kubegraft_trainer.checkpoints import CheckpointStore
from kubegraft_trainer.export import write_savedmodel
from kubegraft_trainer.health import batchnorm_layers, feature_spread, reestimate_batchnorm_statistics
from kubegraft_trainer.model import TransferModel, build_transfer_model
from kubegraft_trainer.pixels import fit_pixel_candidate
from kubegraft_trainer.progress import ProgressTracker
from kubegraft_trainer.run import train, train_on_source
from kubegraft_trainer.search import CandidateResult
from kubegraft_trainer.sources import ArraySource

TRAIN_PER_CLASS = 100
TEST_PER_CLASS = int(os.environ.get("BENCH_QUALITY_TEST_PER_CLASS", "200"))
HEAD_EPOCHS = int(os.environ.get("BENCH_QUALITY_HEAD_EPOCHS", "10"))
FULL_EPOCHS = int(os.environ.get("BENCH_QUALITY_FULL_EPOCHS", "30"))
TIMING_PER_CLASS = int(os.environ.get("BENCH_QUALITY_TIMING_PER_CLASS", "200"))
VALIDATION_PER_CLASS = 15  # the trainer's default validationSplit 0.15 of 100 images per class
STALE_PER_CLASS = 300
STALE_EPOCHS = 2
BATCH_SIZE = 32
SEED = 0
NUM_CLASSES = 5

Array = np.ndarray[Any, Any]


def _head(feature_dim: int) -> keras.Model:
    inputs = keras.Input((feature_dim,))
    x = keras.layers.Dropout(0.3)(inputs)
    x = keras.layers.Dense(256, activation="relu")(x)
    x = keras.layers.Dropout(0.3)(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, activation="softmax")(x))


def _compile(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def _accuracy(model: keras.Model, x: Array, y: Array) -> float:
    predicted = np.argmax(model.predict(x, batch_size=128, verbose=0), axis=1)
    return float(np.mean(predicted == y))


def _load_backbone() -> keras.Model:
    return keras.saving.load_model(ensure_backbone())


def _pixel_model(backbone: keras.Model, *, augment: bool) -> keras.Model:
    """Raw pixels (0..255) -> [augmentation] -> "tf" preprocessing -> backbone (inference mode) -> head."""
    inputs = keras.Input((32, 32, 3))
    x = inputs
    if augment:
        x = keras.layers.RandomRotation(30 / 360, seed=SEED + 1)(x)
        x = keras.layers.RandomZoom((-0.2, 0.2), seed=SEED + 2)(x)
        x = keras.layers.RandomShear(x_factor=0.2, y_factor=0.2, seed=SEED + 3)(x)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(x)
    features = backbone(x, training=False)
    return keras.Model(inputs, _head(int(features.shape[-1]))(features))


def _tutorial(train: tuple[Array, Array], test: tuple[Array, Array]) -> tuple[float, float]:
    """Accuracy after the frozen-head stage and after fine-tuning the top third."""
    keras.utils.set_random_seed(SEED)
    backbone = _load_backbone()
    backbone.trainable = False
    model = _pixel_model(backbone, augment=True)
    _compile(model, keras.optimizers.Adam(1e-3))
    model.fit(*train, batch_size=BATCH_SIZE, epochs=HEAD_EPOCHS, verbose=0, shuffle=True)
    head_only = _accuracy(model, *test)
    backbone.trainable = True
    layers = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    top = len(layers) - len(layers) // 3
    for index, layer in enumerate(layers):
        layer.trainable = index >= top and not isinstance(layer, keras.layers.BatchNormalization)
    _compile(model, keras.optimizers.SGD(1e-4, momentum=0.9))
    model.fit(*train, batch_size=BATCH_SIZE, epochs=HEAD_EPOCHS, verbose=0, shuffle=True)
    return head_only, _accuracy(model, *test)


def _full_finetune(train: tuple[Array, Array], test: tuple[Array, Array]) -> float:
    keras.utils.set_random_seed(SEED)
    backbone = _load_backbone()
    backbone.trainable = True
    model = _pixel_model(backbone, augment=False)
    _compile(model, keras.optimizers.Adam(1e-3))
    model.fit(*train, batch_size=BATCH_SIZE, epochs=FULL_EPOCHS, verbose=0, shuffle=True)
    return _accuracy(model, *test)


def _cached_head(train_f: Array, train_y: Array, test_f: Array, test_y: Array) -> float:
    keras.utils.set_random_seed(SEED)
    head = _head(train_f.shape[1])
    _compile(head, keras.optimizers.Adam(1e-3))
    head.fit(train_f, train_y, batch_size=BATCH_SIZE, epochs=HEAD_EPOCHS, verbose=0, shuffle=True)
    return _accuracy(head, test_f, test_y)


def _folds() -> StratifiedKFold:
    return StratifiedKFold(n_splits=3, shuffle=True, random_state=SEED)


def _cached_linear(train_f: Array, train_y: Array, test_f: Array, test_y: Array) -> tuple[float, str]:
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    search = GridSearchCV(pipeline, {"logisticregression__C": [0.001, 0.01, 0.1, 1.0]}, cv=_folds())
    with threadpool_limits(limits=1, user_api="blas"):  # as the pixel baseline runs (see its module)
        search.fit(train_f, train_y)
        accuracy = float(search.score(test_f, test_y))
    return accuracy, f"C={search.best_params_['logisticregression__C']}"


def _rbf_svm(train_x: Array, train_y: Array, test_x: Array, test_y: Array) -> tuple[float, str]:
    # The baseline's features: 16 px area-downsampled grayscale (the RGB channels are equal here).
    train_f, test_f = (area_downsample(x, 16).mean(axis=-1).reshape(len(x), -1) for x in (train_x, test_x))
    scale = 1.0 / train_f.shape[1]  # gamma "scale" on standardised features
    grid = {"svc__C": [1.0, 10.0, 100.0], "svc__gamma": [scale / 3, scale, scale * 3]}
    search = GridSearchCV(make_pipeline(StandardScaler(), SVC(kernel="rbf")), grid, cv=_folds())
    with threadpool_limits(limits=1, user_api="blas"):
        search.fit(train_f, train_y)
        accuracy = float(search.score(test_f, test_y))
    best = search.best_params_
    return accuracy, f"C={best['svc__C']:g}, gamma={best['svc__gamma']:.2g}"


def _bn_trap() -> dict[str, float]:
    """Pretrain a MobileNetV2 briefly with default BN momentum; spread and accuracy before/after repair."""
    keras.utils.set_random_seed(SEED)
    source = (5, 6, 7, 8, 9)
    train_x, train_y = transfer_arrays("train", STALE_PER_CLASS, classes=source, seed=SEED)
    test_x, test_y = transfer_arrays("test", 200, classes=source, seed=SEED)
    train_p, test_p = preprocess_tf(train_x), preprocess_tf(test_x)
    backbone = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )
    inputs = keras.Input((32, 32, 3))
    classifier = keras.Model(inputs, keras.layers.Dense(len(source), activation="softmax")(backbone(inputs)))
    _compile(classifier, keras.optimizers.Adam(2e-3))
    started = time.monotonic()
    history = classifier.fit(train_p, train_y, batch_size=64, epochs=STALE_EPOCHS, verbose=0, shuffle=True)
    pretrain_s = time.monotonic() - started
    sample = train_p[:512]
    before = feature_spread(backbone, sample)
    accuracy_before = _accuracy(classifier, test_p, test_y)
    started = time.monotonic()
    layers = reestimate_batchnorm_statistics(backbone, train_p)
    repair_s = time.monotonic() - started
    return {
        "train_accuracy": float(history.history["accuracy"][-1]),
        "pretrain_s": pretrain_s,
        "spread_before": before,
        "accuracy_before": accuracy_before,
        "spread_after": feature_spread(backbone, sample),
        "accuracy_after": _accuracy(classifier, test_p, test_y),
        "repair_s": repair_s,
        "layers": float(layers),
        "images": float(len(train_p)),
    }


def _default_spec(data_uri: str, output_uri: str) -> TransferJobSpec:
    """The smallest TransferJob: dataset, output and model (backbone and weights) only."""
    return TransferJobSpec.model_validate(
        {
            "dataset": {"uri": data_uri, "imageSize": 32},
            "model": {"backbone": "MobileNetV2", "weights": str(ensure_backbone())},
            "output": {"uri": output_uri},
        }
    )


def _stratified_validation(y: Array) -> Array:
    """Indices of `VALIDATION_PER_CLASS` images of each class (the first ones, the arrays are shuffled)."""
    return np.concatenate([np.flatnonzero(y == c)[:VALIDATION_PER_CLASS] for c in range(NUM_CLASSES)])


def _savedmodel_accuracy(model: keras.Model, x: Array, y: Array, folder: Path) -> float:
    """Export through the trainer's SavedModel path and classify PNG bytes with its serving signature."""
    import tensorflow as tf

    names = [str(c) for c in range(NUM_CLASSES)]
    write_savedmodel(model, names, 32, folder)
    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    pngs = [tf.io.encode_png(np.round(image).astype("uint8")).numpy() for image in x]
    predicted: list[int] = []
    for start in range(0, len(pngs), 256):
        out = serve(images=tf.constant(pngs[start : start + 256]))
        predicted.extend(np.argmax(out["probabilities"].numpy(), axis=1).tolist())
    return float(np.mean(np.asarray(predicted) == y))


def _default_spec_run(
    train: tuple[Array, Array], test: tuple[Array, Array]
) -> tuple[dict[str, Any], list[tuple[CandidateResult, float]], float]:
    """The default spec through the trainer's search on the bench split; each candidate scored on test."""
    keras.utils.set_random_seed(SEED)
    x, y = train
    val = _stratified_validation(y)
    keep = np.setdiff1d(np.arange(len(y)), val)
    source = ArraySource({"train": (x[keep], y[keep]), "validation": (x[val], y[val]), "test": test})
    scratch = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    spec = _default_spec(str(scratch / "data"), str(scratch / "models"))
    loaded = load_backbone(spec.model, 32, StorageSpec())
    parts = build_transfer_model(loaded, spec.model.head, NUM_CLASSES, spec.augmentation)
    scored: list[tuple[CandidateResult, float]] = []

    def score(name: str, result: CandidateResult, model: TransferModel) -> None:
        scored.append((result, _accuracy(model.model, *test)))
        print(f"candidate {name}: validation {result.validation_accuracy:.3f} test {scored[-1][1]:.3f}")

    timings: dict[str, float] = {}
    trained = train_on_source(
        spec,
        source,
        loaded,
        parts,
        num_classes=NUM_CLASSES,
        store=CheckpointStore(str(scratch / "models"), "bench", StorageSpec(), "bench"),
        strategy=__import__("tensorflow").distribute.get_strategy(),
        run_id="bench",
        tracker=ProgressTracker(out=io.StringIO()),
        timings=timings,
        on_candidate=score,
    )
    assert trained.search is not None
    assert trained.search.selection is not None
    accuracy = float(np.mean(np.argmax(trained.probabilities, axis=1) == trained.labels))
    served = _savedmodel_accuracy(trained.published, *test, scratch / "savedmodel")
    shutil.rmtree(scratch, ignore_errors=True)
    selection = trained.search.selection
    contenders = [(c.record(), _accuracy(c.model, *test)) for c in selection.contenders]
    for contender, test_accuracy in contenders:
        print(f"contender {contender}: test {test_accuracy:.3f}", flush=True)
    record = {
        "published": selection.published.name,
        "published_description": selection.published.description,
        "margin": selection.margin(),
        "reason": selection.reason,
        "contenders": contenders,
        "transfer_test": trained.transfer_accuracy,
        "chosen": trained.search.name,
        "recipe": trained.search.runner.recipe(),
        "validation": trained.search.record()["validation_accuracy"],
        "test": accuracy,
        "served": served,
        "baseline": trained.baseline.get("accuracy"),
        "search_s": trained.search.seconds,
        "health": trained.health["before_training"],
        "timings": timings,
    }
    return record, scored, served


def _end_to_end_timing() -> dict[str, Any]:
    """`train` with the default spec on class folders of TIMING_PER_CLASS images per class (wall time)."""
    from tests.harness.fashion import write_class_folders

    scratch = Path(tempfile.mkdtemp(prefix="bench-quality-timing-"))
    data = write_class_folders(scratch / "data", (0, 1, 2, 3, 4), TIMING_PER_CLASS, split="train", seed=1)
    spec = _default_spec(str(data), str(scratch / "models"))
    started = time.monotonic()
    result = train(spec, tracker=ProgressTracker(out=io.StringIO()))
    seconds = time.monotonic() - started
    metrics = result.metrics
    shutil.rmtree(scratch, ignore_errors=True)
    return {
        "seconds": seconds,
        "images": NUM_CLASSES * TIMING_PER_CLASS,
        "chosen": metrics["search"]["chosen"],
        "recipe": metrics["search"]["recipe"],
        "published": metrics["search"].get("published"),
        "contenders": {
            c["name"]: c["validation_accuracy"] for c in metrics.get("selection", {}).get("contenders", [])
        },
        "transfer_test": metrics.get("selection", {}).get("transfer_test_accuracy"),
        "reason": metrics.get("selection", {}).get("reason", ""),
        "test": metrics["testAccuracy"],
        "baseline": metrics.get("baseline_accuracy"),
        "search_s": metrics["search"]["seconds"],
        "candidates": len([c for c in metrics["search"]["candidates"] if c["status"] != "skipped"]),
    }


def _end_to_end_line(timing: dict[str, Any]) -> str:
    """The end-to-end case's sentence: time, what was published and why, test against the baseline."""
    verdict = "at or above it" if timing["test"] >= timing["baseline"] else "below it"
    lead = timing["test"] - timing["baseline"]
    contenders = ", ".join(f"{name} {score:.3f}" for name, score in timing["contenders"].items())
    return (
        f"End to end, the default spec on {timing['images']} images at 32 px (`train`, its own 70/15/15 "
        f"split, {timing['candidates']} candidates run): {timing['seconds']:.0f} s "
        f"({timing['seconds'] / 60:.1f} min, target under 10 min: "
        f"{'met' if timing['seconds'] < 600 else 'not met'}); search {timing['search_s']:.0f} s; best "
        f"transfer recipe {timing['chosen']} ({timing['recipe']}); published {timing['published']} "
        f"(validation: {contenders}; {timing['reason']}); test accuracy {timing['test']:.3f} "
        f"against the baseline's {timing['baseline']:.3f} ({verdict}, {lead:+.3f}; "
        f"the best transfer recipe alone: {timing['transfer_test']:.3f})."
    )


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


def run() -> str:
    """Measure every recipe and return the Markdown section."""
    started = time.monotonic()
    train = transfer_arrays("train", TRAIN_PER_CLASS, seed=SEED)
    test = transfer_arrays("test", TEST_PER_CLASS, seed=SEED)
    ensure_backbone()
    rows: list[tuple[str, str, float, float]] = []

    def add(name: str, detail: str, accuracy: float, seconds: float) -> None:
        rows.append((name, detail, accuracy, seconds))
        print(f"{name}: {accuracy:.3f} in {seconds:.1f} s ({detail})", flush=True)

    baseline, seconds = _timed(lambda: fit_pixel_baseline(*train, seed=SEED))
    pixel_accuracy, predict_s = _timed(lambda: baseline.score(*test))
    add(
        "pixel baseline (logistic regression)",
        f"16 px, C={baseline.c:g}",
        pixel_accuracy,
        seconds + predict_s,
    )
    (svm_accuracy, svm_detail), seconds = _timed(lambda: _rbf_svm(*train, *test))
    add("RBF SVM on pixels", svm_detail, svm_accuracy, seconds)
    pixel_model, seconds = _timed(lambda: fit_pixel_candidate(*train, seed=SEED))
    pixel_model_accuracy, predict_s = _timed(
        lambda: float(np.mean(np.argmax(pixel_model.predict_proba(test[0]), axis=1) == test[1]))
    )
    cv = ", ".join(f"{k} {v:.3f}" for k, v in pixel_model.cv_accuracy.items())
    add(
        "pixel model (kubegraft_trainer.pixels)",
        f"{pixel_model.describe()}; CV {cv}",
        pixel_model_accuracy,
        seconds + predict_s,
    )

    (default, scored, served), default_s = _timed(lambda: _default_spec_run(train, test))
    for result, accuracy in scored:
        add(
            f"auto candidate {result.name}",
            f"{result.recipe}; validation {result.validation_accuracy:.3f}; {result.epochs} epochs; "
            f"{result.status}",
            accuracy,
            result.seconds,
        )
    for contender, accuracy in default["contenders"]:
        add(
            f"auto contender {contender['name']} ({contender['kind']})",
            f"{contender['description']}; validation {contender['validation_accuracy']:.3f}",
            accuracy,
            float("nan"),
        )
    add(
        "**default spec** (strategy auto)",
        f"published {default['published']} on validation ({default['margin']:+.3f} over the next contender: "
        f"{default['reason']}); "
        f"best transfer recipe {default['chosen']} (validation {default['validation']:.3f}); SavedModel from "
        f"PNG bytes {served:.3f}; time = whole search and selection, health check, baseline",
        default["test"],
        default_s,
    )

    backbone = _load_backbone()
    (train_f, test_f), extract_s = _timed(
        lambda: tuple(
            backbone.predict(preprocess_tf(x), batch_size=128, verbose=0) for x in (train[0], test[0])
        )
    )
    healthy_spread = feature_spread(backbone, preprocess_tf(train[0]))
    (linear_accuracy, linear_detail), seconds = _timed(
        lambda: _cached_linear(train_f, train[1], test_f, test[1])
    )
    add("linear on cached features (plain)", linear_detail, linear_accuracy, seconds)
    head_accuracy, seconds = _timed(lambda: _cached_head(train_f, train[1], test_f, test[1]))
    add("head on cached features (plain)", f"{HEAD_EPOCHS} epochs adam 1e-3", head_accuracy, seconds)

    (tutorial_head, tutorial_final), seconds = _timed(lambda: _tutorial(train, test))
    add("tutorial: frozen + augmented head", f"{HEAD_EPOCHS} epochs adam 1e-3", tutorial_head, float("nan"))
    add(
        "tutorial: + fine-tune top third",
        f"then {HEAD_EPOCHS} epochs sgd 1e-4; time for both stages",
        tutorial_final,
        seconds,
    )
    full_accuracy, seconds = _timed(lambda: _full_finetune(train, test))
    add(
        "full fine-tune, BN inference mode (plain)", f"{FULL_EPOCHS} epochs adam 1e-3", full_accuracy, seconds
    )

    timing = _end_to_end_timing() if TIMING_PER_CLASS else None
    print(f"timing: {timing}", flush=True)
    trap = _bn_trap()
    print(f"bn trap: {trap}", flush=True)

    table = [
        "| recipe | settings | test accuracy | gain over pixels | wall s |",
        "|---|---|---:|---:|---:|",
    ]
    for name, detail, accuracy, seconds in rows:
        shown = "(in the default spec's)" if np.isnan(seconds) else f"{seconds:.1f}"
        if name.startswith("tutorial: frozen"):
            shown = "(in next row)"
        table.append(f"| {name} | {detail} | {accuracy:.3f} | {accuracy - pixel_accuracy:+.3f} | {shown} |")
    layers = len(batchnorm_layers(backbone))
    tutorial = max(tutorial_head, tutorial_final)
    ours = float(default["test"])
    targets = [
        f"Targets: default spec {ours:.3f} against the RBF SVM's {svm_accuracy:.3f} "
        f"({'met' if ours >= svm_accuracy else 'not met'}, {ours - svm_accuracy:+.3f}); against the pixel "
        f"LR's {pixel_accuracy:.3f} ({'met' if ours >= pixel_accuracy else 'not met'}, "
        f"{ours - pixel_accuracy:+.3f}); "
        f"against the tutorial recipe's {tutorial:.3f} + 0.20 "
        f"({'met' if ours >= tutorial + 0.2 else 'not met'}, {ours - tutorial:+.3f}). "
        f"The trainer's own baseline (same pixel model, fitted on the {len(train[1]) - 75} training images "
        f"the search trains on): {default['baseline']:.3f} (the published model "
        f"{'at or above it' if ours >= default['baseline'] else 'below it'}, "
        f"{ours - default['baseline']:+.3f}); "
        f"the best transfer recipe alone: {default['transfer_test']:.3f}.",
    ]
    if timing is not None:
        targets.append(_end_to_end_line(timing))
    return "\n".join(
        [
            "## Quality: recipes on a small transfer task",
            "",
            f"Fashion-MNIST classes 0-4, {TRAIN_PER_CLASS} training images per class, RGB 32 px; test "
            f"on {NUM_CLASSES * TEST_PER_CLASS} held-out t10k images. Backbone: MobileNetV2 alpha 0.35 "
            "pretrained on classes 5-9 (tests.harness.backbone, BN statistics re-estimated). Machine: "
            f"{platform.machine()}, {os.cpu_count()} CPUs shared with other work; Keras {keras.__version__}. "
            f"Feature extraction for the plain cached rows: {extract_s:.1f} s (not in their times). The "
            f"auto rows and the default spec train on {len(train[1]) - 75} images and choose on the other "
            "75 (the trainer's validation split); the other rows train on all of them. See docs/quality.md.",
            "",
            *table,
            "",
            *targets,
            "",
            "Backbone health. The pretrained backbone's inference-mode feature spread on the target "
            f"training images: {healthy_spread:.3f} (threshold 0.01; {layers} BN layers); the trainer's "
            f"check in the default spec run: {default['health'].get('spread_before', float('nan')):.3f}, "
            f"repaired: {default['health'].get('repaired')}. A MobileNetV2 "
            f"pretrained from scratch for {STALE_EPOCHS} epochs on {int(trap['images'])} source images with "
            f"Keras' default BN momentum ({trap['pretrain_s']:.0f} s, training accuracy "
            f"{trap['train_accuracy']:.2f}): spread {trap['spread_before']:.2g} and source test accuracy "
            f"{trap['accuracy_before']:.3f} in inference mode; after re-estimating {int(trap['layers'])} BN "
            f"layers on the same images ({trap['repair_s']:.1f} s): spread {trap['spread_after']:.3f}, "
            f"accuracy {trap['accuracy_after']:.3f}.",
            "",
            f"Total {time.monotonic() - started:.0f} s. Command: `BENCH=quality make bench`.",
        ]
    )


def run_end_to_end() -> str:
    """Only the end-to-end case (`python -m bench.bench_quality end-to-end`): minutes, not half an hour."""
    started = time.monotonic()
    ensure_backbone()
    timing = _end_to_end_timing()
    line = _end_to_end_line(timing)
    command = "`python -m bench.bench_quality end-to-end`"
    return f"{line}\n\nTotal {time.monotonic() - started:.0f} s. Command: {command}."


if __name__ == "__main__":
    print(run_end_to_end() if sys.argv[1:] == ["end-to-end"] else run())
