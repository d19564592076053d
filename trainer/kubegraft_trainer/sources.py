"""Image sources for the stages: the streaming pipeline over a discovered data set, or arrays in memory.

`kubegraft_trainer.run` wraps the data layer (`dataset.discover`, `pipeline.ImageLoader`,
`pipeline.make_dataset`) in a `PipelineSource`; `stages` only asks a source for one pass over a split.
Decoding is the same work every epoch, so a `PipelineSource` keeps a split's decoded pixels in memory when
they fit its budget (`memory_budget_bytes`, default 1 GiB: about 27,000 images at 32 px or 1,700 at 224 px;
`preload` decodes several splits in one pass) and streams larger splits from storage every epoch, so memory
stays bounded however big the data set. `ArraySource` serves arrays already in memory (benchmarks, tests of
the stages alone). Both offer ``in_memory(split)`` so the stages can skip tf.data for data already in memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from kubegraft_trainer.dataset import DatasetSplits, Example
from kubegraft_trainer.pipeline import ImageLoader, load_arrays, load_arrays_many, make_dataset

SPLITS = ("train", "validation", "test")
DEFAULT_MEMORY_BUDGET = 1024**3


def _from_arrays(
    x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], batch_size: int, *, shuffle: bool, seed: int
) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class PipelineSource:
    """The splits of a discovered data set, streamed from storage through one shared loader.

    Args:
        splits: The discovered data set.
        loader: Fetches image bytes (shared by all splits and epochs).
        image_size: Side of the square images the model takes.
        memory_budget_bytes: Decoded pixels kept in memory over all splits; 0 streams every pass.
    """

    def __init__(
        self,
        splits: DatasetSplits,
        loader: ImageLoader,
        image_size: int,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        self.splits = splits
        self.loader = loader
        self.image_size = image_size
        self.memory_budget_bytes = memory_budget_bytes
        self._decoded: dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = {}

    def _fits(self, split: str) -> bool:
        used = sum(x.nbytes for x, _ in self._decoded.values())
        needed = self.count(split) * self.image_size * self.image_size * 3 * 4
        return used + needed <= self.memory_budget_bytes

    def _examples(self, split: str) -> list[Example]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        examples: list[Example] = getattr(self.splits, split)
        return examples

    def preload(self, splits: list[str] | tuple[str, ...] = SPLITS) -> None:
        """Decode the splits among ``splits`` that fit the memory budget, all in one pass.

        Args:
            splits: Split names; those already in memory or over the budget are left alone.
        """
        chosen: list[str] = []
        budget = self.memory_budget_bytes - sum(x.nbytes for x, _ in self._decoded.values())
        for split in dict.fromkeys(splits):
            if split in self._decoded:
                continue
            needed = self.count(split) * self.image_size * self.image_size * 3 * 4
            if needed <= budget:
                chosen.append(split)
                budget -= needed
        if not chosen:
            return
        loaded = load_arrays_many([self._examples(s) for s in chosen], self.loader, self.image_size)
        self._decoded.update(zip(chosen, loaded, strict=True))

    def in_memory(self, split: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None:
        """The decoded pixels and labels of ``split`` if they are (or can be) held in memory, else None."""
        if split not in self._decoded and not self._fits(split):
            return None
        if split not in self._decoded:
            self._decoded[split] = load_arrays(self._examples(split), self.loader, self.image_size)
        return self._decoded[split]

    def images(self, split: str, batch_size: int, *, shuffle: bool, seed: int) -> tf.data.Dataset:
        """One pass over ``split`` in batches of (pixels, labels), from memory if they fit, else streamed."""
        if split in self._decoded or self._fits(split):
            if split not in self._decoded:
                self._decoded[split] = load_arrays(self._examples(split), self.loader, self.image_size)
            x, y = self._decoded[split]
            return _from_arrays(x, y, batch_size, shuffle=shuffle, seed=seed)
        dataset = make_dataset(
            self._examples(split),
            self.loader,
            image_size=self.image_size,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
        )
        return dataset.prefetch(tf.data.AUTOTUNE)

    def count(self, split: str) -> int:
        """Examples in ``split`` (before unreadable ones are skipped)."""
        return len(self._examples(split))


class ArraySource:
    """Splits held as NumPy arrays of raw pixels (float32 0..255, [N, S, S, 3]) and int labels.

    Args:
        arrays: ``{"train": (images, labels), "validation": ..., "test": ...}``; missing splits are empty.
    """

    def __init__(self, arrays: dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]) -> None:
        self.arrays = arrays

    def _get(self, split: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        if split in self.arrays:
            return self.arrays[split]
        first = next(iter(self.arrays.values()))[0]
        return np.zeros((0, *first.shape[1:]), "float32"), np.zeros((0,), "int32")

    def in_memory(self, split: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """The pixels (float32) and labels (int32) of ``split``."""
        x, y = self._get(split)
        return x.astype("float32", copy=False), y.astype("int32", copy=False)

    def images(self, split: str, batch_size: int, *, shuffle: bool, seed: int) -> tf.data.Dataset:
        """One pass over ``split`` as batches of (pixels, labels), reshuffled per pass when asked."""
        x, y = self._get(split)
        return _from_arrays(x.astype("float32"), y.astype("int32"), batch_size, shuffle=shuffle, seed=seed)

    def count(self, split: str) -> int:
        """Images in ``split``."""
        return len(self._get(split)[0])
