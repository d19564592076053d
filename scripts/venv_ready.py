"""Exit 0 when this interpreter's environment already satisfies pyproject.toml's `.[dev]`, 1 otherwise.

`make` runs it on every target instead of trusting a stamp file: a stamp says what happened once, somewhere
(it can be copied, committed or outlive an uninstall); this reads what is installed now. It checks every
requirement of the project and of its extras (markers evaluated, versions compared) and that `kubegraft`
is installed in editable mode from this checkout, not from a copy elsewhere. It takes well under a second.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE_PACKAGES = (("kubegraft", "api"), ("kubegraft_operator", "operator"), ("kubegraft_trainer", "trainer"))


def _requirements(project: dict[str, object], extra: str) -> list[str]:
    """The project's requirement strings plus `extra`'s, self-references (`kubegraft[a,b]`) expanded."""
    name = str(project["name"])
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})  # type: ignore[assignment]
    pending, seen, found = [extra], set(), list(project.get("dependencies", []))  # type: ignore[call-overload]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for requirement in extras.get(current, []):
            if requirement.replace(" ", "").startswith(f"{name}["):
                pending.extend(part.strip() for part in requirement.split("[", 1)[1].split("]")[0].split(","))
            else:
                found.append(requirement)
    return found


def problems(extra: str = "dev", repo: Path = REPO) -> list[str]:
    """What is missing or out of range in `repo`'s pyproject.toml, one line each; empty when ready."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return ["packaging is not installed"]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    found: list[str] = []
    for line in _requirements(project, extra):
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{requirement.name}: not installed")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            found.append(f"{requirement.name}: {installed} installed, {requirement.specifier} required")
    for package, root in SOURCE_PACKAGES:
        spec = importlib.util.find_spec(package)
        origin = Path(spec.origin).resolve() if spec and spec.origin else None
        if origin is None or not origin.is_relative_to(repo / root):
            found.append(f"{package}: not installed from {repo / root} (found {origin})")
    return found


if __name__ == "__main__":
    missing = problems(sys.argv[1] if len(sys.argv) > 1 else "dev")
    for line in missing:
        print(f"venv: {line}", file=sys.stderr)
    sys.exit(1 if missing else 0)
