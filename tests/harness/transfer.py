"""The inputs of an end-to-end transfer run in object storage, shared by `make demo` and the e2e tests.

A TransferJob needs three things in S3 before it is applied: a class-folder data set, the pretrained backbone
its `model.weights` names, and a place to publish to. `stage_inputs` uploads the first two under one bucket in
a fixed layout and returns their URIs; `published_files` and `download_version` read back what the trainer
published (`<output.uri>/<n>/`).

Layout under ``s3://<bucket>/``::

    datasets/<name>/<class>/<image>.png     spec.dataset.uri
    backbones/<backbone file>.keras         spec.model.weights
    models/<name>/<n>/...                   spec.output.uri (written by the trainer)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.s3 import upload_tree

__all__ = ["TransferInputs", "download_version", "published_files", "split_s3_uri", "stage_inputs"]

BACKBONE_KEY = "backbones/mobilenetv2-fashion-5to9.keras"


@dataclass(frozen=True)
class TransferInputs:
    """Where a run's data set and backbone are, and where it publishes."""

    bucket: str
    dataset_uri: str
    weights_uri: str
    output_uri: str
    images: int  # objects uploaded for the data set


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> (``bucket``, ``some/prefix/``).

    Raises:
        ValueError: when ``uri`` is not an s3:// URI.
    """
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def stage_inputs(
    client: Any,
    bucket: str,
    name: str,
    dataset_dir: Path,
    backbone: Path,
    *,
    model_name: str | None = None,
    create_bucket: bool = True,
) -> TransferInputs:
    """Upload a class-folder data set and a backbone; return the URIs a TransferJob names.

    Args:
        client: A boto3 S3 client.
        bucket: Bucket to put everything in.
        name: Data set name (``datasets/<name>/``).
        dataset_dir: Local ``<class>/<image>`` folders.
        backbone: The ``.keras`` backbone (saved without its top).
        model_name: Model repository name (``models/<model_name>/``); default ``name``.
        create_bucket: Create the bucket first (an existing bucket of ours is fine).
    """
    if create_bucket:
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
    images = upload_tree(client, bucket, f"datasets/{name}", dataset_dir)
    client.upload_file(str(backbone), bucket, BACKBONE_KEY)
    return TransferInputs(
        bucket=bucket,
        dataset_uri=f"s3://{bucket}/datasets/{name}/",
        weights_uri=f"s3://{bucket}/{BACKBONE_KEY}",
        output_uri=f"s3://{bucket}/models/{model_name or name}/",
        images=images,
    )


def published_files(client: Any, version_uri: str) -> dict[str, int]:
    """Relative key -> size of every object of a published version (``s3://.../<n>/``)."""
    bucket, prefix = split_s3_uri(version_uri.rstrip("/") + "/")
    files: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            files[item["Key"][len(prefix) :]] = int(item["Size"])
    return files


def download_version(client: Any, version_uri: str, dest: Path, names: list[str] | None = None) -> Path:
    """Download a published version (or only the files in ``names``) into ``dest``; return ``dest``."""
    bucket, prefix = split_s3_uri(version_uri.rstrip("/") + "/")
    for relative in names if names is not None else sorted(published_files(client, version_uri)):
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, prefix + relative, str(target))
    return dest
