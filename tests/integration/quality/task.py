"""The developers' small transfer task as arrays: Fashion-MNIST images as the trainer sees them (RGB 32 px).

Shared by the quality tests and bench/bench_quality.py. Target classes 0-4 (the backbone never saw them),
picked deterministically with `tests.harness.fashion.pick_indices`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from tests.harness.fashion import load_fashion_mnist, pick_indices

TARGET_CLASSES = (0, 1, 2, 3, 4)
IMAGE_SIZE = 32


def transfer_arrays(
    split: Literal["train", "test"],
    per_class: int,
    *,
    classes: Sequence[int] = TARGET_CLASSES,
    seed: int = 0,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Images as float32 RGB [N, 32, 32, 3] in 0..255 (bilinear resize, like the trainer) and labels 0..K-1.

    Args:
        split: Fashion-MNIST split (``test`` is the held-out t10k set).
        per_class: Images per class.
        classes: Fashion-MNIST labels; label i of the result is ``classes[i]``.
        seed: Seed of the image choice.

    Returns:
        ``(images, labels)``, shuffled from ``seed``.
    """
    import tensorflow as tf

    images, _ = load_fashion_mnist(split)
    chosen = pick_indices(split, classes, per_class, seed=seed)
    index = np.concatenate([chosen[c] for c in classes])
    labels = np.repeat(np.arange(len(classes)), per_class)
    order = np.random.default_rng(seed).permutation(len(index))
    gray = tf.constant(images[index[order]].astype("float32")[..., None])
    rgb = tf.image.resize(tf.image.grayscale_to_rgb(gray), (IMAGE_SIZE, IMAGE_SIZE)).numpy()
    return np.clip(rgb, 0.0, 255.0).astype("float32"), labels[order].astype("int64")


def preprocess_tf(images: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """MobileNetV2's "tf" preprocessing: pixels 0..255 to [-1, 1]."""
    return (images / 127.5 - 1.0).astype("float32")
