"""Distributed-training benchmark: 1 vs 2 replicas in one process, and 1 vs 2 worker processes, side by side.

The same run (`kubegraft train` on a manifest: the tests' transfer set as PNG files, Fashion-MNIST classes
0-4 at 32 px, the MobileNetV2 backbone pretrained on classes 5-9 by tests/harness/backbone.py; a 1-epoch head
stage, then a fine-tune of the whole network) is trained three ways, one after the other:

- 1 replica: one process, the default strategy;
- 2 replicas: one process, `KUBEGRAFT_LOGICAL_CPUS=2` (a MirroredStrategy over two logical CPU devices, as
  `kubegraft_trainer.devices` makes it);
- 2 workers: two processes with `spec.workers: 2` (MultiWorkerMirroredStrategy, gRPC all-reduce on loopback,
  the addresses given as the test kubelet gives them).

Reported: the fine-tune stage's training images per second as the trainer measured it (the chief's
metrics.json), the stage's mean epoch time, and the wall time of the whole run (process start to exit of
every process, TensorFlow's start-up included). The global batch is the same in all three (a stage's
batchSize is split across replicas), so each optimizer step does the same work.

Size knobs (environment): BENCH_WORKERS_PER_CLASS (default 32 images per class),
BENCH_WORKERS_TUNE_EPOCHS (3).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from tests.harness.workers import start_local_workers

_PER_CLASS = int(os.environ.get("BENCH_WORKERS_PER_CLASS", "32"))
_TUNE_EPOCHS = int(os.environ.get("BENCH_WORKERS_TUNE_EPOCHS", "3"))
_CLASSES = (0, 1, 2, 3, 4)
_TIMEOUT = 900.0


def _manifest(root: Path, data: Path, backbone: Path, workers: int) -> Path:
    document = {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "TransferJob",
        "metadata": {"name": "bench"},
        "spec": {
            "dataset": {
                "uri": str(data),
                "imageSize": 32,
                "validationSplit": 0.15,
                "testSplit": 0.1,
                "seed": 7,
            },
            "model": {"backbone": "MobileNetV2", "weights": str(backbone), "head": {"hidden": [64]}},
            "stages": [
                {"name": "head", "trainable": 0, "epochs": 1, "learningRate": 0.003},
                {
                    "name": "finetune",
                    "trainable": "all",
                    "epochs": _TUNE_EPOCHS,
                    "learningRate": 0.0003,
                    "batchSize": 32,
                    "earlyStopping": {"enabled": False},
                },
            ],
            "output": {"uri": str(root / "models")},
            "workers": workers,
        },
    }
    path = root / "bench.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _train(
    root: Path, data: Path, backbone: Path, *, workers: int = 1, logical_cpus: int = 0
) -> dict[str, Any]:
    """One run in fresh processes; the chief's fine-tune record and the wall time."""
    root.mkdir(parents=True)
    manifest = _manifest(root, data, backbone, workers)
    started = time.monotonic()
    processes = start_local_workers(
        manifest, root, job="bench-1", run_id="bench", workers=workers, logical_cpus=logical_cpus
    )
    codes = [p.wait(_TIMEOUT) for p in processes]
    wall = time.monotonic() - started
    if codes != [0] * workers:
        tail = (root / "worker-0.log").read_text()[-3000:]
        raise RuntimeError(f"bench run failed with exit codes {codes}:\n{tail}")
    metrics = json.loads((root / "models" / "1" / "metrics.json").read_text())
    tune = next(s for s in metrics["stages"] if s["name"] == "finetune")
    epochs = tune["epoch_seconds"][1:] or tune["epoch_seconds"]  # the first epoch includes tracing
    return {
        "replicas": metrics["replicas"],
        "images_per_second": float(tune["images_per_second"]),
        "epoch_seconds": sum(epochs) / len(epochs),
        "wall_seconds": wall,
        "train_images": metrics["images"]["train"],
        "per_replica_batch": tune.get("per_replica_batch_size"),
    }


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run() -> str:
    """Run the three configurations and return the Markdown section for docs/benchmarks.md."""
    from tests.harness.backbone import ensure_backbone
    from tests.harness.fashion import write_class_folders

    backbone = ensure_backbone()
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        root = Path(tmp)
        data = write_class_folders(root / "data", _CLASSES, _PER_CLASS, split="train", seed=0)
        one = _train(root / "one", data, backbone)
        print(f"  1 replica: {one}", flush=True)
        replicas = _train(root / "replicas", data, backbone, logical_cpus=2)
        print(f"  2 replicas: {replicas}", flush=True)
        workers = _train(root / "workers", data, backbone, workers=2)
        print(f"  2 workers: {workers}", flush=True)
    load_after = _load()

    def row(label: str, r: dict[str, Any]) -> str:
        return (
            f"| {label} | {r['replicas']} | {r['per_replica_batch']} | {r['images_per_second']:.1f} | "
            f"{r['images_per_second'] / one['images_per_second']:.2f}x | {r['epoch_seconds']:.2f} | "
            f"{r['wall_seconds']:.1f} | {r['wall_seconds'] / one['wall_seconds']:.2f}x |"
        )

    cpus = os.cpu_count()
    return "\n".join(
        [
            "## Distributed training: replicas and workers (`BENCH=workers make bench`)",
            "",
            f"Machine: {platform.machine()}, {cpus} CPU core(s), no GPU; Python {platform.python_version()}; "
            f"load average (1/5/15 min) {load_before} before, {load_after} after. "
            f"{_PER_CLASS * len(_CLASSES)} PNGs (BENCH_WORKERS_PER_CLASS={_PER_CLASS}: {one['train_images']} "
            "training images), "
            "a 1-epoch head stage, "
            f"then a fine-tune of the whole MobileNetV2 (alpha 0.35, 32 px) for {_TUNE_EPOCHS} epochs at a "
            "global batch of 32, the same in every row. Each row is a fresh run, one after the other.",
            "",
            "| configuration | replicas | per-replica batch | fine-tune images/s | vs 1 replica | "
            "s/epoch (after the 1st) | wall s (whole run) | vs 1 replica |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            row("1 replica (1 process)", one),
            row("2 replicas (1 process, KUBEGRAFT_LOGICAL_CPUS=2)", replicas),
            row("2 workers (2 processes, gRPC on loopback)", workers),
            "",
            "What bounds them here: the machine has "
            f"{cpus} core(s), which one replica can already keep busy (TensorFlow's intra-op threads), so "
            "two "
            "replicas (logical devices of the same CPU) or two processes split the same cores; they add the "
            "all-reduce of every gradient each step (in memory between logical devices, gRPC over loopback "
            "between processes) and, for two workers, a second TensorFlow start-up. On this machine the rows "
            "measure the cost of distribution, not a speed-up; a speed-up needs a device (GPU) or a node per "
            "replica.",
            "",
            f"{-(-one['train_images'] // 32)} steps per epoch, so the ratios include per-step overheads more "
            f"than a long run would. Each epoch ends with a batch of {one['train_images'] % 32 or 32} "
            "image(s); one too small to give every replica an example is computed whole by each replica "
            "(`devices.feed_every_replica`; before, 225 training images failed the 2-replica run with "
            "`Incompatible shapes: [0,32,32,3] vs. [16]`).",
        ]
    )
