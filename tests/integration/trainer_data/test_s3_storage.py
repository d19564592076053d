"""S3Storage against a real SeaweedFS: pagination, round trips, and how failures map to reasons."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubegraft.runtime import ExitCode, FailureReason
from kubegraft.spec import DatasetSpec, StorageSpec
from kubegraft_trainer.dataset import discover
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.storage import ObjectInfo, S3Storage, open_storage
from tests.harness.s3 import SeaweedFS, upload_tree

pytestmark = pytest.mark.usefixtures("s3_env")


def test_listing_follows_pagination_past_a_thousand_keys(
    s3_server: SeaweedFS, s3_bucket: str, tmp_path: Path
) -> None:
    for i in range(1050):
        folder = tmp_path / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        (folder / f"{i:04d}.png").write_bytes(b"")
    upload_tree(s3_server.client(), s3_bucket, "data/set", tmp_path, threads=32)
    storage = open_storage(f"s3://{s3_bucket}/data/set/", s3_server.storage_spec())

    listed = list(storage.list())

    assert len(listed) == 1050
    assert len({o.key for o in listed}) == 1050
    assert all(o.key.startswith(("a/", "b/")) for o in listed)
    assert len(list(storage.list("a/"))) == 525


def test_round_trip_of_bytes_files_and_folders(s3_server: SeaweedFS, s3_bucket: str, tmp_path: Path) -> None:
    storage = open_storage(f"s3://{s3_bucket}/models", s3_server.storage_spec())
    (tmp_path / "src" / "variables").mkdir(parents=True)
    (tmp_path / "src" / "saved_model.pb").write_bytes(b"pb")
    (tmp_path / "src" / "variables" / "variables.index").write_bytes(b"index")

    storage.write_bytes("1/split.json", b"{}")
    storage.upload_dir(tmp_path / "src", "1/savedmodel")
    storage.download_file("1/savedmodel/variables/variables.index", tmp_path / "dl" / "v.index")

    assert storage.read_bytes("1/split.json") == b"{}"
    assert storage.exists("1/savedmodel/saved_model.pb")
    assert not storage.exists("1/nothing")
    assert (tmp_path / "dl" / "v.index").read_bytes() == b"index"
    assert storage.join("1", "split.json") == f"s3://{s3_bucket}/models/1/split.json"
    assert ObjectInfo("1/savedmodel/saved_model.pb", 2) in list(storage.list("1/"))

    storage.delete_prefix("1/savedmodel/")

    assert [o.key for o in storage.list()] == ["1/split.json"]


def test_big_files_move_in_multipart_transfers(s3_server: SeaweedFS, s3_bucket: str, tmp_path: Path) -> None:
    storage = S3Storage(f"s3://{s3_bucket}", s3_server.storage_spec(), multipart_threshold=5 * 1024 * 1024)
    payload = os.urandom(11 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(payload)

    storage.upload_file(tmp_path / "big.bin", "weights/big.bin")
    storage.download_file("weights/big.bin", tmp_path / "back.bin")

    head = s3_server.client().head_object(Bucket=s3_bucket, Key="weights/big.bin")
    assert "-" in head["ETag"]  # a multipart upload's ETag is "<md5 of part md5s>-<parts>"
    assert (tmp_path / "back.bin").read_bytes() == payload


def test_wrong_credentials_are_access_denied_and_not_retryable(
    s3_server: SeaweedFS, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="a/1.png", Body=b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-1234")
    storage = open_storage(f"s3://{s3_bucket}", s3_server.storage_spec())

    for attempt in (lambda: list(storage.list()), lambda: storage.read_bytes("a/1.png")):
        with pytest.raises(TrainerError) as caught:
            attempt()
        assert caught.value.reason == FailureReason.STORAGE_ACCESS_DENIED
        assert caught.value.exit_code == ExitCode.INVALID
        assert "wrong-secret-value-1234" not in str(caught.value)
        assert s3_server.access_key not in str(caught.value)


def test_unknown_access_key_is_access_denied(
    s3_server: SeaweedFS, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    storage = open_storage(f"s3://{s3_bucket}", s3_server.storage_spec())

    with pytest.raises(TrainerError) as caught:
        list(storage.list())

    assert caught.value.reason == FailureReason.STORAGE_ACCESS_DENIED
    assert "AKIAUNKNOWNKEY000000" not in str(caught.value)


def test_missing_bucket_is_dataset_not_found_on_read_and_output_not_writable_on_write(
    s3_server: SeaweedFS,
) -> None:
    storage = open_storage("s3://no-such-bucket-kubegraft/data", s3_server.storage_spec())

    with pytest.raises(TrainerError) as caught:
        list(storage.list())
    assert caught.value.reason == FailureReason.DATASET_NOT_FOUND
    assert not caught.value.retryable
    assert "no-such-bucket-kubegraft" in caught.value.message

    with pytest.raises(TrainerError) as caught:
        storage.read_bytes("x.png")
    assert caught.value.reason == FailureReason.DATASET_NOT_FOUND


def test_missing_object_uses_the_reason_of_its_role(s3_server: SeaweedFS, s3_bucket: str) -> None:
    weights = open_storage(
        f"s3://{s3_bucket}", s3_server.storage_spec(), not_found_reason=FailureReason.BACKBONE_UNAVAILABLE
    )

    with pytest.raises(TrainerError) as caught:
        weights.read_bytes("backbones/mobilenet.keras")

    assert caught.value.reason == FailureReason.BACKBONE_UNAVAILABLE
    assert f"s3://{s3_bucket}/backbones/mobilenet.keras" in caught.value.message


def test_unreachable_endpoint_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    spec = StorageSpec.model_validate({"endpoint": "http://127.0.0.1:9", "region": "us-east-1"})
    storage = open_storage("s3://bucket/data", spec)

    with pytest.raises(TrainerError) as caught:
        storage.read_bytes("a.png")

    assert caught.value.retryable
    assert caught.value.exit_code == ExitCode.RETRYABLE
    assert "unreachable" in caught.value.message


def test_no_credentials_at_all_is_access_denied(
    s3_server: SeaweedFS, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage = open_storage(f"s3://{s3_bucket}", s3_server.storage_spec())

    with pytest.raises(TrainerError) as caught:
        storage.read_bytes("a.png")

    assert caught.value.reason == FailureReason.STORAGE_ACCESS_DENIED
    assert "secretRef" in caught.value.message


def test_keys_with_spaces_plus_percent_and_unicode_read_through_the_fast_path(
    s3_server: SeaweedFS, s3_bucket: str
) -> None:
    storage = S3Storage(f"s3://{s3_bucket}/odd keys", s3_server.storage_spec())
    keys = ["café/my photo+1%.png", "a=b/c&d;e,f.png", "x/~tilde (1).png"]
    for i, key in enumerate(keys):
        storage.write_bytes(key, bytes([i]) * 10)

    assert sorted(o.key for o in storage.list()) == sorted(keys)
    for i, key in enumerate(keys):
        assert storage.read_bytes(key) == bytes([i]) * 10
        assert storage._get_fast(f"odd keys/{key}") == (
            bytes([i]) * 10,
            False,
        )  # the fast path signs these keys right


def test_discovering_a_missing_prefix_in_s3_is_dataset_not_found(
    s3_server: SeaweedFS, s3_bucket: str
) -> None:
    storage = open_storage(f"s3://{s3_bucket}/no/such/prefix", s3_server.storage_spec())

    with pytest.raises(TrainerError) as caught:
        discover(DatasetSpec.model_validate({"uri": storage.uri}), storage)

    assert caught.value.reason == FailureReason.DATASET_NOT_FOUND
    assert f"s3://{s3_bucket}/no/such/prefix" in caught.value.message


def test_batched_reads_return_each_object_or_its_error_in_order(s3_server: SeaweedFS, s3_bucket: str) -> None:
    storage = S3Storage(f"s3://{s3_bucket}/batch", s3_server.storage_spec())
    keys = [f"c{i % 3}/img {i}+é.png" for i in range(40)]
    for i, key in enumerate(keys):
        storage.write_bytes(key, i.to_bytes(2, "big") * 300)
    assert storage.batches_reads  # pycurl is installed: a batch's GETs run at once on libcurl

    results = storage.read_many([*keys[:20], "c0/missing.png", *keys[20:]])

    assert results[:20] == [i.to_bytes(2, "big") * 300 for i in range(20)]
    assert results[21:] == [i.to_bytes(2, "big") * 300 for i in range(20, 40)]
    missing = results[20]
    assert isinstance(missing, TrainerError) and missing.reason == FailureReason.DATASET_NOT_FOUND
    assert storage.read_many([]) == []


def test_batched_reads_with_wrong_credentials_carry_access_denied(
    s3_server: SeaweedFS, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="a/1.png", Body=b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-1234")
    storage = S3Storage(f"s3://{s3_bucket}", s3_server.storage_spec())

    (result,) = storage.read_many(["a/1.png"])

    assert isinstance(result, TrainerError)
    assert result.reason == FailureReason.STORAGE_ACCESS_DENIED
    assert "wrong-secret-value-1234" not in str(result)


def test_batched_reads_fall_back_to_boto3_when_libcurl_fails_and_then_stop_trying_it(
    s3_server: SeaweedFS, s3_bucket: str
) -> None:
    storage = S3Storage(f"s3://{s3_bucket}/fb", s3_server.storage_spec())
    keys = [f"{i}.png" for i in range(30)]
    for key in keys:
        storage.write_bytes(key, key.encode())
    port = s3_server.endpoint.rsplit(":", 1)[1]
    # The signed GETs go to a closed port (connection refused): only boto3, which resolves the endpoint
    # itself, reads the objects.
    storage._object_url("probe")
    assert storage._base_url is not None
    storage._base_url = storage._base_url.replace(f":{port}/", ":1/")

    assert storage.read_many(keys) == [key.encode() for key in keys]
    assert not storage.batches_reads  # libcurl kept missing where boto3 succeeded: it is off now
    assert storage.read_many(keys[:3]) == [key.encode() for key in keys[:3]]
