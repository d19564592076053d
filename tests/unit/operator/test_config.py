"""Operator settings from the environment: image, trainer command overrides, GPU resource, ports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kubegraft_operator.config import DEFAULT_TRAINER_IMAGE, load_config


def test_defaults_when_nothing_is_set() -> None:
    config = load_config({})
    assert config.trainer_image == DEFAULT_TRAINER_IMAGE
    assert config.command_for("any") == ["kubegraft", "train"]
    assert (config.gpu_resource, config.metrics_port) == ("nvidia.com/gpu", 8080)


def test_trainer_command_and_per_image_commands_are_json_arrays() -> None:
    config = load_config(
        {
            "KUBEGRAFT_TRAINER_IMAGE": "my/trainer:2",
            "KUBEGRAFT_TRAINER_COMMAND": '["python", "/opt/stand_in.py"]',
            "KUBEGRAFT_IMAGE_COMMANDS": '{"fail:1": ["python", "-c", "raise SystemExit(78)"]}',
            "KUBEGRAFT_GPU_RESOURCE": "amd.com/gpu",
            "KUBEGRAFT_METRICS_PORT": "9100",
        }
    )
    assert config.trainer_image == "my/trainer:2"
    assert config.command_for("my/trainer:2") == ["python", "/opt/stand_in.py"]
    assert config.command_for("fail:1") == ["python", "-c", "raise SystemExit(78)"]
    assert (config.gpu_resource, config.metrics_port) == ("amd.com/gpu", 9100)


@pytest.mark.parametrize("raw", ['"kubegraft train"', "[]", "[1, 2]"])
def test_a_malformed_trainer_command_refuses_to_start(raw: str) -> None:
    with pytest.raises(ValueError, match="KUBEGRAFT_TRAINER_COMMAND"):
        load_config({"KUBEGRAFT_TRAINER_COMMAND": raw})


def test_the_progress_interval_is_read_in_seconds_with_a_default_of_5() -> None:
    assert load_config({}).progress_interval == 5.0
    assert load_config({"KUBEGRAFT_PROGRESS_INTERVAL": "2.5"}).progress_interval == 2.5


@pytest.mark.parametrize("raw", ["0", "-1", "soon", "inf"])
def test_a_progress_interval_that_is_not_a_positive_number_refuses_to_start(raw: str) -> None:
    with pytest.raises(ValueError, match="KUBEGRAFT_PROGRESS_INTERVAL"):
        load_config({"KUBEGRAFT_PROGRESS_INTERVAL": raw})


def test_the_running_job_timer_polls_at_the_configured_interval() -> None:
    code = (
        "import kopf, kubegraft_operator.main\n"
        "handlers = kopf.get_default_registry()._spawning.get_all_handlers()\n"
        "print([h.interval for h in handlers if h.id == 'poll_progress'])\n"
    )
    env = {**os.environ, "KUBEGRAFT_PROGRESS_INTERVAL": "2.5"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, env=env
    )
    assert result.stdout.strip() == "[2.5]"


@pytest.mark.parametrize(("raw", "expected"), [(None, 1000), ("", None), ("1000700000", 1000700000)])
def test_training_pod_uid_defaults_to_the_images_and_can_be_left_to_the_platform(
    raw: str | None, expected: int | None
) -> None:
    from kubegraft_operator.rendering import render_job

    env = {} if raw is None else {"KUBEGRAFT_TRAINER_RUN_AS_USER": raw}
    config = load_config(env)
    assert config.run_as_user == expected
    transferjob = {
        "metadata": {"name": "a", "namespace": "ml", "uid": "u"},
        "spec": {"dataset": {"uri": "s3://bucket/a/"}, "output": {"uri": "s3://bucket/m/"}},
    }
    pod = render_job(transferjob, 1, 1, config)["spec"]["template"]["spec"]
    assert pod["securityContext"].get("runAsUser") == expected
    assert pod["securityContext"].get("fsGroup") == expected
    assert pod["containers"][0]["securityContext"].get("runAsUser") == expected
    assert pod["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("raw", ["root", "0", "-5"])
def test_a_training_pod_uid_that_is_not_a_positive_number_refuses_to_start(raw: str) -> None:
    with pytest.raises(ValueError, match="KUBEGRAFT_TRAINER_RUN_AS_USER"):
        load_config({"KUBEGRAFT_TRAINER_RUN_AS_USER": raw})


def test_a_log_format_the_operator_does_not_know_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="KUBEGRAFT_LOG_FORMAT must be one of text, json"):
        load_config({"KUBEGRAFT_LOG_FORMAT": "xml"})
