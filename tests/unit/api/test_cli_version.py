"""`kubegraft --version` prints the installed version and exits 0, as command-line tools are expected to."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from typer.testing import CliRunner

from kubegraft.cli import app

REPO = Path(__file__).resolve().parents[3]


def test_version_option_prints_the_pyproject_version_and_exits_zero() -> None:
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"kubegraft {expected}"


def test_installed_console_script_answers_version() -> None:
    script = Path(sys.executable).with_name("kubegraft")
    result = subprocess.run(
        [str(script), "--version"], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("kubegraft ")


def test_subcommands_still_work_after_the_version_callback() -> None:
    result = CliRunner().invoke(app, ["crd"])
    assert result.exit_code == 0
    assert "kind: CustomResourceDefinition" in result.output
