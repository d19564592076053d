"""Dataset discovery: which images exist, which class each belongs to, and which split each falls in.

The trainer's entry point calls `discover` once with the spec's `DatasetSpec` and an opened `Storage`; the
returned `DatasetSplits` feeds `pipeline.make_dataset` and its `record()` is written next to the model for
audit and reproduction. Two layouts are read:

- ``folders``: ``<uri>/<class>/<image>`` (images may sit in sub-folders of their class folder). Image files
  are recognised by extension (.jpg .jpeg .png .bmp .gif, any case); other files are ignored and counted.
- ``manifest``: a CSV ``path,label[,xmin,ymin,xmax,ymax]`` (header optional), paths relative to ``uri``; the
  optional box (pixels, exclusive max) crops the image.

The split is stratified per class and deterministic: each example's rank is a hash of (seed, key, box), so
the same spec and the same objects give the same split whatever order storage lists them in, and adding
images moves only the new ones. Empty or unusable data sets are refused with a `TrainerError` naming the
problem.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubegraft.runtime import FailureReason
from kubegraft_trainer.errors import TrainerError

if TYPE_CHECKING:
    from kubegraft.spec import DatasetSpec
    from kubegraft_trainer.storage import Storage

__all__ = ["IMAGE_EXTENSIONS", "DatasetSplits", "Example", "discover", "split_examples"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif"})
_HEADER_PATH_NAMES = frozenset(
    {"path", "file", "filename", "file_name", "image", "image_path", "key", "filepath"}
)
_HEADER_LABEL_NAMES = frozenset({"label", "class", "class_name", "category", "target"})
_SAMPLE = 5

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Example:
    """One labelled image: its key relative to the data set URI, its class index, and an optional crop box.

    The box is ``(xmin, ymin, xmax, ymax)`` in pixels of the stored image, max exclusive.
    """

    key: str
    label: int
    box: Box | None = None


@dataclass
class DatasetSplits:
    """The discovered data set: class names (index = label) and the examples of each split."""

    classes: list[str]
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    seed: int = 0
    ignored: int = 0  # files that are not images (folders layout) or rows of unselected classes

    @property
    def counts(self) -> dict[str, int]:
        """Number of examples per split."""
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}

    def record(self) -> dict[str, Any]:
        """The split as JSON-able data: classes, seed, counts and the examples of each split.

        Returns:
            ``{"classes": [...], "seed": n, "counts": {...}, "train": [{"key", "label"[, "box"]}], ...}``
            with labels as class names, so the record reads on its own.
        """

        def rows(examples: list[Example]) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for ex in examples:
                row: dict[str, Any] = {"key": ex.key, "label": self.classes[ex.label]}
                if ex.box is not None:
                    row["box"] = list(ex.box)
                out.append(row)
            return out

        return {
            "classes": list(self.classes),
            "seed": self.seed,
            "counts": self.counts,
            "train": rows(self.train),
            "validation": rows(self.validation),
            "test": rows(self.test),
        }


def discover(spec: DatasetSpec, storage: Storage) -> DatasetSplits:
    """List the data set, label every image, and split it.

    Args:
        spec: The TransferJob's dataset section (layout, manifest, classes, splits, seed).
        storage: Storage opened at ``spec.uri``.

    Returns:
        The classes (``spec.classes`` order, else sorted names) and the stratified three-way split.

    Raises:
        TrainerError: ``DatasetNotFound`` (nothing at the URI, or no manifest), ``DatasetEmpty`` (no image),
            ``TooFewClasses``, ``TooFewImages`` (names the class and its count), ``InvalidSpec`` (a class in
            ``classes`` that does not exist, a malformed manifest), ``StorageAccessDenied``.
    """
    if spec.layout == "manifest":
        if spec.manifest is None:
            raise TrainerError(FailureReason.INVALID_SPEC, "layout manifest needs dataset.manifest")
        labelled, ignored = _read_manifest(storage, spec.manifest)
    else:
        labelled, ignored = _list_folders(storage)

    by_class: dict[str, list[tuple[str, Box | None]]] = defaultdict(list)
    for key, label, box in labelled:
        by_class[label].append((key, box))
    if not by_class:
        raise TrainerError(
            FailureReason.DATASET_EMPTY,
            f"no images under {storage.uri}: expected <class>/<image> with extensions "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))} ({ignored} other files ignored)",
        )

    if spec.classes is not None:
        missing = [c for c in spec.classes if c not in by_class]
        if missing:
            found = sorted(by_class)
            shown = ", ".join(found[:20]) + (", ..." if len(found) > 20 else "")
            raise TrainerError(
                FailureReason.INVALID_SPEC,
                f"dataset.classes lists {', '.join(repr(m) for m in missing)}, not found under {storage.uri} "
                f"(found {len(found)}: {shown})",
            )
        classes = list(spec.classes)
        dropped = sum(len(v) for k, v in by_class.items() if k not in set(classes))
        if dropped:
            log.info(
                "Ignoring %d images of %d classes not listed in dataset.classes",
                dropped,
                len(by_class) - len(classes),
            )
        ignored += dropped
    else:
        classes = sorted(by_class)
    if len(classes) < 2:
        raise TrainerError(
            FailureReason.TOO_FEW_CLASSES,
            f"found 1 class ({classes[0]!r}) under {storage.uri}; a classifier needs at least 2",
        )

    examples = [
        Example(key=key, label=index, box=box)
        for index, name in enumerate(classes)
        for key, box in by_class[name]
    ]
    splits = split_examples(
        examples, classes, validation_split=spec.validation_split, test_split=spec.test_split, seed=spec.seed
    )
    splits.ignored = ignored
    log.info(
        "Discovered %d images in %d classes under %s: %d train, %d validation, %d test (%d files ignored)",
        len(examples),
        len(classes),
        storage.uri,
        len(splits.train),
        len(splits.validation),
        len(splits.test),
        ignored,
    )
    return splits


def split_examples(
    examples: list[Example], classes: list[str], *, validation_split: float, test_split: float, seed: int
) -> DatasetSplits:
    """Split examples per class, deterministically from ``seed`` and independent of their order.

    Each class gives ``round(n * test_split)`` examples to test and ``round(n * validation_split)`` to
    validation, at least one to each split with a non-zero fraction, and keeps at least one for training.

    Args:
        examples: Labelled examples (labels index ``classes``); exact duplicates are merged.
        classes: Class names.
        validation_split: Fraction for validation.
        test_split: Fraction for test (0 for none).
        seed: Seed of the split.

    Returns:
        The splits, each sorted by key.

    Raises:
        TrainerError: ``TooFewImages`` when a class cannot give one image to every split.
    """
    per_class: dict[int, set[Example]] = defaultdict(set)
    for ex in examples:
        per_class[ex.label].add(ex)
    need = 1 + (validation_split > 0) + (test_split > 0)
    short = [
        (classes[i], len(per_class.get(i, ())))
        for i in range(len(classes))
        if len(per_class.get(i, ())) < need
    ]
    if short:
        listed = ", ".join(f"{name!r} has {count}" for name, count in short)
        raise TrainerError(
            FailureReason.TOO_FEW_IMAGES,
            f"too few images: {listed}; every class needs at least {need} (one for training"
            + (", one for validation" if validation_split > 0 else "")
            + (", one for test" if test_split > 0 else "")
            + f" with validationSplit {validation_split:g} and testSplit {test_split:g})",
        )

    train: list[Example] = []
    validation: list[Example] = []
    test: list[Example] = []
    for label in range(len(classes)):
        ranked = sorted(per_class[label], key=lambda ex: (_rank(seed, ex), ex.key, ex.box or ()))
        n = len(ranked)
        n_test = max(1, round(n * test_split)) if test_split > 0 else 0
        n_val = max(1, round(n * validation_split)) if validation_split > 0 else 0
        excess = n_test + n_val - (n - 1)
        while excess > 0:  # rounding up may leave no training image: give back from the larger split
            if n_val >= n_test and n_val > 1:
                n_val -= 1
            else:
                n_test -= 1
            excess -= 1
        test.extend(ranked[:n_test])
        validation.extend(ranked[n_test : n_test + n_val])
        train.extend(ranked[n_test + n_val :])

    def order(split: list[Example]) -> list[Example]:
        return sorted(split, key=lambda ex: (ex.key, ex.label, ex.box or ()))

    return DatasetSplits(
        classes=list(classes), train=order(train), validation=order(validation), test=order(test), seed=seed
    )


def _rank(seed: int, ex: Example) -> bytes:
    text = f"{seed}\0{ex.key}\0{ex.box}"
    return hashlib.sha256(text.encode()).digest()


def _extension(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def _list_folders(storage: Storage) -> tuple[list[tuple[str, str, Box | None]], int]:
    """Label every image under ``<class>/`` by its first path segment; count the other files."""
    labelled: list[tuple[str, str, Box | None]] = []
    other: Counter[str] = Counter()
    seen_any = False
    for info in storage.list():
        seen_any = True
        parts = info.key.split("/")
        if len(parts) < 2:
            other["(top level)"] += 1
            continue
        if _extension(info.key) not in IMAGE_EXTENSIONS:
            other[_extension(info.key) or "(no extension)"] += 1
            continue
        labelled.append((info.key, parts[0], None))
    if not seen_any:
        raise TrainerError(
            FailureReason.DATASET_NOT_FOUND,
            f"nothing found under {storage.uri}: no such bucket, prefix or folder",
        )
    ignored = sum(other.values())
    if ignored:
        kinds = ", ".join(f"{count} {kind}" for kind, count in other.most_common(8))
        log.info("Ignoring %d files that are not images in class folders (%s)", ignored, kinds)
    return labelled, ignored


def _read_manifest(storage: Storage, manifest: str) -> tuple[list[tuple[str, str, Box | None]], int]:
    """Parse ``path,label[,xmin,ymin,xmax,ymax]`` rows; a first row naming the columns is a header."""
    text = storage.read_bytes(manifest).decode("utf-8-sig", errors="replace")
    labelled: list[tuple[str, str, Box | None]] = []
    rows = csv.reader(io.StringIO(text))
    for number, row in enumerate(rows, start=1):
        fields = [f.strip() for f in row]
        if not any(fields) or fields[0].startswith("#"):
            continue
        if number == 1 and _is_header(fields):
            continue
        where = f"{storage.join(manifest)} line {number}"
        if len(fields) not in (2, 6) or not fields[0] or not fields[1]:
            raise TrainerError(
                FailureReason.INVALID_SPEC,
                f"{where}: expected path,label or path,label,xmin,ymin,xmax,ymax, got {len(fields)} fields",
            )
        key = fields[0].removeprefix("./")
        if key.startswith("/") or "://" in key or ".." in key.split("/"):
            raise TrainerError(
                FailureReason.INVALID_SPEC, f"{where}: path {key!r} must be relative to the dataset uri"
            )
        labelled.append((key, fields[1], _parse_box(fields[2:], where) if len(fields) == 6 else None))
    return labelled, 0


def _is_header(fields: list[str]) -> bool:
    return fields[0].lower() in _HEADER_PATH_NAMES or (
        len(fields) > 1 and fields[1].lower() in _HEADER_LABEL_NAMES
    )


def _parse_box(fields: list[str], where: str) -> Box:
    try:
        xmin, ymin, xmax, ymax = (round(float(f)) for f in fields)
    except ValueError:
        raise TrainerError(FailureReason.INVALID_SPEC, f"{where}: box {fields} is not four numbers") from None
    if min(xmin, ymin) < 0 or xmax <= xmin or ymax <= ymin:
        raise TrainerError(
            FailureReason.INVALID_SPEC,
            f"{where}: box ({xmin}, {ymin}, {xmax}, {ymax}) must have 0 <= xmin < xmax and 0 <= ymin < ymax",
        )
    return (xmin, ymin, xmax, ymax)
