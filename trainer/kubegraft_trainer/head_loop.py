"""The head's training loop on in-memory arrays: a whole epoch of mini-batch steps in one compiled call.

`stages` trains a head on cached bottleneck features (and the top of a backbone on a frozen prefix's
activations) with `HeadLoop` instead of ``model.fit``, whose per-step Python dominates such small steps.
Where the model's input goes straight into a Dropout layer (the head's first layer, see `model.build_head`),
that dropout is drawn for a block of rows (up to 8 MiB of them) in one op instead of once per step: the
same independent masks, at less cost (an epoch of 53 steps of 32 x 1280 features took 17 ms instead of 23).

Under several replicas `stages` trains with ``model.fit`` on `epoch_batches` instead: the same mini-batches in
the same order (`epoch_order`), so a run on N replicas follows the one-replica run step for step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kubegraft_trainer.inference import EXTRACT_PIXELS, inference_fn, plain_functional, warm_inference

__all__ = ["EVAL_CHUNK", "HeadLoop", "epoch_batches", "epoch_order", "input_dropout"]

log = logging.getLogger(__name__)

EVAL_CHUNK = 8192  # feature vectors per evaluation call
_BLOCK_BYTES = 8 * 1024**2  # rows gathered (and dropped out) at once; their copies live for one block


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray[Any, Any]:
    """The order in which an epoch visits ``n`` in-memory rows: a permutation drawn from (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n).astype("int32")


def epoch_batches(
    x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], batch_size: int, *, seed: int, epochs: range
) -> tuple[tf.data.Dataset, int]:
    """The mini-batches `HeadLoop` trains on in ``epochs``, as one dataset for ``model.fit``.

    Every epoch's rows come in `epoch_order` and are batched on their own, so no batch straddles two epochs.
    Fit with ``steps_per_epoch`` set to the returned count: Keras then reads on from one iterator instead of
    restarting the dataset every epoch.

    Args:
        x: Training rows (features or activations).
        y: Their labels.
        batch_size: Rows per optimizer step (the global batch under several replicas).
        seed: Seed of the orders (as `HeadLoop.fit`'s).
        epochs: The epochs to cover, e.g. ``range(initial_epoch, epochs)`` after a resume.

    Returns:
        The dataset and its steps per epoch.
    """
    n = len(x)
    orders = np.stack([epoch_order(seed, epoch, n) for epoch in epochs]) if len(epochs) else np.zeros((0, n))
    rows = tf.data.Dataset.from_tensor_slices(orders.astype("int32")).flat_map(
        lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
    )
    features, labels = tf.constant(x, tf.float32), tf.constant(y, tf.int32)
    dataset = rows.map(lambda index: (tf.gather(features, index), tf.gather(labels, index)))
    return dataset.prefetch(tf.data.AUTOTUNE), -(-n // batch_size)


def input_dropout(model: keras.Model) -> keras.layers.Dropout | None:
    """The Dropout layer that alone takes ``model``'s input, if there is one that `HeadLoop` can draw ahead.

    That is a plain Keras Dropout (no ``noise_shape``, a rate strictly between 0 and 1) used once, in a
    functional model of one input whose layers hold no layers of their own (so that calling them one by one
    with ``training=True`` is exactly calling the model so).
    """
    try:  # the walk in `_call_without` uses these Keras internals (present from Keras 3.0 to 3.15 at least)
        from keras.src.models.functional import operation_fn, unpack_singleton  # noqa: F401
    except ImportError:
        return None
    if not plain_functional(model) or len(model.inputs) != 1:
        return None
    if not (hasattr(model, "_run_through_graph") and hasattr(model, "_standardize_inputs")):
        return None
    if any(layer._flatten_layers(include_self=False) for layer in model.layers):
        return None
    source = model.inputs[0]
    consumers = [
        node.operation
        for nodes in model._nodes_by_depth.values()
        for node in nodes
        if any(tensor is source for tensor in node.input_tensors)
    ]
    if len(consumers) != 1 or type(consumers[0]) is not keras.layers.Dropout:
        return None
    layer: keras.layers.Dropout = consumers[0]
    if layer.noise_shape is not None or not 0 < layer.rate < 1 or len(layer._inbound_nodes) != 1:
        return None
    return layer


def _call_without(model: keras.Model, skipped: keras.layers.Layer, inputs: tf.Tensor) -> Any:
    """``model(inputs, training=True)`` with the layer ``skipped`` passing its input through unchanged."""
    from keras.src.models.functional import operation_fn, unpack_singleton

    def operation(op: Any) -> Any:
        if op is skipped:
            return lambda tensor, *args, **kwargs: tensor
        return operation_fn(op, training=True)

    outputs = model._run_through_graph(model._standardize_inputs(inputs), operation_fn=operation)
    return unpack_singleton(outputs)


class HeadLoop:
    """Trains a compiled model on in-memory arrays: one compiled `tf.function` call per epoch.

    ``model.fit`` costs a few milliseconds of Python per step, which dominates a head on cached features (a
    step is tens of microseconds of arithmetic). This loop runs a whole epoch of mini-batch steps (the
    model's own optimizer, sparse categorical cross-entropy, dropout and BatchNormalization in training mode)
    inside one graph, then evaluates the validation arrays in inference mode. A Dropout on the model's input
    (`input_dropout`) is applied to the whole epoch's shuffled rows at once, its masks drawn from the seed
    and the epoch number like the order. It drives the same Keras
    callbacks as ``fit`` at epoch granularity (``on_train_begin``, ``on_epoch_begin``, ``on_epoch_end`` with
    ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy`` logs, ``on_train_end``) and honours
    ``model.stop_training``; per-batch callbacks are not called.

    Args:
        model: A compiled single-input model (the head), its optimizer built or buildable.
        batch_size: Images per step.
    """

    def __init__(self, model: keras.Model, batch_size: int) -> None:
        self.model = model
        self.batch_size = batch_size
        optimizer = model.optimizer
        variables = model.trainable_variables
        if not optimizer.built:
            optimizer.build(variables)
        width = tuple(model.inputs[0].shape[1:])
        spec = [
            tf.TensorSpec((None, *width), tf.float32),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((2,), tf.int64),
        ]
        batch = tf.constant(batch_size, tf.int32)
        dropout = input_dropout(model)
        self.dropout_ahead = dropout is not None

        def forward(xb: tf.Tensor) -> Any:
            if dropout is None:
                return model(xb, training=True)
            return _call_without(model, dropout, xb)

        def step(index: tf.Tensor, x: tf.Tensor, y: tf.Tensor, n: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            start, stop = index * batch, tf.minimum((index + 1) * batch, n)
            xb, yb = x[start:stop], y[start:stop]
            with tf.GradientTape() as tape:
                probs = tf.cast(forward(xb), tf.float32)
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(yb, probs))
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, variables)
            optimizer.apply_gradients(zip(grads, variables, strict=True))
            hits = tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), yb)
            return loss * tf.cast(stop - start, tf.float32), tf.reduce_sum(tf.cast(hits, tf.float32))

        # Rows per block: the block's rows are gathered in their shuffled order (and the input dropout drawn
        # for all of them) at once, so its steps take contiguous slices; the cap bounds that copy's memory.
        row_bytes = 4 * max(1, int(np.prod(width)))
        block = tf.constant(batch_size * max(1, _BLOCK_BYTES // (row_bytes * batch_size)), tf.int32)

        def epoch(
            x: tf.Tensor, y: tf.Tensor, order: tf.Tensor, seed: tf.Tensor
        ) -> tuple[tf.Tensor, tf.Tensor]:
            n = tf.shape(order)[0]
            zero = tf.constant(0.0)

            def run_block(start: tf.Tensor, loss_sum: tf.Tensor, correct: tf.Tensor) -> tuple[Any, ...]:
                rows = order[start : tf.minimum(start + block, n)]
                xs, ys = tf.gather(x, rows), tf.gather(y, rows)
                if dropout is not None:
                    block_seed = tf.random.experimental.stateless_fold_in(seed, start)
                    xs = tf.nn.experimental.stateless_dropout(xs, rate=dropout.rate, seed=block_seed)
                size = tf.shape(rows)[0]

                def body(index: tf.Tensor, loss_sum: tf.Tensor, correct: tf.Tensor) -> tuple[Any, ...]:
                    loss, hits = step(index, xs, ys, size)
                    return index + 1, loss_sum + loss, correct + hits

                # One step after the other: each step reads the weights the previous one wrote.
                _, loss_sum, correct = tf.while_loop(
                    lambda index, *_: index * batch < size,
                    body,
                    (tf.constant(0), loss_sum, correct),
                    parallel_iterations=1,
                )
                return start + block, loss_sum, correct

            _, loss_sum, correct = tf.while_loop(
                lambda start, *_: start < n, run_block, (tf.constant(0), zero, zero), parallel_iterations=1
            )
            total = tf.maximum(tf.cast(n, tf.float32), 1.0)
            return loss_sum / total, correct / total

        self._epoch = tf.function(epoch, input_signature=spec, autograph=False)

    def trace(self) -> None:
        """Build the epoch's and the evaluation's graphs now (else the first epoch does); thread-safe.

        Both are also run once, so TensorFlow optimises their graphs here: the epoch on no examples (its loop
        runs no step, nothing changes), the evaluation on one blank input.
        """
        try:
            self._epoch.get_concrete_function()
            width = tuple(self.model.inputs[0].shape[1:])
            nothing = tf.zeros((0,), tf.int32)
            self._epoch(tf.zeros((0, *width), tf.float32), nothing, nothing, tf.zeros((2,), tf.int64))
            warm_inference(self.model)
        except Exception:  # the first epoch traces again and raises whatever is wrong
            log.debug("tracing the head loop ahead failed", exc_info=True)

    def evaluate(self, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> tuple[float, float]:
        """Mean cross-entropy and accuracy of the model on ``(x, y)`` in inference mode."""
        fn = inference_fn(self.model)
        # Feature vectors go in big chunks; activation maps (a suffix of the backbone) in smaller ones.
        chunk = max(1, min(EVAL_CHUNK, EXTRACT_PIXELS // max(1, int(np.prod(x.shape[1:])) // 16)))
        probs = np.concatenate(
            [np.asarray(fn(x[i : i + chunk]), dtype="float64") for i in range(0, len(x), chunk)]
        )
        picked = np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)
        return float(-np.mean(np.log(picked))), float(np.mean(probs.argmax(axis=1) == y))

    def fit(
        self,
        train: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
        *,
        epochs: int,
        initial_epoch: int = 0,
        validation: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None = None,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        seed: int = 0,
    ) -> None:
        """Train from ``initial_epoch`` to ``epochs``, reshuffling every epoch (order drawn from seed, epoch).

        Args:
            train: Training features and labels.
            epochs: Index of the last epoch + 1 (as in ``model.fit``).
            initial_epoch: Epochs already done (after a resume).
            validation: Validation features and labels, or None.
            callbacks: Keras callbacks.
            seed: Seed of the shuffle orders (and of the input dropout's masks where drawn ahead).
        """
        x = tf.convert_to_tensor(train[0], tf.float32)
        y = tf.convert_to_tensor(train[1], tf.int32)
        n = len(train[0])
        callback_list = keras.callbacks.CallbackList(
            list(callbacks), add_history=False, add_progbar=False, model=self.model, epochs=epochs
        )
        self.model.stop_training = False
        callback_list.on_train_begin()
        logs: dict[str, float] = {}
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            order = epoch_order(seed, epoch, n)
            masks = tf.constant([seed, epoch], tf.int64)  # the input dropout's, where it is drawn ahead
            loss, accuracy = self._epoch(x, y, tf.convert_to_tensor(order), masks)
            logs = {"loss": float(loss), "accuracy": float(accuracy)}
            if validation is not None and len(validation[0]):
                logs["val_loss"], logs["val_accuracy"] = self.evaluate(*validation)
            callback_list.on_epoch_end(epoch, logs)
            if self.model.stop_training:
                break
        callback_list.on_train_end(logs)
