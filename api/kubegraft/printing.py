"""What `kubegraft status` and `kubegraft predict` print: pure functions from documents to text.

Called by `kubegraft.cli`; kept free of API access and TensorFlow so the formats are unit-tested alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

# The status fields `kubegraft status` shows, in the order a person reads them.
STATUS_FIELDS = (
    "phase",
    "run",
    "stage",
    "epoch",
    "totalEpochs",
    "progress",
    "etaSeconds",
    "lastUpdateTime",
    "metrics",
    "recipe",
    "modelUri",
    "jobName",
    "startTime",
    "completionTime",
    "conditions",
)


def duration(seconds: float | None) -> str:
    """Seconds as kubectl prints ages: ``45s``, ``5m40s``, ``2h5m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    total = max(round(seconds), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def status_view(transferjob: Mapping[str, Any]) -> dict[str, Any]:
    """The machine-readable summary `kubegraft status -o json|yaml` prints: name, namespace, status fields."""
    meta = transferjob.get("metadata") or {}
    status = transferjob.get("status") or {}
    view: dict[str, Any] = {"name": meta.get("name"), "namespace": meta.get("namespace")}
    view["generation"] = meta.get("generation")
    view.update({k: status[k] for k in STATUS_FIELDS if k in status})
    return view


def _ready_message(conditions: Sequence[Mapping[str, Any]]) -> str:
    for condition in conditions:
        if condition.get("type") == "Ready":
            return f"{condition.get('reason', '')}: {condition.get('message', '')}".strip(": ")
    return ""


def status_table(view: Mapping[str, Any]) -> str:
    """The human-readable `kubegraft status` (``-o table``), kubectl-describe style."""
    conditions = list(view.get("conditions") or [])
    epoch = view.get("epoch")
    progress = view.get("progress")
    rows: list[tuple[str, str]] = [
        ("Name", str(view.get("name") or "")),
        ("Namespace", str(view.get("namespace") or "")),
        ("Phase", str(view.get("phase") or "Unknown")),
        ("Reason", _ready_message(conditions) or "-"),
        ("Run", str(view.get("run") or "-")),
        ("Stage", str(view.get("stage") or "-")),
        ("Epoch", "-" if epoch is None else f"{epoch} (of {view.get('totalEpochs') or '?'} in all stages)"),
        ("Progress", "-" if progress is None else f"{progress}%"),
        ("ETA", duration(view.get("etaSeconds"))),
        ("Updated", str(view.get("lastUpdateTime") or "-")),
        ("Recipe", str(view.get("recipe") or "-")),
        ("Model", str(view.get("modelUri") or "-")),
    ]
    width = max(len(k) for k, _ in rows) + 2
    lines = [f"{k + ':':<{width}}{v}" for k, v in rows]
    metrics = view.get("metrics") or {}
    lines.append("Metrics:" + ("" if metrics else "  -"))
    if metrics:
        name_width = max(len(k) for k in metrics) + 2
        lines += [f"  {k:<{name_width}}{v:g}" for k, v in sorted(metrics.items())]
    lines.append("Conditions:" + ("" if conditions else "  -"))
    if conditions:
        table = [("TYPE", "STATUS", "REASON", "MESSAGE")]
        table += [
            (str(c.get("type", "")), str(c.get("status", "")), str(c.get("reason", "")), c.get("message", ""))
            for c in conditions
        ]
        widths = [max(len(row[i]) for row in table) + 2 for i in range(3)]
        lines += ["  " + "".join(f"{row[i]:<{widths[i]}}" for i in range(3)) + row[3] for row in table]
    return "\n".join(lines) + "\n"


def render(document: Any, output: str) -> str:
    """``document`` as JSON (indented) or YAML (block style, keys in order)."""
    if output == "json":
        return json.dumps(document, indent=2) + "\n"
    return yaml.safe_dump(document, sort_keys=False)


def prediction_document(
    model_uri: str,
    version: int,
    class_names: Sequence[str],
    images: Sequence[str],
    probabilities: Sequence[Sequence[float]],
    *,
    top: int,
) -> dict[str, Any]:
    """`kubegraft predict -o json`: the classes once, each image's probabilities aligned with them, its top-k.

    Args:
        model_uri: The version folder the model was loaded from.
        version: Its version number.
        class_names: The model's classes, in the order of its output.
        images: The image paths, as given.
        probabilities: One row per image, one probability per class (same order as ``class_names``).
        top: How many classes ``top`` lists per image.

    Raises:
        ValueError: Rows and images, or a row and the classes, do not line up.
    """
    if len(probabilities) != len(images):
        raise ValueError(f"{len(probabilities)} probability rows for {len(images)} images")
    predictions = []
    for image, row in zip(images, probabilities, strict=True):
        if len(row) != len(class_names):
            raise ValueError(f"{image}: {len(row)} probabilities for {len(class_names)} classes")
        scores = [float(p) for p in row]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[:top]
        predictions.append(
            {
                "image": image,
                "class": class_names[order[0]] if order else None,
                "top": [{"class": class_names[i], "probability": scores[i]} for i in order],
                "probabilities": scores,
            }
        )
    return {"model": model_uri, "version": version, "classes": list(class_names), "predictions": predictions}
