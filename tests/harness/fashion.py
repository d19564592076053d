"""Fashion-MNIST as real labelled images for tests, benchmarks and the demo.

Reads the Debian `dataset-fashion-mnist` IDX files and writes deterministic class-folder data sets
(``<dest>/<class>/<image>.png``) in the layout the trainer discovers. The fixture `fashion_transfer` is the
small transfer task most tests share: classes 0-4 (T-shirt_top, Trouser, Pullover, Dress, Coat), 100 training
images per class from the train split, and held-out images of the same classes from the t10k split.
"""

from __future__ import annotations

import functools
import gzip
import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from tests.harness.s3 import upload_tree

__all__ = [
    "CLASS_NAMES",
    "DATA_DIR",
    "FashionTransfer",
    "fashion_transfer",
    "load_fashion_mnist",
    "upload_dir",
    "write_class_folders",
]

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
# Folder-safe class names, index = Fashion-MNIST label.
CLASS_NAMES = (
    "T-shirt_top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle_boot",
)
_FILES = {"train": "train", "test": "t10k"}
_IDX_IMAGES = 2051
_IDX_LABELS = 2049
ImageFormat = Literal["png", "jpeg", "bmp", "gif"]


@functools.cache
def load_fashion_mnist(
    split: Literal["train", "test"],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Read one Fashion-MNIST split.

    Args:
        split: ``train`` (60,000 images) or ``test`` (10,000, the t10k files).

    Returns:
        Read-only ``(images [N, 28, 28] uint8, labels [N] uint8)``.
    """
    stem = _FILES[split]
    with gzip.open(DATA_DIR / f"{stem}-images-idx3-ubyte.gz", "rb") as handle:
        magic, count, rows, cols = struct.unpack(">IIII", handle.read(16))
        if magic != _IDX_IMAGES:
            raise ValueError(f"{stem} images: bad IDX magic {magic}")
        images = np.frombuffer(handle.read(count * rows * cols), dtype=np.uint8).reshape(count, rows, cols)
    with gzip.open(DATA_DIR / f"{stem}-labels-idx1-ubyte.gz", "rb") as handle:
        magic, count_labels = struct.unpack(">II", handle.read(8))
        if magic != _IDX_LABELS or count_labels != count:
            raise ValueError(
                f"{stem} labels: bad IDX header ({magic}, {count_labels} labels for {count} images)"
            )
        labels = np.frombuffer(handle.read(count), dtype=np.uint8)
    return images, labels


def encode_image(pixels: npt.NDArray[np.uint8], fmt: ImageFormat = "png") -> bytes:
    """Encode a grayscale or RGB array as an image file."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt.upper())
    return buffer.getvalue()


def pick_indices(
    split: Literal["train", "test"], classes: Sequence[int], per_class: int, *, seed: int = 0
) -> dict[int, npt.NDArray[np.int64]]:
    """Choose ``per_class`` image indices of each class, deterministically from ``seed``."""
    _, labels = load_fashion_mnist(split)
    rng = np.random.default_rng(seed)
    chosen: dict[int, npt.NDArray[np.int64]] = {}
    for cls in classes:
        candidates = np.flatnonzero(labels == cls)
        if per_class > len(candidates):
            raise ValueError(f"class {cls} has {len(candidates)} images in {split}, asked for {per_class}")
        chosen[cls] = np.sort(rng.choice(candidates, size=per_class, replace=False))
    return chosen


def write_class_folders(
    dest: Path,
    classes: Sequence[int],
    per_class: int,
    *,
    split: Literal["train", "test"] = "train",
    seed: int = 0,
    fmt: ImageFormat = "png",
    size: int | None = None,
) -> Path:
    """Write a class-folder data set: ``<dest>/<CLASS_NAMES[c]>/<split>-<index>.<fmt>``.

    Args:
        dest: Root folder (created).
        classes: Fashion-MNIST labels to include.
        per_class: Images per class.
        split: Source split.
        seed: Seed of the image choice (same arguments, same files).
        fmt: Image format.
        size: Side in pixels to resize the 28x28 images to (bilinear); None keeps 28.

    Returns:
        ``dest``.
    """
    images, _ = load_fashion_mnist(split)
    extension = "jpg" if fmt == "jpeg" else fmt
    for cls, indices in pick_indices(split, classes, per_class, seed=seed).items():
        folder = Path(dest) / CLASS_NAMES[cls]
        folder.mkdir(parents=True, exist_ok=True)
        for index in indices:
            pixels = images[index]
            if size is not None and size != pixels.shape[0]:
                pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
            (folder / f"{split}-{index:05d}.{extension}").write_bytes(encode_image(pixels, fmt))
    return Path(dest)


def upload_dir(client: Any, bucket: str, prefix: str, local_dir: Path) -> int:
    """Upload a local data set to ``s3://bucket/prefix/``; return the number of objects."""
    return upload_tree(client, bucket, prefix, local_dir)


@dataclass(frozen=True)
class FashionTransfer:
    """The shared small transfer task on disk."""

    train: Path  # class folders: 100 train-split images of each class
    test: Path  # class folders: held-out t10k images of the same classes
    classes: tuple[str, ...]
    labels: tuple[int, ...]  # the Fashion-MNIST labels of `classes`


TRANSFER_LABELS = (0, 1, 2, 3, 4)


@pytest.fixture(scope="session")
def fashion_transfer(tmp_path_factory: pytest.TempPathFactory) -> FashionTransfer:
    """Classes 0-4: 100 training images per class (train split) and 40 held-out per class (t10k split)."""
    root = tmp_path_factory.mktemp("fashion-transfer")
    train = write_class_folders(root / "train", TRANSFER_LABELS, 100, split="train", seed=0)
    test = write_class_folders(root / "test", TRANSFER_LABELS, 40, split="test", seed=0)
    return FashionTransfer(
        train=train, test=test, classes=tuple(CLASS_NAMES[c] for c in TRANSFER_LABELS), labels=TRANSFER_LABELS
    )
