"""Trainer benchmark: kubegraft's staged run vs the Keras tutorials' recipe written plainly, side by side.

The task is the tests' transfer set as PNG files (Fashion-MNIST classes 0-4, 32 px, the backbone pretrained on
classes 5-9 by tests/harness/backbone.py). The baseline is the recipe of the Keras transfer-learning guide:
``image_dataset_from_directory`` + augmentation layers + a frozen backbone + ``model.fit``, then unfreeze the
top layers and fit again, with no feature caching. Measured in one run:

- frozen head stage: wall time to the same number of epochs, and held-out accuracy (target >= 10x faster at
  equal or better accuracy). Both clocks start with the model built and the PNG folder on disk, and stop when
  the head stage ends: the tutorial's covers ``image_dataset_from_directory`` and ``model.fit`` (which decodes
  the PNGs every epoch), kubegraft's covers discovery, fetching and decoding the images, the bottleneck
  features, the head's epochs with their per-epoch checkpoints and the stage's final checkpoint (the real
  `StageRunner` over a `PipelineSource`, as `kubegraft run` builds them);
- fine-tune stage: training images per second (target >= 1.5x), from a whole `train()` run;
- peak RSS of a whole ``kubegraft run FILE --local`` on 1x and 10x the data set, each in a fresh subprocess:
  the child's own peak (``os.wait4``'s ru_maxrss, taken by a small launcher: see `_LAUNCHER`), its RSS from
  /proc when the head stage's first epoch ends (the data in memory) and, for scale, a child that only
  imports the trainer and builds the model (the fixed part). Target: 10x within 1.2x.

Size knobs (environment): BENCH_TRAINER_PER_CLASS (default 400), BENCH_TRAINER_HEAD_EPOCHS (10, as the
default head stage), BENCH_TRAINER_TUNE_EPOCHS (5), BENCH_TRAINER_RSS_PER_CLASS (100), BENCH_TRAINER_SEEDS (3:
the head stages of both sides are repeated with this many initialisation seeds; times and accuracies are
their means).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

_PER_CLASS = int(os.environ.get("BENCH_TRAINER_PER_CLASS", "400"))
_HEAD_EPOCHS = int(os.environ.get("BENCH_TRAINER_HEAD_EPOCHS", "10"))
_TUNE_EPOCHS = int(os.environ.get("BENCH_TRAINER_TUNE_EPOCHS", "5"))
_RSS_PER_CLASS = int(os.environ.get("BENCH_TRAINER_RSS_PER_CLASS", "100"))
# Head-stage repeats with different initialisation/dropout seeds: one run's held-out accuracy moves by about
# 0.03 with the seed alone, as much as the difference being measured.
_SEEDS = tuple(range(int(os.environ.get("BENCH_TRAINER_SEEDS", "3"))))
_CLASSES = (0, 1, 2, 3, 4)
_TRAINABLE = 30
_BATCH = 32


def _held_out(root: Path) -> Path:
    from tests.harness.fashion import write_class_folders

    return write_class_folders(root / "held-out", _CLASSES, 100, split="test", seed=1)


def _held_out_pixels(test_dir: Path) -> tuple[Any, list[str]]:
    import tensorflow as tf

    from kubegraft_trainer.images import decode_and_resize

    files = sorted(test_dir.rglob("*.png"))
    pixels = np.stack([decode_and_resize(tf.constant(p.read_bytes()), 32).numpy() for p in files])
    return pixels, [p.parent.name for p in files]


def _baseline(train_dir: Path, test_dir: Path, backbone_path: Path) -> dict[str, Any]:
    """The tutorial recipe, plainly: no caching, augmentation layers in the model, fit twice."""
    import keras
    import tensorflow as tf

    heads: list[tuple[float, float]] = []
    for seed in _SEEDS:
        keras.utils.set_random_seed(seed)
        base = keras.models.load_model(backbone_path, compile=False)
        base.trainable = False
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.RandomFlip("horizontal")(inputs)
        x = keras.applications.mobilenet_v2.preprocess_input(x)
        x = base(x, training=False)
        x = keras.layers.Dropout(0.2)(x)
        outputs = keras.layers.Dense(5, activation="softmax")(x)
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])

        started = time.monotonic()  # the clock starts with the model built, like kubegraft's
        common: dict[str, Any] = {
            "image_size": (32, 32),
            "batch_size": _BATCH,
            "seed": 7,
            "label_mode": "int",
        }
        train = keras.utils.image_dataset_from_directory(
            train_dir, validation_split=0.15, subset="training", **common
        )
        val = keras.utils.image_dataset_from_directory(
            train_dir, validation_split=0.15, subset="validation", **common
        )
        train, val = train.prefetch(tf.data.AUTOTUNE), val.prefetch(tf.data.AUTOTUNE)
        model.fit(train, validation_data=val, epochs=_HEAD_EPOCHS, verbose=0)
        head_seconds = time.monotonic() - started
        test = keras.utils.image_dataset_from_directory(test_dir, shuffle=False, **common)
        heads.append((head_seconds, float(model.evaluate(test, verbose=0)[1])))
        print(f"  baseline head, seed {seed}: {heads[-1][0]:.1f} s, accuracy {heads[-1][1]:.3f}", flush=True)
    images = sum(int(x.shape[0]) for x, _ in train)

    base.trainable = True  # the last seed's model goes on to fine-tune
    for layer in base.layers[:-_TRAINABLE]:
        layer.trainable = False
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy", metrics=["accuracy"])
    epochs = _EpochClock()
    started = time.monotonic()
    model.fit(train, validation_data=val, epochs=_TUNE_EPOCHS, verbose=0, callbacks=[epochs.callback])
    tune_seconds = time.monotonic() - started
    tune_accuracy = float(model.evaluate(test, verbose=0)[1])
    return {
        "head_seconds": float(np.mean([h[0] for h in heads])),
        "head_accuracy": float(np.mean([h[1] for h in heads])),
        "head_runs": ", ".join(f"{t:.1f} s / {a:.3f}" for t, a in heads),
        # Steady rate as kubegraft reports its own: images over the median epoch after the first (tracing).
        "tune_images_per_second": images / float(np.median(epochs.seconds[1:] or epochs.seconds)),
        "tune_seconds": tune_seconds,
        "tune_accuracy": tune_accuracy,
        "train_images": images,
    }


class _EpochClock:
    """A Keras callback noting each epoch's wall time (training and validation)."""

    def __init__(self) -> None:
        import keras

        class Clock(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_begin(inner, epoch: int, logs: Any = None) -> None:  # noqa: N805
                inner.started = time.monotonic()

            def on_epoch_end(inner, epoch: int, logs: Any = None) -> None:  # noqa: N805
                self.seconds.append(time.monotonic() - inner.started)

        self.seconds: list[float] = []
        self.callback = Clock()


def _spec(train_dir: Path, backbone_path: Path, output: Path, head_epochs: int, tune_epochs: int) -> Any:
    from kubegraft.spec import TransferJobSpec

    off = {"enabled": False}
    return TransferJobSpec.model_validate(
        {
            "dataset": {"uri": str(train_dir), "imageSize": 32, "validationSplit": 0.15, "testSplit": 0.01},
            "model": {
                "backbone": "MobileNetV2",
                "weights": str(backbone_path),
                "head": {"hidden": [], "dropout": 0.2},
            },
            "stages": [
                {
                    "name": "head",
                    "trainable": 0,
                    "epochs": head_epochs,
                    "batchSize": _BATCH,
                    "earlyStopping": off,
                },
                {
                    "name": "finetune",
                    "trainable": _TRAINABLE,
                    "epochs": tune_epochs,
                    "batchSize": _BATCH,
                    "learningRate": 1e-4,
                    "earlyStopping": off,
                },
            ],
            "output": {"uri": str(output)},
        }
    )


def _kubegraft_head(
    train_dir: Path, test_dir: Path, backbone_path: Path, output: Path, seed: int
) -> dict[str, float]:
    """kubegraft's head stage as `kubegraft run` builds it, timed from discovery to the stage's end."""
    import io

    import keras
    import tensorflow as tf

    from kubegraft.spec import TransferJobSpec
    from kubegraft_trainer.backbones import load_backbone
    from kubegraft_trainer.checkpoints import CheckpointStore, spec_hash
    from kubegraft_trainer.dataset import discover
    from kubegraft_trainer.model import build_transfer_model
    from kubegraft_trainer.pipeline import ImageLoader
    from kubegraft_trainer.progress import ProgressTracker
    from kubegraft_trainer.sources import PipelineSource
    from kubegraft_trainer.stages import StageRunner
    from kubegraft_trainer.storage import open_storage

    body = _spec(train_dir, backbone_path, output, _HEAD_EPOCHS, 1).model_dump(by_alias=True)
    body["stages"] = body["stages"][:1]
    spec = TransferJobSpec.model_validate(body)
    keras.utils.set_random_seed(seed)  # initialisation and dropout; the split and shuffles stay the spec's
    loaded = load_backbone(spec.model, 32, spec.storage, output / "backbone")
    parts = build_transfer_model(loaded, spec.model.head, len(_CLASSES), spec.augmentation, seed=7)
    store = CheckpointStore(spec.output.uri, f"bench-head-{seed}", spec.storage, spec_hash(spec))

    started = time.monotonic()  # the model is built; data and training from here, as for the tutorial
    storage = open_storage(spec.dataset.uri, spec.storage)
    splits = discover(spec.dataset, storage)
    with ImageLoader(storage) as loader:  # threads and batch as `kubegraft run` picks them
        source = PipelineSource(splits, loader, 32)
        runner = StageRunner(
            parts,
            spec,
            source,
            store=store,
            tracker=ProgressTracker(out=io.StringIO()),
            strategy=tf.distribute.get_strategy(),
        )
        (record,) = runner.run_all()
    head_seconds = time.monotonic() - started
    pixels, names = _held_out_pixels(test_dir)
    truth = np.array([splits.classes.index(n) for n in names])
    predicted = parts.model.predict(pixels, verbose=0).argmax(axis=1)
    return {
        "head_seconds": head_seconds,
        "stage_seconds": record.seconds,
        "feature_seconds": record.feature_seconds,
        "epoch_seconds": float(sum(record.epoch_seconds)),
        "head_accuracy": float(np.mean(predicted == truth)),
        "train_images": len(splits.train),
    }


def _kubegraft_run(train_dir: Path, test_dir: Path, backbone_path: Path, output: Path) -> dict[str, Any]:
    """A whole `train()` run (head, then fine-tune): the fine-tune rate and the final held-out accuracy."""
    import io

    from kubegraft_trainer.progress import ProgressTracker
    from kubegraft_trainer.run import train

    result = train(
        _spec(train_dir, backbone_path, output, _HEAD_EPOCHS, _TUNE_EPOCHS),
        run_id="bench",
        tracker=ProgressTracker(out=io.StringIO()),
    )
    head, tune = result.records[-2:]
    pixels, names = _held_out_pixels(test_dir)
    truth = np.array([result.class_names.index(n) for n in names])
    final = float(np.mean(result.parts.model.predict(pixels, verbose=0).argmax(axis=1) == truth))
    return {
        "run_head_seconds": head.seconds,
        "run_health_seconds": float(result.metrics["health"]["before_training"].get("seconds", 0.0)),
        "final_accuracy": final,
        "tune_images_per_second": tune.images_per_second or 0.0,
        "tune_seconds": tune.seconds,
        "tune_prefix_seconds": tune.feature_seconds,
        "tune_cut": tune.frozen_prefix or "none",
    }


def _kubegraft_flipped_tune(train_dir: Path, backbone_path: Path, output: Path) -> dict[str, float]:
    """The fine-tune with horizontal flips, like the tutorial's: no cut, the full model trains on pixels."""
    import io

    from kubegraft.spec import TransferJobSpec
    from kubegraft_trainer.progress import ProgressTracker
    from kubegraft_trainer.run import train

    body = _spec(train_dir, backbone_path, output, 1, _TUNE_EPOCHS).model_dump(by_alias=True)
    body["augmentation"] = {"horizontalFlip": True}
    result = train(
        TransferJobSpec.model_validate(body), run_id="bench-flip", tracker=ProgressTracker(out=io.StringIO())
    )
    tune = result.records[-1]
    assert tune.frozen_prefix is None, "augmentation must rule the cut out"
    return {"flip_tune_images_per_second": tune.images_per_second or 0.0, "flip_tune_seconds": tune.seconds}


def _manifest(train_dir: Path, backbone_path: Path, output: Path, path: Path) -> Path:
    """A TransferJob manifest for `kubegraft run`: head 2 epochs, fine-tune 1."""
    spec = _spec(train_dir, backbone_path, output, 2, 1)
    body = {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "TransferJob",
        "metadata": {"name": "bench-rss"},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    path.write_text(json.dumps(body))
    return path


# Runs the measured command as its child and reports that child's own peak. The measured command must not be
# spawned from this benchmark's process directly: Linux carries a process's peak RSS across exec, and a child
# forked (or vforked) from a parent holding TensorFlow and models starts with the parent's ~1.1 GiB high-water
# mark, which is what an earlier version of this benchmark reported for every size. A small launcher's own
# footprint (about 10 MiB) is all that can leak into the figure this way.
_LAUNCHER = """
import json, os, sys
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)
print(json.dumps({"pid": pid}), flush=True)
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"maxrss_kib": usage.ru_maxrss, "exit": os.waitstatus_to_exitcode(status)}), flush=True)
"""


def _proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a live process in MiB, from /proc."""
    values: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    except (OSError, ValueError):
        return {}
    return values


def _measure_child(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``argv`` (through the launcher); its peak RSS, and its RSS when it prints its first epoch line."""
    launcher = subprocess.Popen(  # our own interpreter running the launcher above
        [sys.executable, "-c", _LAUNCHER, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=Path(__file__).parent.parent,
    )
    pid = 0
    hwm = 0.0
    first_epoch = 0.0
    result: dict[str, Any] = {}
    lines: list[str] = []
    assert launcher.stdout is not None
    for line in launcher.stdout:
        lines.append(line)
        if line.startswith('{"pid"'):
            pid = int(json.loads(line)["pid"])
        elif line.startswith('{"maxrss_kib"'):
            result = json.loads(line)
        elif pid:
            status = _proc_status(pid)
            hwm = max(hwm, status.get("VmHWM", 0.0))
            if not first_epoch and "] epoch 1/" in line:
                first_epoch = status.get("VmRSS", 0.0)
    launcher.wait()
    if not result or result["exit"] != 0:
        raise RuntimeError(f"{argv[:3]} failed ({result}):\n{''.join(lines[-30:])}")
    return {"peak": result["maxrss_kib"] / 1024, "hwm_seen": hwm, "first_epoch": first_epoch}


def _fixed_rss(backbone_path: Path) -> float:
    """Peak RSS of a child that imports the trainer and builds the model, without any data."""
    code = (
        "import keras, resource; from kubegraft.spec import TransferJobSpec; "
        "from kubegraft_trainer import run; from kubegraft_trainer.backbones import load_backbone; "
        "from kubegraft_trainer.model import build_transfer_model; "
        f"spec = TransferJobSpec.model_validate({{'dataset': {{'uri': '/x', 'imageSize': 32}}, "
        f"'model': {{'backbone': 'MobileNetV2', 'weights': {str(backbone_path)!r}}}, "
        "'output': {'uri': '/y'}}); "
        "loaded = load_backbone(spec.model, 32, spec.storage); "
        "build_transfer_model(loaded, spec.model.head, 5, spec.augmentation)"
    )
    return _measure_child([sys.executable, "-c", code], dict(os.environ))["peak"]


def _peak_rss(train_dir: Path, backbone_path: Path, output: Path) -> dict[str, float]:
    """``kubegraft run FILE --local`` on a manifest over ``train_dir``, in a fresh process."""
    manifest = _manifest(train_dir, backbone_path, output, output.parent / f"{output.name}.json")
    env = {
        **os.environ,
        "KUBEGRAFT_TERMINATION_LOG": str(output.parent / f"{output.name}.termination"),
        "KUBEGRAFT_RUN_ID": output.name,
    }
    kubegraft = str(Path(sys.executable).parent / "kubegraft")
    return _measure_child([kubegraft, "run", str(manifest), "--local", "--progress-port", "0"], env)


def run() -> str:
    """Run the comparison and return the Markdown section for docs/benchmarks.md."""
    from tests.harness.backbone import ensure_backbone
    from tests.harness.fashion import write_class_folders

    backbone_path = ensure_backbone()
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        root = Path(tmp)
        train_dir = write_class_folders(root / "train", _CLASSES, _PER_CLASS, split="train", seed=0)
        test_dir = _held_out(root)
        print(f"  data: {_PER_CLASS * 5} training PNGs, 500 held-out", flush=True)
        base = _baseline(train_dir, test_dir, backbone_path)
        print(f"  baseline: {base}", flush=True)
        heads = [
            _kubegraft_head(train_dir, test_dir, backbone_path, root / f"out-head-{seed}", seed)
            for seed in _SEEDS
        ]
        ours: dict[str, Any] = {k: float(np.mean([h[k] for h in heads])) for k in heads[0]}
        ours["head_runs"] = ", ".join(f"{h['head_seconds']:.2f} s / {h['head_accuracy']:.3f}" for h in heads)
        ours.update(_kubegraft_run(train_dir, test_dir, backbone_path, root / "out"))
        ours.update(_kubegraft_flipped_tune(train_dir, backbone_path, root / "out-flip"))
        print(f"  kubegraft: {ours}", flush=True)
        small = write_class_folders(root / "rss1", _CLASSES, _RSS_PER_CLASS, split="train", seed=2)
        large = write_class_folders(root / "rss10", _CLASSES, _RSS_PER_CLASS * 10, split="train", seed=2)
        fixed = _fixed_rss(backbone_path)
        rss1 = _peak_rss(small, backbone_path, root / "out-rss1")
        rss10 = _peak_rss(large, backbone_path, root / "out-rss10")
        print(f"  RSS: fixed {fixed:.0f} MiB, 1x {rss1}, 10x {rss10}", flush=True)

    head_ratio = base["head_seconds"] / ours["head_seconds"]
    tune_ratio = ours["tune_images_per_second"] / base["tune_images_per_second"]
    rss_ratio = rss10["peak"] / rss1["peak"]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}"
    load = os.getloadavg()[0]
    rows = [
        (
            f"head stage, {_HEAD_EPOCHS} epochs, data loading included (s, mean of {len(_SEEDS)})",
            f"{base['head_seconds']:.1f}",
            f"{ours['head_seconds']:.2f}",
            f"{head_ratio:.1f}x faster",
            ">= 10x",
        ),
        (
            f"held-out accuracy after the head stage (mean of {len(_SEEDS)})",
            f"{base['head_accuracy']:.3f}",
            f"{ours['head_accuracy']:.3f}",
            f"{ours['head_accuracy'] - base['head_accuracy']:+.3f}",
            ">= 0",
        ),
        (
            "fine-tune training images/s",
            f"{base['tune_images_per_second']:.0f}",
            f"{ours['tune_images_per_second']:.0f}",
            f"{tune_ratio:.2f}x",
            ">= 1.5x",
        ),
        (
            f"fine-tune stage, {_TUNE_EPOCHS} epochs, wall time (s)",
            f"{base['tune_seconds']:.1f}",
            f"{ours['tune_seconds']:.1f}",
            f"{base['tune_seconds'] / ours['tune_seconds']:.1f}x faster",
            "",
        ),
        (
            "held-out accuracy after the fine-tune",
            f"{base['tune_accuracy']:.3f}",
            f"{ours['final_accuracy']:.3f}",
            f"{ours['final_accuracy'] - base['tune_accuracy']:+.3f}",
            "",
        ),
        (
            f"peak RSS of `kubegraft run`, {_RSS_PER_CLASS * 5} / {_RSS_PER_CLASS * 50} images (MiB)",
            "",
            f"{rss1['peak']:.0f} / {rss10['peak']:.0f}",
            f"{rss_ratio:.2f}x",
            "<= 1.2x",
        ),
    ]
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    missed = "Why the 10x target is missed:"
    head_verdict = f"Head stage: target met ({head_ratio:.1f}x)." if head_ratio >= 10 else missed
    return f"""## Trainer: staged run vs the tutorial recipe

Machine: {machine}; 1-minute load average {load:.1f} at the end. Task: Fashion-MNIST classes 0-4 as
{_PER_CLASS * 5} PNG files (32 px), MobileNetV2 (alpha 0.35) pretrained on classes 5-9; held-out: 500 t10k
images. Baseline: `image_dataset_from_directory` + RandomFlip + frozen backbone + `model.fit`, then the top
{_TRAINABLE} layers unfrozen (no caching). kubegraft: head stage on cached bottleneck features (augmentation
off), then the same fine-tune.

| measure | tutorial recipe | kubegraft | ratio | target |
|---|---|---|---|---|
{table}

- Head stage clocks: both start with the model built and the PNG folder on disk and stop when the head
  stage's last epoch is done. The tutorial's covers `image_dataset_from_directory` and `model.fit`
  ({base["train_images"]:.0f} training images, decoded every epoch); kubegraft's covers discovery,
  fetching and decoding all splits once, the bottleneck features (train, validation and test),
  {_HEAD_EPOCHS} head epochs with a checkpoint after each, and the stage's final checkpoint
  ({ours["train_images"]:.0f} training images: kubegraft also holds out a 1% test split). Of kubegraft's
  {ours["head_seconds"]:.2f} s (means), the stage took {ours["stage_seconds"]:.2f} s:
  {ours["feature_seconds"]:.2f} s decoding and extracting features, {ours["epoch_seconds"]:.2f} s in the
  {_HEAD_EPOCHS} epochs.
- Head stage runs (time / held-out accuracy per seed): tutorial {base["head_runs"]}; kubegraft
  {ours["head_runs"]}. The seed sets initialisation and dropout; the split and the shuffles are fixed.
- Inside a whole `train()` run (head, then {_TUNE_EPOCHS} fine-tune epochs) the head stage took
  {ours["run_head_seconds"]:.2f} s ({base["head_seconds"] / ours["run_head_seconds"]:.1f}x the tutorial's
  head stage): the backbone health check before the stages ({ours["run_health_seconds"]:.2f} s) has by
  then decoded every split and traced and warmed the extractor the stage reuses. Health check and head stage
  together: {ours["run_health_seconds"] + ours["run_head_seconds"]:.2f} s
  ({base["head_seconds"] / (ours["run_health_seconds"] + ours["run_head_seconds"]):.1f}x). That run's
  held-out accuracy after fine-tuning: {ours["final_accuracy"]:.3f}.
- {head_verdict} Where kubegraft's head-stage time goes: one pass of fetching, checking and decoding the PNGs
  and one traced backbone pass ({ours["feature_seconds"]:.2f} s: the backbone's trace, its graph's first
  optimisation while the images decode, the extraction), then the {_HEAD_EPOCHS} head epochs
  ({ours["epoch_seconds"]:.2f} s). The tutorial's ten epochs decode and run the backbone ten times, so at ten
  epochs the cache can give at most about the tutorial's time over (one pass + head epochs). Small PNGs are
  decoded by the Pillow check that vets every file anyway (bit-identical to TensorFlow's decode, which
  still serves) and resized in batches, so no tf.data decode pipeline starts for them; the traced backbone
  has each BatchNormalization fused into one op, and the head's input dropout is drawn per block of rows.
  The accuracy comparison is not like for like in one respect, left as measured: the tutorial trains with
  random flips, while kubegraft's cached head sees the unflipped images (flips would put it on the uncached
  path, like the tutorial's); this run does not separate that from other causes.
- Fine-tune: the rate is training images over the median epoch after the first (tracing), for both
  sides; the wall time is the whole stage. kubegraft unfreezes the same top {_TRAINABLE} layers but, with
  augmentation off, cuts the model below the lowest of them (at `{ours["tune_cut"]}`), runs the frozen
  bottom once per image ({ours["tune_prefix_seconds"]:.2f} s of its stage) and trains the top on that
  output every epoch; the tutorial runs the whole backbone every epoch, and its RandomFlip would rule
  the cut out. Like for like, with horizontal flips on, kubegraft trains the full model on the in-memory
  pixels: {ours["flip_tune_images_per_second"]:.0f} images/s
  ({ours["flip_tune_images_per_second"] / base["tune_images_per_second"]:.2f}x the tutorial's), the stage
  {ours["flip_tune_seconds"]:.1f} s.
- Peak RSS: each size is a fresh `kubegraft run FILE --local` process (head 2 epochs, fine-tune 1,
  export), its own peak from `os.wait4` in a small launcher process (spawned directly from the benchmark,
  a child inherits the benchmark's own ~1.1 GiB high-water mark across exec: the cause of the identical
  figures reported before). A process that only imports the trainer and builds the model
  peaks at {fixed:.0f} MiB (the fixed part). RSS when the head stage's first epoch ends (all splits decoded
  and their features extracted): {rss1["first_epoch"]:.0f} MiB (1x), {rss10["first_epoch"]:.0f} MiB (10x).
- Absolute times are noisy (other work shares these two cores); the ratios come from the same run.
  Command: `BENCH=trainer make bench`.
"""


if __name__ == "__main__":
    print(run())
