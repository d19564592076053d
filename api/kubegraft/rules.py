"""Cross-field rules, declared once and enforced twice: by pydantic and by the API server.

Each `CelRule` carries the CEL expression that goes into the CRD's `x-kubernetes-validations` and a Python
predicate that the pydantic model runs. The test suite evaluates both on the same corpus of manifests with a
real CEL implementation, so the two can never drift apart silently.

Used by `kubegraft.spec` (models declare `__cel_rules__`) and `kubegraft.crd` (emits them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, model_validator


@dataclass(frozen=True)
class CelRule:
    """One `x-kubernetes-validations` entry and its Python twin.

    Attributes:
        rule: the CEL expression, evaluated with `self` bound to the object the rule is declared on.
        message: the sentence the API server returns when the rule is false.
        field_path: JSONPath (relative to `self`, e.g. ``.testSplit``) the error is reported at.
        check: Python predicate over the validated model; True means valid.
    """

    rule: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None
    reason: str = "FieldValueInvalid"

    def as_crd(self) -> dict[str, str]:
        """The rule as it appears in the CRD schema."""
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason != "FieldValueInvalid":
            out["reason"] = self.reason
        return out


class RuleCheckedModel(BaseModel):
    """Base for models with cross-field rules: runs each rule's Python predicate after field validation."""

    __cel_rules__: tuple[CelRule, ...] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self) -> RuleCheckedModel:
        failed = [rule for rule in type(self).__cel_rules__ if not rule.check(self)]
        if failed:
            # One message per failed rule, prefixed with the field path the API server would name.
            raise ValueError("; ".join(_describe(rule) for rule in failed))
        return self


def _describe(rule: CelRule) -> str:
    return f"{rule.field_path.lstrip('.')}: {rule.message}" if rule.field_path else rule.message
