"""The input pipeline on real images from SeaweedFS and local disk: skipping, equality, order, bounds."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kubegraft.runtime import FailureReason
from kubegraft.spec import DatasetSpec
from kubegraft_trainer.cache import DiskCache
from kubegraft_trainer.dataset import Example, discover
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.pipeline import LOCAL_BATCH, S3_BATCH, ImageLoader, load_arrays, make_dataset
from kubegraft_trainer.storage import LocalStorage, S3Storage, open_storage
from tests.harness.fashion import FashionTransfer, write_class_folders
from tests.harness.s3 import SeaweedFS, upload_tree

SIZE = 32


def labels_of(dataset: tf.data.Dataset) -> list[int]:
    return [int(v) for _, y in dataset for v in y.numpy()]


def small_copy(source: Path, dest: Path, per_class: int) -> Path:
    """The first `per_class` images of each class folder of `source`."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (dest / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:per_class]:
            shutil.copy(image, dest / folder.name / image.name)
    return dest


@pytest.fixture
def corrupt_dataset(tmp_path: Path) -> tuple[Path, set[str]]:
    """Two classes of 12 good PNGs each, plus bad files the pipeline must skip."""
    root = write_class_folders(tmp_path / "ds", [7, 8], 12, seed=1)
    good = (root / "Sneaker").iterdir().__next__().read_bytes()
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buffer, format="PNG")
    bad = {
        "Sneaker/truncated.png": buffer.getvalue()[:100],
        "Sneaker/random.jpg": np.random.default_rng(0).bytes(2000),
        "Bag/empty.png": b"",
        "Bag/notes.png": b"this is a text file, not an image\n",
        "Bag/half.png": good[: len(good) // 2],
    }
    for key, data in bad.items():
        (root / key).write_bytes(data)
    (root / "Bag" / "README.txt").write_text("ignored by discovery")
    return root, set(bad)


@pytest.mark.usefixtures("s3_env")
def test_corrupt_objects_in_s3_are_skipped_and_counted(
    s3_server: SeaweedFS, s3_bucket: str, corrupt_dataset: tuple[Path, set[str]]
) -> None:
    root, bad = corrupt_dataset
    upload_tree(s3_server.client(), s3_bucket, "ds", root)
    storage = open_storage(f"s3://{s3_bucket}/ds", s3_server.storage_spec())
    splits = discover(DatasetSpec.model_validate({"uri": storage.uri, "testSplit": 0}), storage)
    assert splits.ignored == 1  # README.txt

    with ImageLoader(storage, threads=8) as loader:
        train = make_dataset(splits.train, loader, image_size=SIZE, batch_size=5, shuffle=True, seed=0)
        val = make_dataset(splits.validation, loader, image_size=SIZE, batch_size=5, shuffle=False, seed=0)
        seen = sum(int(x.shape[0]) for x, _ in train) + sum(int(x.shape[0]) for x, _ in val)
        again = sum(int(x.shape[0]) for x, _ in train)

        assert seen == 24
        assert set(loader.skipped) == bad
        assert len(loader.skipped) == len(bad)
        assert again == len([e for e in splits.train if e.key not in bad])
        assert len(loader.skipped) == len(bad)  # a second epoch counts nothing twice


def test_missing_objects_are_skipped_like_corrupt_ones(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "ds", [0, 1], 3)
    examples = [Example(f"{p.parent.name}/{p.name}", 0) for p in sorted(root.rglob("*.png"))]
    examples.append(Example("T-shirt_top/gone.png", 0))

    with ImageLoader(LocalStorage(str(root)), threads=2) as loader:
        images, labels = load_arrays(examples, loader, SIZE)

    assert images.shape == (6, SIZE, SIZE, 3)
    assert labels.dtype == np.int32
    assert loader.skipped == ["T-shirt_top/gone.png"]


@pytest.mark.usefixtures("s3_env")
def test_pipeline_from_s3_equals_pipeline_from_local_disk(
    s3_server: SeaweedFS, s3_bucket: str, fashion_transfer: FashionTransfer, tmp_path: Path
) -> None:
    local_root = small_copy(fashion_transfer.train, tmp_path / "local", per_class=20)
    upload_tree(s3_server.client(), s3_bucket, "fashion", local_root)
    s3 = open_storage(f"s3://{s3_bucket}/fashion/", s3_server.storage_spec())
    local = open_storage(f"file://{local_root}", s3_server.storage_spec())
    s3_splits = discover(DatasetSpec.model_validate({"uri": s3.uri, "seed": 3}), s3)
    local_splits = discover(DatasetSpec.model_validate({"uri": local.uri, "seed": 3}), local)
    assert s3_splits.record() == local_splits.record()

    with ImageLoader(s3, threads=16) as from_s3, ImageLoader(local, threads=2) as from_disk:
        a = make_dataset(s3_splits.train, from_s3, image_size=SIZE, batch_size=16, shuffle=True, seed=9)
        b = make_dataset(local_splits.train, from_disk, image_size=SIZE, batch_size=16, shuffle=True, seed=9)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            np.testing.assert_array_equal(xa.numpy(), xb.numpy())
            np.testing.assert_array_equal(ya.numpy(), yb.numpy())
            assert xa.dtype.name == "float32"
            assert ya.dtype.name == "int32"
            assert xa.shape[1:] == (SIZE, SIZE, 3)


def test_order_is_deterministic_per_seed_and_reshuffled_each_epoch(fashion_transfer: FashionTransfer) -> None:
    storage = LocalStorage(str(fashion_transfer.train))
    spec = DatasetSpec.model_validate({"uri": storage.uri, "validationSplit": 0.05, "testSplit": 0.0})
    examples = discover(spec, storage).train[:120]

    with ImageLoader(storage, threads=4) as loader:
        first = make_dataset(examples, loader, image_size=SIZE, batch_size=32, shuffle=True, seed=5)
        second = make_dataset(examples, loader, image_size=SIZE, batch_size=32, shuffle=True, seed=5)
        other = make_dataset(examples, loader, image_size=SIZE, batch_size=32, shuffle=True, seed=6)
        plain = make_dataset(examples, loader, image_size=SIZE, batch_size=32, shuffle=False, seed=5)
        epoch1, epoch2 = labels_of(first), labels_of(first)

        assert epoch1 == labels_of(second)
        assert epoch2 == labels_of(second)
        assert epoch1 != epoch2
        assert epoch1 != labels_of(other)
        assert labels_of(plain) == [e.label for e in examples]
        assert sorted(epoch1) == sorted(e.label for e in examples)


class CountingStorage(LocalStorage):
    """A real LocalStorage that counts reads, to observe how far the loader runs ahead."""

    reads = 0

    def read_bytes(self, key: str) -> bytes:
        type(self).reads += 1
        return super().read_bytes(key)


@pytest.mark.parametrize("batch", [1, 8])
def test_loader_keeps_a_bounded_window_in_flight(fashion_transfer: FashionTransfer, batch: int) -> None:
    storage = CountingStorage(str(fashion_transfer.train))
    CountingStorage.reads = 0
    keys = [o.key for o in storage.list()]
    assert len(keys) == 500

    with ImageLoader(storage, threads=4, batch=batch) as loader:
        fetched = loader.fetch_many(keys)
        next(fetched)
        loader.close()  # let in-flight fetches finish, start no new ones

        assert CountingStorage.reads <= (2 * 4 + 1) * batch  # at most 2 x threads tasks of `batch` keys
        fetched.close()


@pytest.mark.usefixtures("s3_env")
def test_loader_batches_local_reads_and_object_storage_reads_only_where_they_run_at_once(
    fashion_transfer: FashionTransfer, s3_server: SeaweedFS, s3_bucket: str
) -> None:
    spec = s3_server.storage_spec()
    with ImageLoader(LocalStorage(str(fashion_transfer.train))) as local:
        assert local.batch == LOCAL_BATCH
        assert local.threads == max(1, min(4, len(os.sched_getaffinity(0)) // 2))  # one per two cores
    with ImageLoader(S3Storage(f"s3://{s3_bucket}/ds", spec)) as remote:  # GETs of a batch run on libcurl
        assert (remote.batch, remote.threads) == (S3_BATCH, 4)
    with ImageLoader(S3Storage(f"s3://{s3_bucket}/ds", spec, fast_get=False)) as boto:  # one GET per task
        assert (boto.batch, boto.threads) == (1, 32)


def test_cache_serves_later_epochs_and_stays_within_its_bound(
    fashion_transfer: FashionTransfer, tmp_path: Path
) -> None:
    storage = LocalStorage(str(fashion_transfer.train))
    examples = [Example(o.key, 0) for o in storage.list("Trouser/")][:60]
    sizes = [o.size for o in storage.list("Trouser/")][:60]

    big = DiskCache(tmp_path / "big", max_bytes=10 * sum(sizes))
    with ImageLoader(storage, threads=4, cache=big) as loader:
        load_arrays(examples, loader, SIZE)
        misses = big.misses
        load_arrays(examples, loader, SIZE)
    assert misses == 60
    assert big.hits == 60  # the second pass read nothing from storage

    bound = sum(sizes) // 3
    small = DiskCache(tmp_path / "small", max_bytes=bound)
    with ImageLoader(storage, threads=4, cache=small) as loader:
        images, _ = load_arrays(examples, loader, SIZE)
    assert images.shape[0] == 60
    assert 0 < small.size_bytes <= bound
    assert sum(p.stat().st_size for p in (tmp_path / "small").glob("*.obj")) <= bound


@pytest.mark.usefixtures("s3_env")
def test_storage_failure_mid_run_surfaces_as_its_trainer_error(
    s3_server: SeaweedFS, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_class_folders(tmp_path / "ds", [0, 1], 3)
    upload_tree(s3_server.client(), s3_bucket, "", root)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "revoked-secret-0000")
    storage = open_storage(f"s3://{s3_bucket}", s3_server.storage_spec())
    examples = [Example(f"{p.parent.name}/{p.name}", 0) for p in sorted(root.rglob("*.png"))]

    with ImageLoader(storage, threads=2) as loader, pytest.raises(TrainerError) as caught:
        load_arrays(examples, loader, SIZE)

    assert caught.value.reason == FailureReason.STORAGE_ACCESS_DENIED
    assert loader.failure is caught.value
