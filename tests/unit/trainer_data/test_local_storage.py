"""LocalStorage: the same object semantics as S3 on a folder (prefix listing, atomic writes, errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubegraft.runtime import FailureReason
from kubegraft.spec import StorageSpec
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.storage import LocalStorage, ObjectInfo, S3Storage, Storage, open_storage


def test_open_storage_picks_the_backend_by_uri(tmp_path: Path) -> None:
    spec = StorageSpec()

    assert isinstance(open_storage(str(tmp_path), spec), LocalStorage)
    assert isinstance(open_storage(f"file://{tmp_path}", spec), LocalStorage)
    s3 = open_storage(
        "s3://bucket/some/prefix/", StorageSpec.model_validate({"endpoint": "http://127.0.0.1:1"})
    )
    assert isinstance(s3, S3Storage)
    assert isinstance(s3, Storage)
    assert s3.uri == "s3://bucket/some/prefix"
    assert s3.join("a", "b.png") == "s3://bucket/some/prefix/a/b.png"


def test_join_keeps_the_uri_form(tmp_path: Path) -> None:
    assert LocalStorage(f"file://{tmp_path}").join("a/b.png") == f"file://{tmp_path}/a/b.png"
    assert LocalStorage(str(tmp_path)).join("a", "b.png") == f"{tmp_path}/a/b.png"
    assert LocalStorage(str(tmp_path)).join() == str(tmp_path)


def test_list_matches_key_prefixes_like_s3(tmp_path: Path) -> None:
    storage = LocalStorage(str(tmp_path))
    for key in ("cat/1.png", "cat/2.png", "catalog/x.png", "dog/1.png", "top.txt"):
        storage.write_bytes(key, b"12345")

    assert [o.key for o in storage.list()] == [
        "cat/1.png",
        "cat/2.png",
        "catalog/x.png",
        "dog/1.png",
        "top.txt",
    ]
    assert [o.key for o in storage.list("cat/")] == ["cat/1.png", "cat/2.png"]
    assert [o.key for o in storage.list("cat")] == ["cat/1.png", "cat/2.png", "catalog/x.png"]
    assert list(storage.list("dog/1")) == [ObjectInfo("dog/1.png", 5)]
    assert list(storage.list("missing/")) == []


def test_list_walks_nested_folders_and_linked_files_not_linked_folders_or_dangling_links(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    storage = LocalStorage(str(root))
    for key in ("a/b/c/deep.png", "a/b/.kubegraft-tmp-123", "a/side.png"):
        storage.write_bytes(key, b"123")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "far.png").write_bytes(b"1234")
    (root / "a" / "linked-folder").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "a" / "linked.png").symlink_to(tmp_path / "elsewhere" / "far.png")
    (root / "a" / "dangling.png").symlink_to(tmp_path / "nowhere.png")

    assert list(storage.list()) == [
        ObjectInfo("a/b/c/deep.png", 3),
        ObjectInfo("a/linked.png", 4),
        ObjectInfo("a/side.png", 3),
    ]
    assert [o.key for o in storage.list("a/b/")] == ["a/b/c/deep.png"]


def test_write_read_exists_and_delete_prefix(tmp_path: Path) -> None:
    storage = LocalStorage(str(tmp_path / "root"))
    storage.write_bytes("models/3/saved_model.pb", b"pb")
    storage.write_bytes("models/3/variables/v.index", b"ix")
    storage.write_bytes("models/30/keep", b"k")

    assert storage.read_bytes("models/3/saved_model.pb") == b"pb"
    assert storage.exists("models/3/variables/v.index")
    storage.delete_prefix("models/3/")

    assert not storage.exists("models/3/saved_model.pb")
    assert not (tmp_path / "root" / "models" / "3").exists()
    assert storage.exists("models/30/keep")
    assert not list((tmp_path / "root").rglob(".kubegraft-tmp-*"))


def test_upload_and_download_files_and_folders(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "variables").mkdir(parents=True)
    (source / "saved_model.pb").write_bytes(b"model")
    (source / "variables" / "v.data").write_bytes(b"weights")
    storage = LocalStorage(f"file://{tmp_path}/repo")

    storage.upload_dir(source, "7")
    storage.download_file("7/variables/v.data", tmp_path / "out" / "v.data")

    assert [o.key for o in storage.list()] == ["7/saved_model.pb", "7/variables/v.data"]
    assert (tmp_path / "out" / "v.data").read_bytes() == b"weights"


def test_missing_object_raises_the_configured_not_found_reason(tmp_path: Path) -> None:
    data = LocalStorage(str(tmp_path))
    weights = LocalStorage(str(tmp_path), not_found_reason=FailureReason.BACKBONE_UNAVAILABLE)

    with pytest.raises(TrainerError) as caught:
        data.read_bytes("nope.png")
    assert caught.value.reason == FailureReason.DATASET_NOT_FOUND
    assert "nope.png" in caught.value.message

    with pytest.raises(TrainerError) as caught:
        weights.download_file("backbone.keras", tmp_path / "b.keras")
    assert caught.value.reason == FailureReason.BACKBONE_UNAVAILABLE


def test_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    storage = LocalStorage(str(tmp_path / "root"))

    with pytest.raises(TrainerError) as caught:
        storage.read_bytes("../outside.txt")
    assert caught.value.reason == FailureReason.INVALID_SPEC


def test_unwritable_output_is_output_not_writable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file where a folder should be")
    storage = LocalStorage(str(tmp_path / "file"))

    with pytest.raises(TrainerError) as caught:
        storage.write_bytes("1/model.keras", b"x")
    assert caught.value.reason == FailureReason.OUTPUT_NOT_WRITABLE
    assert not caught.value.retryable
