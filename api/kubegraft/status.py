"""The TransferJob status: written by the operator only (status subresource), read by users and GitOps tools.

Conditions are the source of truth (Kubernetes API conventions, kstatus-compatible: `Ready`, `Reconciling`,
`Stalled`, plus `Succeeded`, `Failed`, `Suspended`); `phase` is a one-word summary derived from them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from kubegraft.base import ApiModel

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
ConditionStatus = Literal["True", "False", "Unknown"]


class ConditionType:
    """Condition types kubegraft sets on a TransferJob."""

    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    TRANSFER_GAIN = "TransferGain"  # True: the model beat the raw-pixel baseline; False: NoTransferGain
    PUBLISHED = "Published"  # True: the run published a version; False: the publish gate kept it back


class Condition(ApiModel):
    """One condition, following the Kubernetes API conventions."""

    type: str = Field(..., min_length=1, max_length=316, description="Condition type, e.g. Succeeded.")
    status: ConditionStatus = Field(..., description="True, False or Unknown.")
    reason: str = Field(..., min_length=1, max_length=1024, description="CamelCase reason for the status.")
    message: str = Field("", max_length=32768, description="A human-readable sentence.")
    last_transition_time: str = Field(..., description="When status last flipped (RFC 3339).")
    observed_generation: int | None = Field(None, ge=0, description="The spec generation this describes.")


def _unique_types(conditions: list[Condition]) -> list[Condition]:
    """Reject two conditions of one type (`x-kubernetes-list-map-keys: [type]`), as the API server does."""
    types = [condition.type for condition in conditions]
    duplicates = sorted({t for t in types if types.count(t) > 1})
    if duplicates:
        raise ValueError(f"duplicate condition types: {', '.join(duplicates)}")
    return conditions


class ImageCounts(ApiModel):
    """How many images each split holds, and how many were skipped as unreadable."""

    train: int = Field(0, ge=0, description="Training images.")
    validation: int = Field(0, ge=0, description="Validation images.")
    test: int = Field(0, ge=0, description="Test images.")
    skipped: int = Field(0, ge=0, description="Corrupt, empty or non-image files skipped.")


class WorkerCounts(ApiModel):
    """Worker pods of the current run (spec.workers > 1): how many are running, of how many."""

    ready: int = Field(0, ge=0, description="Worker pods whose trainer is running.")
    total: int = Field(1, ge=1, description="Worker pods the run trains on (spec.workers).")


class TransferJobStatus(ApiModel):
    """What the operator observed about the current run."""

    phase: Phase | None = Field(None, description="Pending, Running, Succeeded, Failed or Suspended.")
    run: int | None = Field(None, ge=1, description="Run number; a new spec generation starts a new run.")
    stage: str | None = Field(None, description="The stage training now (or last).")
    epoch: int | None = Field(None, ge=0, description="Epoch within the stage.")
    total_epochs: int | None = Field(None, ge=0, description="Maximum epochs over all stages.")
    progress: int | None = Field(
        None,
        ge=0,
        le=100,
        description=(
            "Percent of the run's planned epochs done (all stages; with strategy auto, all search candidates "
            "within the budget). Only grows within a run; 100 once Succeeded."
        ),
    )
    eta_seconds: int | None = Field(
        None, ge=0, description="Estimated seconds to the end of training (measured pace); unset: unknown."
    )
    last_update_time: str | None = Field(
        None, description="When the operator last wrote progress from the trainer (RFC 3339)."
    )
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="Latest metrics: loss, accuracy, val_loss, val_accuracy, test_accuracy, ...",
    )
    images: ImageCounts | None = Field(None, description="Image counts by split.")
    recipe: str | None = Field(None, description="The training recipe in short form (chosen or given).")
    model_uri: str | None = Field(None, description="The published model version, e.g. s3://models/cars/3/.")
    job_name: str | None = Field(None, description="The batch/v1 Job running the current run.")
    replicas: int | None = Field(None, ge=1, description="Replicas training in sync (GPUs, or 1 per worker).")
    global_batch_size: int | None = Field(
        None, ge=1, description="Examples per optimizer step of the current stage (batchSize), all replicas."
    )
    per_replica_batch_size: int | None = Field(
        None, ge=1, description="Examples each replica computes per step of the current stage."
    )
    workers: WorkerCounts | None = Field(
        None, description="With spec.workers > 1: worker pods running (ready) of the run's total."
    )
    start_time: str | None = Field(None, description="When the current run started (RFC 3339).")
    completion_time: str | None = Field(None, description="When the current run finished (RFC 3339).")
    observed_generation: int | None = Field(
        None, ge=0, description="The spec generation this status describes."
    )
    conditions: Annotated[list[Condition], AfterValidator(_unique_types)] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description=(
            "Ready, Reconciling, Stalled, Succeeded, Failed, Suspended; once a run succeeded, Published "
            "(False with NotBetter or BelowMinimum when the publish gate kept the model back), TransferGain."
        ),
    )
