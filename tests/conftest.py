"""Test tiers by folder: each test gets the marker of the folder it lives in (unit, integration, e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest

import kubegraft_trainer  # noqa: F401  # before TensorFlow, for libcurl's sake (see kubegraft_trainer/__init__)

_TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


# Shared fixtures live next to the harness they drive.
pytest_plugins = [
    "tests.harness.s3",
    "tests.harness.fashion",
    "tests.harness.backbone",
    "tests.harness.cluster",
]
