"""Placement of the training pod: node selector, tolerations, affinity, priority and the Kueue queue.

These fields are copied into the Job's pod template, so they are typed after the Kubernetes core/v1 types
(a subset: the parts a training pod uses) and checked as the Job's API server checks them (`ValidatePodSpec`:
operators and their values, taint effects, label keys and values, weights). A TransferJob the API server
admits therefore never yields a Job it refuses. Used by `kubegraft.spec`; rendered by the operator.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from kubegraft.base import ApiModel
from kubegraft.kube import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_MAX,
    DNS_SUBDOMAIN_PATTERN,
    LABEL_VALUE_MAX,
    LABEL_VALUE_PATTERN,
    MAX_LABELS,
    QUALIFIED_NAME_MAX,
    QUALIFIED_NAME_PATTERN,
    check_label_keys,
)
from kubegraft.rules import CelRule

MAX_INT64 = 2**63 - 1
MAX_TERMS = 16  # terms, requirements and values per list: ample for a pod, small enough for CEL's budget
MAX_VALUES = 64

QualifiedName = Annotated[
    str, Field(min_length=1, max_length=QUALIFIED_NAME_MAX, pattern=QUALIFIED_NAME_PATTERN)
]
LabelValue = Annotated[str, Field(max_length=LABEL_VALUE_MAX, pattern=LABEL_VALUE_PATTERN)]
LabelMap = Annotated[dict[str, LabelValue], AfterValidator(check_label_keys)]

_VALUES_REQUIRED = CelRule(
    rule="!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",
    message="values must be non-empty with operator In or NotIn",
    field_path=".values",
    check=lambda r: r.operator not in ("In", "NotIn") or bool(r.values),
)
_VALUES_FORBIDDEN = CelRule(
    rule="!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0",
    message="values must be empty with operator Exists or DoesNotExist",
    field_path=".values",
    check=lambda r: r.operator not in ("Exists", "DoesNotExist") or not r.values,
)


def _one_integer(values: list[str] | None) -> bool:
    return values is not None and len(values) == 1 and values[0].lstrip("-").isdigit()


class NodeSelectorRequirement(ApiModel):
    """A node label (or field) test: key, operator and values."""

    __cel_rules__ = (
        _VALUES_REQUIRED,
        _VALUES_FORBIDDEN,
        CelRule(
            rule=(
                "!(self.operator in ['Gt', 'Lt']) || (has(self.values) && size(self.values) == 1 && "
                "self.values[0].matches(r'^-?[0-9]+$'))"
            ),
            message="operator Gt or Lt takes exactly one value, an integer",
            field_path=".values",
            check=lambda r: r.operator not in ("Gt", "Lt") or _one_integer(r.values),
        ),
    )

    key: QualifiedName = Field(..., description="The node label key the requirement applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        ..., description="In, NotIn, Exists, DoesNotExist, Gt or Lt."
    )
    values: list[LabelValue] | None = Field(
        None,
        max_length=MAX_VALUES,
        description=(
            "Values: non-empty for In and NotIn, empty for Exists and DoesNotExist, one integer for Gt, Lt."
        ),
    )


class NodeSelectorTerm(ApiModel):
    """Requirements that a node must all meet (terms of one selector are ORed)."""

    __cel_rules__ = (
        CelRule(
            rule=(
                "!has(self.matchFields) || self.matchFields.all(f, f.key == 'metadata.name' && "
                "f.operator in ['In', 'NotIn'] && has(f.values) && size(f.values) == 1)"
            ),
            message=(
                "matchFields supports only key metadata.name with operator In or NotIn and exactly one value"
            ),
            field_path=".matchFields",
            check=lambda t: all(
                f.key == "metadata.name" and f.operator in ("In", "NotIn") and len(f.values or ()) == 1
                for f in t.match_fields or ()
            ),
        ),
    )

    match_expressions: list[NodeSelectorRequirement] | None = Field(
        None, max_length=MAX_TERMS, description="Requirements on node labels."
    )
    match_fields: list[NodeSelectorRequirement] | None = Field(
        None, max_length=MAX_TERMS, description="Requirements on node fields (metadata.name only)."
    )


class NodeSelector(ApiModel):
    """Node selector terms, ORed: a node that meets any term qualifies."""

    node_selector_terms: list[NodeSelectorTerm] = Field(
        ..., min_length=1, max_length=MAX_TERMS, description="The terms; at least one."
    )


class PreferredSchedulingTerm(ApiModel):
    """A weighted node preference."""

    weight: int = Field(..., ge=1, le=100, description="Weight, 1 to 100.")
    preference: NodeSelectorTerm = Field(..., description="The node selector term.")


class NodeAffinity(ApiModel):
    """Node affinity: hard requirements and weighted preferences."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        None, description="Nodes the pod must run on."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = Field(
        None, max_length=MAX_TERMS, description="Nodes the pod prefers."
    )


class LabelSelectorRequirement(ApiModel):
    """A label test of a pod selector: key, operator and values."""

    __cel_rules__ = (_VALUES_REQUIRED, _VALUES_FORBIDDEN)

    key: QualifiedName = Field(..., description="The label key the requirement applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        ..., description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[LabelValue] | None = Field(
        None, max_length=MAX_VALUES, description="Values: non-empty for In and NotIn, empty otherwise."
    )


class LabelSelector(ApiModel):
    """A label selector: matchLabels and matchExpressions, ANDed."""

    match_labels: LabelMap | None = Field(
        None, max_length=MAX_LABELS, description="Labels a pod must carry, key to value."
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        None, max_length=MAX_TERMS, description="Label requirements."
    )


class PodAffinityTerm(ApiModel):
    """Pods (by label selector, in some namespaces) whose topology domain the pod must (not) share."""

    __cel_rules__ = (
        CelRule(
            rule="(!has(self.matchLabelKeys) && !has(self.mismatchLabelKeys)) || has(self.labelSelector)",
            message="matchLabelKeys and mismatchLabelKeys need a labelSelector",
            field_path=".labelSelector",
            check=lambda t: (
                (not t.match_label_keys and not t.mismatch_label_keys) or t.label_selector is not None
            ),
        ),
    )

    label_selector: LabelSelector | None = Field(None, description="The pods this term selects.")
    namespace_selector: LabelSelector | None = Field(None, description="Namespaces the pods may be in.")
    namespaces: list[Annotated[str, Field(max_length=63, pattern=DNS_LABEL_PATTERN)]] | None = Field(
        None, max_length=MAX_TERMS, description="Namespace names the pods may be in."
    )
    topology_key: QualifiedName = Field(
        ..., description="Node label whose value defines the domain (e.g. kubernetes.io/hostname)."
    )
    match_label_keys: list[QualifiedName] | None = Field(
        None, max_length=MAX_TERMS, description="Pod label keys whose values are added to labelSelector."
    )
    mismatch_label_keys: list[QualifiedName] | None = Field(
        None, max_length=MAX_TERMS, description="Pod label keys whose values must differ."
    )


class WeightedPodAffinityTerm(ApiModel):
    """A weighted pod (anti-)affinity preference."""

    weight: int = Field(..., ge=1, le=100, description="Weight, 1 to 100.")
    pod_affinity_term: PodAffinityTerm = Field(..., description="The term.")


class PodAffinity(ApiModel):
    """Pod affinity or anti-affinity: hard requirements and weighted preferences."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = Field(
        None, max_length=MAX_TERMS, description="Terms the pod must meet."
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = Field(
        None, max_length=MAX_TERMS, description="Terms the pod prefers."
    )


class Affinity(ApiModel):
    """A Kubernetes affinity (core/v1 Affinity), copied to the pod."""

    node_affinity: NodeAffinity | None = Field(None, description="Node affinity.")
    pod_affinity: PodAffinity | None = Field(None, description="Pod affinity.")
    pod_anti_affinity: PodAffinity | None = Field(None, description="Pod anti-affinity.")


class Toleration(ApiModel):
    """A Kubernetes toleration, copied to the training pod."""

    __cel_rules__ = (
        CelRule(
            rule="(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
            message=(
                "key is required unless operator is Exists (an empty key with Exists tolerates every taint)"
            ),
            field_path=".key",
            check=lambda t: bool(t.key) or t.operator == "Exists",
        ),
        CelRule(
            rule="!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
            message="value must be empty with operator Exists",
            field_path=".value",
            check=lambda t: t.operator != "Exists" or not t.value,
        ),
        CelRule(
            rule="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="tolerationSeconds applies only with effect NoExecute",
            field_path=".tolerationSeconds",
            check=lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
        ),
    )

    key: (
        Annotated[str, Field(max_length=QUALIFIED_NAME_MAX, pattern=f"({QUALIFIED_NAME_PATTERN})|^$")] | None
    ) = Field(None, description="Taint key; empty with Exists matches all.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (default Equal).")
    value: LabelValue | None = Field(None, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, le=MAX_INT64, description="For NoExecute: how long to stay bound."
    )


class SchedulingSpec(ApiModel):
    """Where the training pod may run and which queue admits it."""

    node_selector: LabelMap = Field(
        default_factory=dict, max_length=MAX_LABELS, description="Node labels the pod requires."
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64, description="Pod tolerations.")
    affinity: Affinity = Field(
        default_factory=Affinity,
        description="A Kubernetes affinity, checked as the Job's API server checks it.",
    )
    priority_class_name: str = Field(
        "",
        max_length=DNS_SUBDOMAIN_MAX,
        pattern=f"({DNS_SUBDOMAIN_PATTERN})|^$",
        description="PriorityClass of the pod.",
    )
    queue_name: str = Field(
        "",
        max_length=LABEL_VALUE_MAX,
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$",
        description=(
            "Kueue LocalQueue (it becomes the kueue.x-k8s.io/queue-name label): the Job is created suspended "
            "and Kueue admits it."
        ),
    )
