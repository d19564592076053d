"""The contract between the operator and the trainer pod, shared by both without importing either.

The operator renders these environment variables, paths and ports into the Job; the trainer reads them,
serves `GET /progress` (a `TrainingProgress` as JSON) and `GET /metrics` on `PROGRESS_PORT`, exits with an
`ExitCode`, and writes a compact `TrainingProgress` to the termination message file.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Literal

from pydantic import Field

from kubegraft.base import ApiModel
from kubegraft.status import ImageCounts

PROGRESS_PORT = 9090
PROGRESS_PORT_NAME = "progress"
SPEC_MOUNT_DIR = "/etc/kubegraft"
SPEC_FILE_NAME = "transferjob.yaml"
SCRATCH_DIR = "/scratch"
TERMINATION_LOG = "/dev/termination-log"
TERMINATION_MESSAGE_MAX_BYTES = 4096

ENV_SPEC_PATH = "KUBEGRAFT_SPEC"  # path of the mounted TransferJob manifest (spec only, no secrets)
ENV_RUN_ID = "KUBEGRAFT_RUN_ID"  # stable identity of a run: "<uid>-g<generation>"; names its checkpoints
ENV_PROGRESS_PORT = "KUBEGRAFT_PROGRESS_PORT"
ENV_PROGRESS_BIND = "KUBEGRAFT_PROGRESS_BIND"  # address the progress server binds; default 0.0.0.0
ENV_TERMINATION_LOG = "KUBEGRAFT_TERMINATION_LOG"
ENV_SCRATCH_DIR = "KUBEGRAFT_SCRATCH"
ENV_LOG_FORMAT = "KUBEGRAFT_LOG_FORMAT"  # "text" (default) or "json": the operator passes on its own format
ENV_EXPECTED_GPUS = "KUBEGRAFT_EXPECTED_GPUS"  # resources.gpus: a pod that sees fewer fails at once (exit 78)

# Several workers (spec.workers > 1): one Indexed Job whose pods find each other through a headless Service.
WORKER_PORT = 2222  # TensorFlow's gRPC server of each worker (MultiWorkerMirroredStrategy collectives)
WORKER_PORT_NAME = "worker"
ENV_WORKERS = "KUBEGRAFT_WORKERS"  # how many workers train together
ENV_JOB_NAME = "KUBEGRAFT_JOB_NAME"  # the Job: worker i's hostname is <job>-<i>
ENV_WORKER_SERVICE = "KUBEGRAFT_WORKER_SERVICE"  # the headless Service (pod subdomain): <job>-<i>.<service>
ENV_WORKER_PORT = "KUBEGRAFT_WORKER_PORT"
ENV_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"  # set by the Job controller in every pod of an Indexed Job
ANNOTATION_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # the same index on the pod
# Test only (the test kubelet, where every pod shares one host): JSON {"<host>:<port>": "127.0.0.1:<port>"},
# the stand-in for cluster DNS through which the trainer reaches the other workers. Never set in a cluster.
ENV_TEST_ADDRESSES = "KUBEGRAFT_TEST_ADDRESSES"


class ExitCode(IntEnum):
    """Trainer exit codes; the Job's podFailurePolicy keys on them."""

    SUCCEEDED = 0
    RETRYABLE = 1  # infrastructure trouble (storage timeouts, OOM, preemption): retry within backoffLimit
    INVALID = 78  # EX_CONFIG: the spec or the data is wrong; retrying cannot help
    TERMINATED = 143  # 128 + SIGTERM: stopped by a drain, preemption or deletion; the retry resumes
    # EX_TEMPFAIL: another worker of a multi-worker run failed, so this one stopped too (its collectives were
    # aborted). Not this pod's fault: the Job's podFailurePolicy ignores it, so that one restart of the pod
    # set uses one retry (the failed worker's), not one per worker.
    WORKER_LOST = 75


class FailureReason:
    """CamelCase reasons the trainer reports for a failed run (termination message and /progress)."""

    INVALID_SPEC = "InvalidSpec"
    DATASET_NOT_FOUND = "DatasetNotFound"
    DATASET_EMPTY = "DatasetEmpty"
    TOO_FEW_CLASSES = "TooFewClasses"
    TOO_FEW_IMAGES = "TooFewImages"
    STORAGE_ACCESS_DENIED = "StorageAccessDenied"
    BACKBONE_UNAVAILABLE = "BackboneUnavailable"
    OUTPUT_NOT_WRITABLE = "OutputNotWritable"
    GPUS_UNAVAILABLE = "GpusUnavailable"  # the pod sees fewer GPUs than resources.gpus asked for
    TRAINING_ERROR = "TrainingError"
    TERMINATED = "Terminated"  # SIGTERM: the pod was stopped; a retry resumes from the last checkpoint
    WORKER_LOST = "WorkerLost"  # another worker of the run failed; this one stopped with it (exit 75)


class NoticeReason:
    """CamelCase reasons of notices: facts about a run a user should see, without failing it.

    The operator turns each notice into a Kubernetes Event on the TransferJob (once per run) and
    NoTransferGain into the `TransferGain` condition.
    """

    NO_TRANSFER_GAIN = "NoTransferGain"  # the model did not beat the raw-pixel baseline on the test split
    FINE_TUNE_REGRESSED = "FineTuneRegressed"  # a stage ended below the previous best; weights were restored
    BATCH_NORM_REESTIMATED = "BatchNormReestimated"  # collapsed backbone features; BN statistics re-estimated
    RECIPE_CHOSEN = "RecipeChosen"  # strategy auto picked a recipe (the message names it and its score)
    # The publish gate kept the run from publishing a version (the run still succeeds):
    NOT_BETTER = "NotBetter"  # publishPolicy ifBetter: the latest published version scored as well or better
    BELOW_MINIMUM = "BelowMinimum"  # the test accuracy is below output.minTestAccuracy


# Notices that say a run published no version (the operator's Published condition is False with the reason).
UNPUBLISHED_NOTICES = frozenset({NoticeReason.NOT_BETTER, NoticeReason.BELOW_MINIMUM})
WARNING_NOTICES = frozenset(
    {NoticeReason.NO_TRANSFER_GAIN, NoticeReason.FINE_TUNE_REGRESSED, NoticeReason.BELOW_MINIMUM}
)


class Notice(ApiModel):
    """One fact about the run worth an Event: what happened and why it matters."""

    reason: str = Field(..., min_length=1, max_length=128, description="A NoticeReason.")
    message: str = Field("", max_length=1024, description="One or two sentences (never holds secrets).")


TrainingState = Literal["starting", "loading", "training", "exporting", "succeeded", "failed"]


class TrainingProgress(ApiModel):
    """The trainer's live progress (GET /progress) and, compacted, its termination message."""

    state: TrainingState = Field("starting", description="Where the trainer is.")
    stage: str | None = Field(None, description="Stage now training.")
    stage_index: int | None = Field(None, ge=0, description="Index of the stage in the resolved stage list.")
    stages: list[str] = Field(default_factory=list, description="Names of all stages, in order.")
    epoch: int = Field(0, ge=0, description="Epochs finished in the current stage.")
    stage_epochs: int = Field(0, ge=0, description="Maximum epochs of the current stage.")
    completed_epochs: int = Field(0, ge=0, description="Epochs finished over all stages.")
    total_epochs: int = Field(0, ge=0, description="Maximum epochs over all stages.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Latest epoch metrics and test metrics."
    )
    images: ImageCounts = Field(default_factory=ImageCounts, description="Image counts by split.")
    images_per_second: float | None = Field(None, ge=0, description="Training throughput of the last epoch.")
    images_trained: int = Field(
        0, ge=0, description="Training images processed so far in this run, over all stages (only grows)."
    )
    eta_seconds: float | None = Field(
        None, ge=0, description="Seconds to the end of training at the measured pace; None: unknown."
    )
    replicas: int | None = Field(None, ge=1, description="Replicas training in sync, over all workers.")
    global_batch_size: int | None = Field(
        None,
        ge=1,
        description="Examples per optimizer step of the current stage (its batchSize), all replicas.",
    )
    per_replica_batch_size: int | None = Field(
        None, ge=1, description="Examples each replica computes per step of the current stage."
    )
    search_epochs_done: int = Field(
        0, ge=0, description="strategy auto: epochs the finished candidates ran (not in completedEpochs)."
    )
    search_epochs_left: int = Field(
        0, ge=0, description="strategy auto: most epochs the candidates to come may run (budget)."
    )
    progress: int = Field(
        0,
        ge=0,
        le=100,
        description=(
            "Percent of the run's planned epochs done (stages, and the search's candidates); only grows, "
            "at most 99 until the run succeeded."
        ),
    )
    recipe: str | None = Field(None, description="The recipe in short form.")
    notices: list[Notice] = Field(
        default_factory=list, description="Facts worth an Event (NoticeReason), in the order they happened."
    )
    model_uri: str | None = Field(None, description="The published version, once exported.")
    reason: str | None = Field(None, description="A FailureReason when state is failed.")
    message: str | None = Field(None, description="A one-sentence explanation (never holds secrets).")
