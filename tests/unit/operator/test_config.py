"""Operator settings from the environment: image, trainer command overrides, GPU resource, ports."""

from __future__ import annotations

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
