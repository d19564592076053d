"""The serving signature's outputs: ranked ``classes`` and ``scores`` aligned column by column, and
``probabilities`` in labels.txt order (the TF Serving classify convention)."""

from __future__ import annotations

import io
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from kubegraft_trainer.export import SERVING_SIGNATURE, serving_function, write_savedmodel

NAMES = ["ant", "bee", "cat"]
SIDE = 4


def _colour_model() -> keras.Model:
    """Mean colour -> softmax over three classes, with fixed weights: red favours ant, green bee, blue cat."""
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(3, activation="softmax")
    outputs = dense(x)
    dense.set_weights([np.eye(3, dtype="float32") / 40.0, np.zeros(3, "float32")])
    return keras.Model(inputs, outputs)


def _png(rgb: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


COLOURS = [(200, 10, 90), (0, 120, 250), (30, 255, 0), (80, 80, 80)]


def _check_aligned(outputs: dict[str, tf.Tensor]) -> None:
    probabilities = outputs["probabilities"].numpy()
    scores = outputs["scores"].numpy()
    classes = [[c.decode() for c in row] for row in outputs["classes"].numpy()]
    assert scores.shape == probabilities.shape == (len(COLOURS), len(NAMES))
    for row, (ranked, ranked_scores) in enumerate(zip(classes, scores, strict=True)):
        assert sorted(ranked) == NAMES
        assert list(ranked_scores) == sorted(ranked_scores, reverse=True)
        for name, score in zip(ranked, ranked_scores, strict=True):
            assert score == probabilities[row, NAMES.index(name)]
    assert [row[0] for row in classes] == ["ant", "cat", "bee", "ant"]  # the grey tie keeps label order


def test_scores_are_ranked_with_classes_and_probabilities_keep_label_order() -> None:
    model = _colour_model()
    serve = serving_function(model, NAMES, SIDE)

    outputs = serve(tf.constant([_png(c) for c in COLOURS]))

    _check_aligned(outputs)
    expected = model(np.array([np.full((SIDE, SIDE, 3), c, "float32") for c in COLOURS])).numpy()
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, rtol=1e-6)


def test_exported_savedmodel_serves_aligned_classes_and_scores(tmp_path: Path) -> None:
    write_savedmodel(_colour_model(), NAMES, SIDE, tmp_path / "1")

    serve = tf.saved_model.load(str(tmp_path / "1")).signatures[SERVING_SIGNATURE]
    outputs = serve(images=tf.constant([_png(c) for c in COLOURS]))

    assert set(outputs) == {"classes", "scores", "probabilities"}
    _check_aligned(outputs)
