"""The Dockerfile: hadolint clean, and its structure read with BuildKit's own parser (PyPI `dockerfile`).

Both targets must exist, run as a non-root user, start from version-pinned bases, and start the right command;
the operator image must not install TensorFlow.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import dockerfile
import pytest

from tests.integration.deploy.conftest import REPO, find_tool, run

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def _commands() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def _args() -> dict[str, str]:
    """Global ARG defaults (before the first FROM): the pinned base images."""
    args: dict[str, str] = {}
    for command in _commands():
        if command.cmd == "FROM":
            break
        if command.cmd == "ARG" and "=" in command.value[0]:
            name, _, default = command.value[0].partition("=")
            args[name] = default
    return args


def _stages() -> dict[str, list[dockerfile.Command]]:
    """Commands of each build stage, by stage name (`FROM ... AS name`)."""
    stages: dict[str, list[dockerfile.Command]] = {}
    current: list[dockerfile.Command] | None = None
    for command in _commands():
        if command.cmd == "FROM":
            value = list(command.value)
            assert len(value) == 3 and value[1].upper() == "AS", f"unnamed stage: {command.original}"
            current = stages.setdefault(value[2], [])
        if current is not None:
            current.append(command)
    return stages


def _base_image(stage: list[dockerfile.Command]) -> str:
    image = stage[0].value[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: _args()[m.group(1)], image)


def test_hadolint_reports_nothing() -> None:
    result = run([find_tool("hadolint"), "--no-color", str(DOCKERFILE)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_an_unpinned_base_so_the_lint_is_real() -> None:
    result = run([find_tool("hadolint"), "--no-color", "-"], check=False, stdin="FROM python\nUSER app\n")
    assert result.returncode != 0
    assert "DL3006" in result.stdout


def test_both_targets_exist() -> None:
    assert {"operator", "trainer"} <= set(_stages())


@pytest.mark.parametrize("target", ["operator", "trainer"])
def test_target_runs_as_a_numeric_non_root_user(target: str) -> None:
    users = [c.value[0] for c in _stages()[target] if c.cmd == "USER"]
    assert users, f"{target} sets no USER (it would run as root)"
    user, _, group = users[-1].partition(":")
    # Numeric, so that the kubelet can enforce runAsNonRoot without reading /etc/passwd.
    assert user.isdigit() and int(user) != 0, users[-1]
    assert not group or (group.isdigit() and int(group) != 0), users[-1]


def test_trainer_runs_as_uid_1000_like_the_pods_the_operator_renders() -> None:
    users = [c.value[0] for c in _stages()["trainer"] if c.cmd == "USER"]
    assert users[-1].split(":")[0] == "1000"


def test_every_base_image_is_pinned_by_version() -> None:
    stages = _stages()
    for name, stage in stages.items():
        image = _base_image(stage)
        if image in stages:  # FROM an earlier stage
            continue
        assert "@sha256:" in image or ":" in image.rsplit("/", 1)[-1], f"{name}: untagged base {image}"
        tag = image.rsplit("/", 1)[-1].split(":", 1)[1].split("@")[0]
        assert tag != "latest", f"{name}: {image}"
        assert re.match(r"^\d+\.\d+\.\d+", tag), f"{name}: {image} is not pinned to a full version"


def test_trainer_base_is_the_tensorflow_gpu_image_of_the_pinned_tensorflow() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirement = next(d for d in project["optional-dependencies"]["trainer"] if d.startswith("tensorflow"))
    upper = re.search(r"<\s*(\d+)\.(\d+)", requirement)
    assert upper is not None, requirement
    image = _base_image(_stages()["trainer"])
    match = re.fullmatch(r"tensorflow/tensorflow:(\d+)\.(\d+)\.(\d+)-gpu", image)
    assert match is not None, image
    assert (int(match[1]), int(match[2])) < (int(upper[1]), int(upper[2])), f"{image} vs {requirement}"


def _exec_form(command: dockerfile.Command) -> list[str]:
    assert command.json, f"{command.original} must use the exec (JSON) form so signals reach the process"
    return list(json.loads(command.original.split(None, 1)[1]))


def test_operator_entrypoint_is_kubegraft_operator() -> None:
    entrypoints = [c for c in _stages()["operator"] if c.cmd == "ENTRYPOINT"]
    assert _exec_form(entrypoints[-1]) == ["kubegraft", "operator"]


def test_trainer_entrypoint_is_kubegraft_with_train_as_default_command() -> None:
    stage = _stages()["trainer"]
    assert _exec_form([c for c in stage if c.cmd == "ENTRYPOINT"][-1]) == ["kubegraft"]
    assert _exec_form([c for c in stage if c.cmd == "CMD"][-1]) == ["train"]


def test_operator_exposes_metrics_and_liveness_ports() -> None:
    exposed = {p for c in _stages()["operator"] if c.cmd == "EXPOSE" for p in c.value}
    assert {"8080", "8081"} <= exposed


def test_trainer_exposes_the_progress_port() -> None:
    exposed = {p for c in _stages()["trainer"] if c.cmd == "EXPOSE" for p in c.value}
    assert "9090" in exposed


def _installs(stage: list[dockerfile.Command]) -> str:
    return " ".join(" ".join(c.value) for c in stage if c.cmd == "RUN")


def _requirement_lists(tmp_path: Path) -> dict[str, list[str]]:
    """Run the build stage's requirement-list step (its `python -c`) on this repo, writing into tmp_path."""
    [build_run] = [c for c in _stages()["build"] if c.cmd == "RUN"]
    step = next(part for part in build_run.value[0].split(" && ") if part.startswith("python -c"))
    script = step.replace("/dist/", f"{tmp_path}/")
    subprocess.run(
        ["bash", "-c", script.replace("python -c", f"{sys.executable} -c", 1)], cwd=REPO, check=True
    )
    return {
        role: (tmp_path / f"requirements-{role}.txt").read_text(encoding="utf-8").split()
        for role in ("operator", "trainer")
    }


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_operator_target_installs_no_tensorflow(tmp_path: Path) -> None:
    operator = _installs(_stages()["operator"])
    assert "tensorflow" not in operator.lower()
    # What the operator stage installs: the build stage's operator list, then the wheel without dependencies.
    assert "--requirement /dist/requirements-operator.txt" in operator
    assert "--no-deps /dist/kubegraft-*.whl" in operator
    names = _names(_requirement_lists(tmp_path)["operator"])
    assert {"kopf", "kubernetes", "prometheus-client"} <= names
    assert not [n for n in names if n.startswith(("tensorflow", "keras"))]


def test_trainer_target_installs_the_trainer_extra_over_the_base_tensorflow(tmp_path: Path) -> None:
    trainer = _installs(_stages()["trainer"])
    assert "--requirement /dist/requirements-trainer.txt" in trainer
    names = _names(_requirement_lists(tmp_path)["trainer"])
    assert {"keras", "boto3", "prometheus-client"} <= names
    # The GPU base image brings TensorFlow; tensorflow-cpu on top would replace its CUDA build.
    assert not [n for n in names if n.startswith("tensorflow")]
    assert not {"kopf", "kubernetes"} & names


def test_operator_stage_does_not_start_from_the_tensorflow_image() -> None:
    assert "tensorflow" not in _base_image(_stages()["operator"])


def test_final_stages_copy_only_the_built_wheel_not_the_source_tree() -> None:
    for target in ("operator", "trainer"):
        copies = [c.original for c in _stages()[target] if c.cmd in {"COPY", "ADD"}]
        assert copies == [], f"{target} copies {copies}: install the wheel from the build stage instead"


def test_dockerignore_keeps_the_context_to_what_the_build_copies() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: ignore everything first"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {
        part.rstrip("/")
        for c in _stages()["build"]
        if c.cmd == "COPY"
        for part in c.value[:-1]
        if not part.startswith("--")
    }
    assert copied <= allowed, f"COPY of paths the context excludes: {copied - allowed}"
    for secret_prone in (".venv", ".git", ".tools", "tests"):
        assert secret_prone not in allowed


def _env(target: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for command in _stages()[target]:
        if command.cmd == "ENV":
            pairs = command.value
            env.update(zip(pairs[::2], pairs[1::2], strict=True))
    return env


def test_trainer_writes_only_where_the_pods_mount_emptydirs() -> None:
    from kubegraft.runtime import SCRATCH_DIR

    # Training pods run with a read-only root filesystem and emptyDirs on the scratch dir and /tmp.
    env = _env("trainer")
    assert env["HOME"] == SCRATCH_DIR
    writable = (SCRATCH_DIR, "/tmp")
    for name in ("HOME", "KERAS_HOME", "MPLCONFIGDIR", "TMPDIR"):
        if name in env:
            assert env[name].startswith(writable), f"{name}={env[name]} is on the read-only root filesystem"
    workdirs = [c.value[0] for c in _stages()["trainer"] if c.cmd == "WORKDIR"]
    assert workdirs[-1] == SCRATCH_DIR
