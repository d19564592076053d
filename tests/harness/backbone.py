"""Test harness: the tests' stand-in for ImageNet weights, a small backbone pretrained on Fashion-MNIST 5-9.

No pretrained weights can be downloaded here, so the transfer tests pretrain their own source model:
`keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None, include_top=False,
pooling="avg")` trained on the Fashion-MNIST classes 5-9 (sandal, shirt, sneaker, bag, ankle boot). The target
tasks use classes 0-4, which the backbone never saw.

The recipe avoids the BatchNormalization trap (see shared/README.md): after training, the moving statistics
are re-estimated as the exact average of batch statistics over the training images (network in training mode,
no weight update), and the backbone is accepted only if a linear probe on its inference-mode features reaches
`MIN_PROBE_ACCURACY` on held-out source images.

The result is cached under `<repo>/.cache/backbones/<RECIPE_VERSION>/backbone.keras` (or
`$KUBEGRAFT_TEST_CACHE`) so test sessions and CI build it once; a file lock keeps parallel sessions from
building it twice. Run `python -m tests.harness.backbone` to build it ahead of a test session.

Used by the session-scoped fixture `pretrained_backbone` (registered as a pytest plugin in tests/conftest.py).
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Bump when anything below changes the produced backbone: caches keyed by an older version are ignored.
RECIPE_VERSION = "mnv2-a035-32px-fmnist5to9-v1"
SOURCE_CLASSES = (5, 6, 7, 8, 9)
IMAGE_SIZE = 32
TRAIN_PER_CLASS = 1200
PROBE_TEST_PER_CLASS = 200
EPOCHS = 5
BATCH_SIZE = 64
MIN_PROBE_ACCURACY = 0.75

_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
_REPO = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Where built backbones are kept: ``$KUBEGRAFT_TEST_CACHE`` or ``<repo>/.cache``."""
    return Path(os.environ.get("KUBEGRAFT_TEST_CACHE", str(_REPO / ".cache"))) / "backbones" / RECIPE_VERSION


def _read_idx(path: Path) -> np.ndarray[Any, Any]:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _source_images(
    split: str, per_class: int, seed: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Fashion-MNIST source-class images as float32 RGB 32x32 pixels (0..255) and labels 0..4."""
    import tensorflow as tf

    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(_FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    picked: list[np.ndarray[Any, Any]] = []
    for cls in SOURCE_CLASSES:
        idx = np.flatnonzero(labels == cls)
        picked.append(rng.choice(idx, size=min(per_class, idx.size), replace=False))
    order = rng.permutation(np.concatenate(picked))
    gray = images[order].astype("float32")[..., None]
    # The trainer decodes PNGs to RGB and resizes bilinearly; do the same here.
    rgb = tf.image.resize(tf.image.grayscale_to_rgb(tf.constant(gray)), (IMAGE_SIZE, IMAGE_SIZE)).numpy()
    target = np.searchsorted(np.array(SOURCE_CLASSES), labels[order]).astype("int32")
    return np.clip(rgb, 0.0, 255.0).astype("float32"), target


def reestimate_batch_norm(backbone: Any, images: np.ndarray[Any, Any], batch_size: int = 128) -> None:
    """Replace every BatchNormalization layer's moving statistics by the average of its batch statistics.

    Runs the images through the backbone in training mode (no weight update) with a per-step momentum of
    ``k / (k + 1)``, which makes the moving mean and variance the exact running average over all batches.

    Args:
        backbone: A Keras model whose input takes preprocessed images.
        images: Preprocessed images, a float32 array [N, H, W, 3].
        batch_size: Images per forward pass.
    """
    import keras

    bn_layers = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in bn_layers]
    try:
        for step, start in enumerate(range(0, len(images) - batch_size + 1, batch_size)):
            for layer in bn_layers:
                layer.momentum = step / (step + 1.0)
            backbone(images[start : start + batch_size], training=True)
    finally:
        for layer, momentum in zip(bn_layers, saved, strict=True):
            layer.momentum = momentum


def linear_probe_accuracy(backbone: Any, preprocess: Any, seed: int = 7) -> float:
    """Test accuracy of a logistic regression on inference-mode features of held-out source images."""
    from sklearn.linear_model import LogisticRegression

    train_x, train_y = _source_images("train", 300, seed)
    test_x, test_y = _source_images("test", PROBE_TEST_PER_CLASS, seed)
    train_f = backbone.predict(preprocess(train_x), batch_size=256, verbose=0)
    test_f = backbone.predict(preprocess(test_x), batch_size=256, verbose=0)
    probe = LogisticRegression(max_iter=2000).fit(train_f, train_y)
    return float(probe.score(test_f, test_y))


def build_backbone(target: Path, seed: int = 1234) -> dict[str, Any]:
    """Pretrain, repair BN statistics, probe and save the backbone to ``target`` (a .keras file).

    Args:
        target: Path of the .keras file to write.
        seed: Seed of sampling and weight initialisation.

    Returns:
        The recipe record written next to it (timings, probe accuracy, versions).

    Raises:
        RuntimeError: The backbone's inference-mode features fail the linear probe.
    """
    import keras

    started = time.monotonic()
    keras.utils.set_random_seed(seed)
    images, labels = _source_images("train", TRAIN_PER_CLASS, seed)

    def preprocess(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return (x / 127.5 - 1.0).astype("float32")  # MobileNetV2's "tf" mode, as the trainer applies it

    backbone = keras.applications.MobileNetV2(
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9  # lags the weights less than 0.999 on a short schedule
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    outputs = keras.layers.Dense(len(SOURCE_CLASSES), activation="softmax")(backbone(inputs))
    classifier = keras.Model(inputs, outputs)
    classifier.compile(
        optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    x = preprocess(images)
    history = classifier.fit(x, labels, batch_size=BATCH_SIZE, epochs=EPOCHS, verbose=0, shuffle=True)
    trained_at = time.monotonic()

    reestimate_batch_norm(backbone, x)
    probe = linear_probe_accuracy(backbone, preprocess)
    if probe < MIN_PROBE_ACCURACY:
        raise RuntimeError(f"pretrained backbone fails its linear probe: {probe:.3f} < {MIN_PROBE_ACCURACY}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp.keras")
    backbone.save(tmp)
    record = {
        "recipe": RECIPE_VERSION,
        "train_accuracy": float(history.history["accuracy"][-1]),
        "probe_accuracy": probe,
        "train_seconds": round(trained_at - started, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "keras": keras.__version__,
    }
    target.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(target)
    return record


def cached_backbone() -> Path | None:
    """The cached backbone if a complete one is there: a readable `.keras` archive and its record.

    Decided from the files themselves, not from their mere presence: a truncated archive or a missing record
    (a build killed half-way, a cache copied from elsewhere) counts as absent and is built again.
    """
    target = cache_dir() / "backbone.keras"
    record = target.with_suffix(".json")
    try:
        with zipfile.ZipFile(target) as archive:
            complete = archive.testzip() is None and "config.json" in archive.namelist()
        recipe = json.loads(record.read_text()).get("recipe")
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    return target if complete and recipe == RECIPE_VERSION else None


def ensure_backbone() -> Path:
    """The cached backbone's path, building it first if no session has yet (one builder at a time)."""
    found = cached_backbone()
    if found is not None:
        return found
    target = cache_dir() / "backbone.keras"
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached_backbone() is None:
            build_backbone(target)
    return target


@pytest.fixture(scope="session")
def pretrained_backbone() -> Iterator[Path]:
    """Path of a `.keras` MobileNetV2 (alpha 0.35, 32 px) pretrained on Fashion-MNIST classes 5-9."""
    yield ensure_backbone()


if __name__ == "__main__":
    path = ensure_backbone()
    print(path)
    print(path.with_suffix(".json").read_text())
