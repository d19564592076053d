"""The trainer image allow-list: glob patterns, digests, Docker Hub short names, the operator's default."""

from __future__ import annotations

import pytest

from kubegraft_operator.config import load_config
from kubegraft_operator.images import canonical, is_allowed

DIGEST = "sha256:" + "a" * 64
DEFAULT = "ghcr.io/kubegraft/trainer:0.1.0"
PATTERNS = (
    "registry.example.com/ml/*",
    "ghcr.io/kubegraft/trainer:0.*",
    f"ghcr.io/acme/pinned@{DIGEST}",
    "python:3.11*",
)


@pytest.mark.parametrize(
    "image",
    [
        "registry.example.com/ml/trainer:2",
        "registry.example.com/ml/team/trainer@" + DIGEST,
        "ghcr.io/kubegraft/trainer:0.2.0",
        f"ghcr.io/acme/pinned@{DIGEST}",
        "python:3.11-slim",
        "docker.io/library/python:3.11",
        DEFAULT,
    ],
)
def test_images_matching_a_pattern_or_the_default_are_allowed(image: str) -> None:
    assert is_allowed(image, PATTERNS, DEFAULT)


@pytest.mark.parametrize(
    "image",
    [
        "registry.example.com/other/trainer:2",
        "registry.example.com.evil.io/ml/trainer:2",
        "ghcr.io/kubegraft/trainer:1.0.0",
        "ghcr.io/kubegraft/trainer@" + DIGEST,  # the tag pattern does not allow digests
        "ghcr.io/acme/pinned@sha256:" + "b" * 64,
        "ghcr.io/acme/pinned:latest",
        "python:3.12",
        "evil.io/library/python:3.11",
    ],
)
def test_images_matching_no_pattern_are_refused(image: str) -> None:
    assert not is_allowed(image, PATTERNS, DEFAULT)


def test_no_allow_list_allows_any_image() -> None:
    assert is_allowed("anything.example/x:1", (), DEFAULT)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("python", "docker.io/library/python"),
        ("python:3.11", "docker.io/library/python:3.11"),
        ("acme/trainer:1", "docker.io/acme/trainer:1"),
        ("index.docker.io/acme/trainer:1", "docker.io/acme/trainer:1"),
        ("localhost/trainer:1", "localhost/trainer:1"),
        ("localhost:5000/trainer:1", "localhost:5000/trainer:1"),
        ("ghcr.io/kubegraft/trainer:1", "ghcr.io/kubegraft/trainer:1"),
    ],
)
def test_canonical_spells_out_docker_hubs_implied_registry(image: str, expected: str) -> None:
    assert canonical(image) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ()),
        ("registry.example.com/ml/*, ghcr.io/x/*", ("registry.example.com/ml/*", "ghcr.io/x/*")),
        ('["registry.example.com/ml/*"]', ("registry.example.com/ml/*",)),
    ],
)
def test_allowed_images_setting_is_a_json_array_or_a_comma_separated_list(
    raw: str, expected: tuple[str, ...]
) -> None:
    assert load_config({"KUBEGRAFT_ALLOWED_IMAGES": raw}).allowed_images == expected


@pytest.mark.parametrize("raw", ["[1]", '{"a": 1}', "a,,b", "[", '["a b"]'])
def test_a_malformed_allowed_images_setting_refuses_to_start(raw: str) -> None:
    with pytest.raises(ValueError, match="KUBEGRAFT_ALLOWED_IMAGES"):
        load_config({"KUBEGRAFT_ALLOWED_IMAGES": raw})


def test_an_empty_spec_image_means_the_default_which_is_always_allowed() -> None:
    config = load_config({"KUBEGRAFT_ALLOWED_IMAGES": "registry.example.com/*"})
    assert config.image_allowed("")
    assert not config.image_allowed("evil.io/miner:1")
