"""The run's report beside the model: metrics.json, training_curves.png and confusion_matrix.png.

`kubegraft_trainer.run` calls `evaluate` on the test split's predictions, then `write_report` into the
version's build folder before publishing. Plots use matplotlib's Agg backend (no display in pods).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from kubegraft_trainer.stages import StageRecord

METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
CONFUSION_FILE = "confusion_matrix.png"


def evaluate(
    probabilities: np.ndarray[Any, Any], labels: np.ndarray[Any, Any], class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix of a split's predictions.

    Args:
        probabilities: Predicted probabilities [N, C].
        labels: True labels [N].
        class_names: Class names, index = label.

    Returns:
        ``{"images", "accuracy", "loss", "per_class": {name: {precision, recall, f1, support}},
        "macro_f1", "confusion_matrix": [[...]]}`` (rows: true class, columns: predicted class).
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    n_classes = len(class_names)
    if len(labels) == 0:
        return {
            "images": 0,
            "accuracy": None,
            "loss": None,
            "per_class": {},
            "macro_f1": None,
            "confusion_matrix": [],
        }
    predicted = probabilities.argmax(axis=1)
    everything = list(range(n_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=everything, zero_division=0
    )
    picked = probabilities[np.arange(len(labels)), labels]
    loss = float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))
    return {
        "images": len(labels),
        "accuracy": float(np.mean(predicted == labels)),
        "loss": loss,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "macro_f1": float(np.mean(f1)),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=everything).tolist(),
    }


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def build_metrics(
    *,
    records: Sequence[StageRecord],
    test: dict[str, Any],
    class_names: Sequence[str],
    split_record: dict[str, Any],
    skipped: Sequence[str],
    timings: dict[str, float],
    run_id: str,
    recipe: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble metrics.json's content.

    Args:
        records: Every step's record, in order.
        test: `evaluate` of the test split.
        class_names: Class names in output order.
        split_record: `DatasetSplits.record()`: which image went to which split.
        skipped: Keys of images skipped as unreadable.
        timings: Seconds per phase (load, train, evaluate, export, total).
        run_id: The run's id.
        recipe: The schedule in short form.
        extra: More top-level entries (model summary, versions).

    Returns:
        The JSON-able document.
    """
    trained = [r for r in records if r.images_per_second]
    document: dict[str, Any] = _finite(
        {
            "runId": run_id,
            "recipe": recipe,
            "classes": list(class_names),
            "stages": [asdict(r) for r in records],
            "test": test,
            "testAccuracy": test.get("accuracy"),
            "skippedImages": {"count": len(skipped), "keys": list(skipped)[:1000]},
            "timings": timings,
            "imagesPerSecond": {r.name: r.images_per_second for r in trained},
            "split": split_record,
            **(extra or {}),
        }
    )
    return document


def plot_curves(records: Sequence[StageRecord], path: Path) -> None:
    """Loss and accuracy per epoch over all stages, stage boundaries marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for record in records:
        n = len(record.history.get("loss", []))
        if n == 0:
            continue
        epochs = np.arange(offset + 1, offset + n + 1)
        for key, ax in (("loss", ax_loss), ("accuracy", ax_acc)):
            ax.plot(epochs, record.history[key], "-o", ms=3, label=f"{record.name} train")
            if record.history.get(f"val_{key}"):
                ax.plot(epochs, record.history[f"val_{key}"], "--o", ms=3, label=f"{record.name} validation")
        if offset:
            for ax in (ax_loss, ax_acc):
                ax.axvline(offset + 0.5, color="grey", lw=0.8)
        offset += n
    for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_title(title)
        ax.set_xlabel("epoch (all stages)")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path) -> None:
    """The test confusion matrix as a heat map with counts (rows true, columns predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.asarray(matrix, dtype=float).reshape(len(class_names), len(class_names))
    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(data, cmap="Blues")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, labels=class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 30:
        top = data.max() if data.size else 0
        for i in range(len(class_names)):
            for j in range(len(class_names)):
                color = "white" if top and data[i, j] > top / 2 else "black"
                ax.text(j, i, str(int(data[i, j])), ha="center", va="center", fontsize=7, color=color)
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    directory: Path, metrics: dict[str, Any], records: Sequence[StageRecord], class_names: Sequence[str]
) -> None:
    """Write metrics.json and the two plots into ``directory``."""
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    plot_curves(records, directory / CURVES_FILE)
    plot_confusion(
        metrics["test"].get("confusion_matrix") or [[0] * len(class_names)] * len(class_names),
        class_names,
        directory / CONFUSION_FILE,
    )
