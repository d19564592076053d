"""Which trainer images a TransferJob may run: the operator's allow-list (`KUBEGRAFT_ALLOWED_IMAGES`).

`spec.image` lets a TransferJob's author run any image with the Secrets their namespace's pods can read. An
operator that sets an allow-list only creates Jobs for images it matches; `reconcile` asks `is_allowed`
before it creates a run's Job and reports `ImageNotAllowed` otherwise. The operator's own default image
(`KUBEGRAFT_TRAINER_IMAGE`, used when `spec.image` is empty) is always allowed. Pure: no cluster, no I/O.

Patterns are shell globs over the whole image reference (`fnmatch`, case-sensitive): a prefix is
`registry.example.com/ml/*`, a tag family `ghcr.io/kubegraft/trainer:0.*`, a pinned digest
`ghcr.io/kubegraft/trainer@sha256:<64 hex>`, any digest of one repository
`ghcr.io/kubegraft/trainer@sha256:*`.
Docker Hub short names are matched in both forms, in images and patterns alike (`python:3.11` is also
`docker.io/library/python:3.11`).
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

DOCKER_HUB = "docker.io"


def canonical(image: str) -> str:
    """`image` with Docker's implied registry spelled out (`python` is `docker.io/library/python`)."""
    first, sep, rest = image.partition("/")
    if first == "index.docker.io" and sep:
        return f"{DOCKER_HUB}/{rest}"
    if sep and ("." in first or ":" in first or first == "localhost"):
        return image  # the first component is a registry host
    return f"{DOCKER_HUB}/{image}" if sep else f"{DOCKER_HUB}/library/{image}"


def is_allowed(image: str, patterns: Sequence[str], default_image: str) -> bool:
    """Whether the operator may run `image`: no allow-list, the default image, or a matching pattern."""
    if not patterns or image == default_image:
        return True
    forms = {image, canonical(image)}
    globs = {form for pattern in patterns for form in (pattern, canonical(pattern))}
    return any(fnmatchcase(form, glob) for glob in globs for form in forms)
