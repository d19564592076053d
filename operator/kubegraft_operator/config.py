"""The operator's own settings, read once from the environment (the `kubegraft operator` command sets them).

Everything that differs between clusters lives here, not in the TransferJob: the default trainer image, the
command the trainer container runs (so tests and e2e runs can swap in a stand-in), the GPU resource name and
the metrics port. `rendering` and `reconcile` receive an `OperatorConfig`; nothing else reads the environment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from kubegraft import runtime
from kubegraft.logs import log_format_from_env
from kubegraft_operator.images import is_allowed

ENV_TRAINER_IMAGE = "KUBEGRAFT_TRAINER_IMAGE"
ENV_TRAINER_COMMAND = "KUBEGRAFT_TRAINER_COMMAND"
ENV_IMAGE_COMMANDS = "KUBEGRAFT_IMAGE_COMMANDS"
ENV_GPU_RESOURCE = "KUBEGRAFT_GPU_RESOURCE"
ENV_IMAGE_PULL_POLICY = "KUBEGRAFT_IMAGE_PULL_POLICY"
ENV_SERVICE_ACCOUNT = "KUBEGRAFT_TRAINER_SERVICE_ACCOUNT"
ENV_ALLOWED_IMAGES = "KUBEGRAFT_ALLOWED_IMAGES"
ENV_METRICS_PORT = "KUBEGRAFT_METRICS_PORT"
ENV_PROGRESS_INTERVAL = "KUBEGRAFT_PROGRESS_INTERVAL"
ENV_PENDING_INTERVAL = "KUBEGRAFT_PENDING_INTERVAL"
ENV_PEERING_PRIORITY = "KUBEGRAFT_PEERING_PRIORITY"
ENV_TRAINER_RUN_AS_USER = "KUBEGRAFT_TRAINER_RUN_AS_USER"  # "" for none (OpenShift assigns a UID)
ENV_LOG_FORMAT = runtime.ENV_LOG_FORMAT  # set by `kubegraft operator --log-format`; passed on to trainers

DEFAULT_TRAINER_IMAGE = "ghcr.io/kubegraft/trainer:0.1.0"
DEFAULT_TRAINER_COMMAND: tuple[str, ...] = ("kubegraft", "train")
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_METRICS_PORT = 8080
DEFAULT_PROGRESS_INTERVAL = 5.0
DEFAULT_RUN_AS_USER = 1000  # the trainer image's USER
DEFAULT_PENDING_INTERVAL = 30.0


@dataclass(frozen=True)
class OperatorConfig:
    """Cluster-specific settings of the operator.

    Attributes:
        trainer_image: image used when a TransferJob leaves `spec.image` empty.
        trainer_command: the trainer container's command (default `kubegraft train`).
        image_commands: per-image command overrides (image -> argv); they win over `trainer_command`.
        gpu_resource: the extended resource name GPUs are requested as.
        image_pull_policy: the trainer container's imagePullPolicy.
        service_account: the trainer pod's ServiceAccount (cloud identities); empty: the default.
        allowed_images: glob patterns `spec.image` must match (`images.is_allowed`); empty allows any.
        metrics_port: where /metrics and /readyz are served.
        progress_interval: seconds between /progress polls of a running trainer.
        progress_timeout: seconds one /progress poll may take.
        log_format: `text` or `json`, the operator's own log format, set on training pods too.
        run_as_user: UID, GID and fsGroup of the training pods; None: none fixed (OpenShift's restricted SCC
            assigns one from the namespace's range and refuses pods that name another).
    """

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    trainer_command: tuple[str, ...] = DEFAULT_TRAINER_COMMAND
    image_commands: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    image_pull_policy: str = "IfNotPresent"
    service_account: str = ""
    allowed_images: tuple[str, ...] = ()
    metrics_port: int = DEFAULT_METRICS_PORT
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL
    progress_timeout: float = 2.0
    log_format: str = "text"
    run_as_user: int | None = DEFAULT_RUN_AS_USER

    def image_allowed(self, image: str) -> bool:
        """Whether a TransferJob may run `image` (its `spec.image`, or empty for the default)."""
        return is_allowed(image or self.trainer_image, self.allowed_images, self.trainer_image)

    def command_for(self, image: str) -> list[str]:
        """The container command for trainer `image`: its configured override, else the default."""
        return list(self.image_commands.get(image, self.trainer_command))


def _argv(raw: str, name: str) -> tuple[str, ...]:
    value = json.loads(raw)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a non-empty JSON array of strings, got {raw!r}")
    return tuple(value)


def allowed_images(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The image allow-list: KUBEGRAFT_ALLOWED_IMAGES, a JSON array of globs or a comma-separated list.

    Raises:
        ValueError: the variable is neither, or holds an empty or blank pattern.
    """
    env = os.environ if env is None else env
    raw = env.get(ENV_ALLOWED_IMAGES, "").strip()
    if not raw:
        return ()
    problem = (
        f"{ENV_ALLOWED_IMAGES} must be a JSON array of image patterns or a comma-separated list, got {raw!r}"
    )
    if raw.startswith("["):
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise ValueError(problem) from exc
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(problem)
        patterns = [v.strip() for v in value]
    else:
        patterns = [v.strip() for v in raw.split(",")]
    if not all(patterns) or any(" " in p for p in patterns):
        raise ValueError(problem)
    return tuple(patterns)


def progress_interval(env: Mapping[str, str] | None = None) -> float:
    """Seconds between /progress polls of a running trainer: KUBEGRAFT_PROGRESS_INTERVAL, default 5.

    Raises:
        ValueError: the variable is not a positive number.
    """
    return _seconds(os.environ if env is None else env, ENV_PROGRESS_INTERVAL, DEFAULT_PROGRESS_INTERVAL)


def pending_interval(env: Mapping[str, str] | None = None) -> float:
    """Seconds between reads of why a Pending run waits (Workload, FailedCreate): KUBEGRAFT_PENDING_INTERVAL.

    Raises:
        ValueError: the variable is not a positive number.
    """
    return _seconds(os.environ if env is None else env, ENV_PENDING_INTERVAL, DEFAULT_PENDING_INTERVAL)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    problem = f"{name} must be a positive number of seconds, got {raw!r}"
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(problem) from exc
    if not 0 < value < float("inf"):
        raise ValueError(problem)
    return value


def run_as_user(env: Mapping[str, str]) -> int | None:
    """KUBEGRAFT_TRAINER_RUN_AS_USER: unset 1000, empty None (no fixed UID), else a positive integer.

    Raises:
        ValueError: the variable is set to something else.
    """
    raw = env.get(ENV_TRAINER_RUN_AS_USER)
    if raw is None:
        return DEFAULT_RUN_AS_USER
    if not raw.strip():
        return None
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ValueError(f"{ENV_TRAINER_RUN_AS_USER} must be a positive UID or empty, got {raw!r}")
    return int(raw)


def load_config(env: Mapping[str, str] | None = None) -> OperatorConfig:
    """Read the `OperatorConfig` from environment variables (defaults for those unset).

    Args:
        env: the environment to read; `os.environ` when None.

    Raises:
        ValueError: a variable is set to something unusable (the operator refuses to start).
    """
    env = os.environ if env is None else env
    commands: dict[str, tuple[str, ...]] = {}
    if raw := env.get(ENV_IMAGE_COMMANDS, ""):
        mapping = json.loads(raw)
        if not isinstance(mapping, dict):
            raise ValueError(f"{ENV_IMAGE_COMMANDS} must be a JSON object of image -> argv")
        commands = {str(k): _argv(json.dumps(v), ENV_IMAGE_COMMANDS) for k, v in mapping.items()}
    command = DEFAULT_TRAINER_COMMAND
    if raw := env.get(ENV_TRAINER_COMMAND, ""):
        command = _argv(raw, ENV_TRAINER_COMMAND)
    return OperatorConfig(
        trainer_image=env.get(ENV_TRAINER_IMAGE) or DEFAULT_TRAINER_IMAGE,
        trainer_command=command,
        image_commands=commands,
        gpu_resource=env.get(ENV_GPU_RESOURCE) or DEFAULT_GPU_RESOURCE,
        image_pull_policy=env.get(ENV_IMAGE_PULL_POLICY) or "IfNotPresent",
        service_account=env.get(ENV_SERVICE_ACCOUNT, ""),
        allowed_images=allowed_images(env),
        metrics_port=int(env.get(ENV_METRICS_PORT) or DEFAULT_METRICS_PORT),
        progress_interval=progress_interval(env),
        log_format=log_format_from_env(env).value,
        run_as_user=run_as_user(env),
    )
