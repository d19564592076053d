"""Each role imports without the other's heavy dependencies, and pyproject's extras keep them apart.

The operator's image has no TensorFlow and the trainer's has no kopf or Kubernetes client: every module of
each side (walked, so new modules are covered) must import in a fresh interpreter where the other side's
packages are blocked.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_IMPORT_ALL = r"""
import importlib, importlib.abc, pkgutil, sys

blocked = set(sys.argv[1].split(","))
already = sorted(name for name in sys.modules if name.split(".")[0] in blocked)
if already:
    sys.exit(f"imported before the test started: {already}")


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"blocked import of {name}", name=name)
        return None


sys.meta_path.insert(0, Blocker())
failures, imported = [], []
for package_name in sys.argv[2:]:
    package = importlib.import_module(package_name)
    names = [package_name] + [
        info.name
        for info in pkgutil.walk_packages(package.__path__, package_name + ".", onerror=failures.append)
        if not info.name.endswith("__main__")
    ]
    for name in names:
        try:
            importlib.import_module(name)
            imported.append(name)
        except BaseException as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
print("imported:", " ".join(imported))
if failures:
    sys.exit("\n".join(map(str, failures)))
"""


SIDES = {
    "operator-without-tensorflow": (("tensorflow", "keras"), ("kubegraft", "kubegraft_operator")),
    "trainer-without-kopf": (("kopf", "kubernetes", "kmock"), ("kubegraft", "kubegraft_trainer")),
}


@pytest.fixture(scope="module")
def import_results() -> dict[str, tuple[int, str, str]]:
    """Both sides' fresh interpreters, run at once (TensorFlow's import dominates the time)."""
    processes = {
        side: subprocess.Popen(
            [sys.executable, "-c", _IMPORT_ALL, ",".join(blocked), *packages],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for side, (blocked, packages) in SIDES.items()
    }
    results = {}
    for side, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        results[side] = (process.returncode, stdout, stderr)
    return results


@pytest.mark.parametrize("side", sorted(SIDES))
def test_every_module_imports_without_the_other_roles_dependencies(
    side: str, import_results: dict[str, tuple[int, str, str]]
) -> None:
    returncode, stdout, stderr = import_results[side]
    assert returncode == 0, stderr[-4000:]
    imported = stdout.split()
    assert "kubegraft.validation" in imported
    assert "kubegraft.crd" in imported
    assert any(name.startswith(SIDES[side][1][1]) for name in imported)


def _requirement_names(extra: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """Distribution names an extra pulls in, following `kubegraft[...]` self-references."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names: set[str] = set()
    for requirement in project["optional-dependencies"][extra]:
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(\[([^\]]*)\])?", requirement)
        assert match, requirement
        name = match.group(1).lower().replace("_", "-")
        if name == project["name"]:
            for inner in (match.group(3) or "").split(","):
                if inner.strip() and inner.strip() not in seen:
                    names |= _requirement_names(inner.strip(), seen | {extra})
        else:
            names.add(name)
    return names


def test_operator_extra_installs_no_tensorflow_or_keras() -> None:
    names = _requirement_names("operator")
    assert "kopf" in names
    assert not {n for n in names if n.startswith(("tensorflow", "keras", "tf-"))}


def test_trainer_extra_installs_no_kopf_or_kubernetes_client() -> None:
    names = _requirement_names("trainer")
    assert any(n.startswith("tensorflow") for n in names)
    assert not names & {"kopf", "kubernetes", "kubernetes-asyncio", "kmock"}
