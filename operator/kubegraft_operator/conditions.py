"""Pure helpers for Kubernetes-style conditions, used by `planning` to build a TransferJob's status.

Conventions (kubernetes/community api-conventions.md, cert-manager's conditions helpers): conditions are
keyed by `type`; `lastTransitionTime` changes only when `status` flips; `reason` is CamelCase; `message` is
one human sentence; every condition carries the `observedGeneration` it describes. The condition set follows
kstatus: `Reconciling` True while a run is under way, `Stalled` True when it cannot make progress or failed,
`Ready` True once it succeeded, plus `Succeeded`, `Failed` and `Suspended` for
`kubectl wait --for=condition=...`; a succeeded run adds `Published` and `TransferGain`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubegraft.status import ConditionType

CONDITION_ORDER = (
    ConditionType.READY,
    ConditionType.RECONCILING,
    ConditionType.STALLED,
    ConditionType.SUCCEEDED,
    ConditionType.FAILED,
    ConditionType.SUSPENDED,
    ConditionType.PUBLISHED,
    ConditionType.TRANSFER_GAIN,
)


@dataclass(frozen=True)
class DesiredCondition:
    """A condition as planning wants it, before times are resolved against the previous status."""

    type: str
    status: bool
    reason: str
    message: str = ""


def find(conditions: Iterable[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    """The condition of type `type_` in `conditions`, or None."""
    for condition in conditions:
        if condition.get("type") == type_:
            return condition
    return None


def is_true(conditions: Iterable[Mapping[str, Any]], type_: str) -> bool:
    """Whether the condition of type `type_` is present with status True."""
    condition = find(conditions, type_)
    return condition is not None and condition.get("status") == "True"


def merge(
    previous: Sequence[Mapping[str, Any]],
    desired: Iterable[DesiredCondition],
    *,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """The new conditions: `desired`, with `lastTransitionTime` kept from `previous` unless status flipped.

    Args:
        previous: the conditions in the current status (possibly empty).
        desired: the conditions planning wants now.
        generation: the metadata.generation they describe (written on every condition).
        now: the RFC 3339 time of this observation (used for flips and new conditions).

    Returns:
        The conditions in a stable order (Ready, Reconciling, Stalled, Succeeded, Failed, Suspended, others).
    """
    result: list[dict[str, Any]] = []
    for want in desired:
        status = "True" if want.status else "False"
        before = find(previous, want.type)
        flipped = before is None or before.get("status") != status
        result.append(
            {
                "type": want.type,
                "status": status,
                "reason": want.reason,
                "message": want.message,
                "lastTransitionTime": now
                if flipped or before is None
                else before.get("lastTransitionTime", now),
                "observedGeneration": generation,
            }
        )
    rank = {t: i for i, t in enumerate(CONDITION_ORDER)}
    return sorted(result, key=lambda c: rank.get(c["type"], len(rank)))
