"""Cross-field rules, declared once and enforced twice: by pydantic and by the API server.

Each `CelRule` carries the CEL expression that goes into the CRD's `x-kubernetes-validations` and a Python
predicate that the pydantic model runs. The test suite evaluates both on the same corpus of manifests with a
real CEL implementation, so the two can never drift apart silently.

Used by `kubegraft.spec` (models declare `__cel_rules__`) and `kubegraft.crd` (emits them).
"""

from __future__ import annotations

import re
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


@dataclass(frozen=True)
class StringRule:
    """A regular-expression check on one string field: a CEL rule on the field's node and its Python twin.

    RE2 (CEL's `matches`, unanchored like `re.search`) and Python's `re` agree on the plain patterns used here
    (no `\\s`, no look-around), so one pattern serves both.

    Attributes:
        pattern: the regular expression, searched anywhere in the value (anchor it with ^ and $).
        message: the sentence returned when the check fails.
        match: True when the value must match, False when it must not.
        prefix: apply only to values starting with this (e.g. ``s3://``); empty applies to all.
    """

    pattern: str
    message: str
    match: bool = True
    prefix: str = ""

    def __post_init__(self) -> None:
        if "'" in self.pattern or "'" in self.prefix:
            raise ValueError("a StringRule pattern is a CEL raw string: it cannot hold a single quote")

    @property
    def cel(self) -> str:
        """The CEL expression over `self` (a string)."""
        test = f"self.matches(r'{self.pattern}')"
        if not self.match:
            test = f"!{test}"
        return f"!self.startsWith('{self.prefix}') || {test}" if self.prefix else test

    def as_crd(self) -> dict[str, str]:
        """The rule as an `x-kubernetes-validations` entry of the field."""
        return {"rule": self.cel, "message": self.message}

    def holds(self, value: str) -> bool:
        """Whether `value` passes, as the CEL expression would decide."""
        if self.prefix and not value.startswith(self.prefix):
            return True
        return (re.search(self.pattern, value) is not None) == self.match


def string_rules(*rules: StringRule) -> tuple[dict[str, Any], Callable[[str], str]]:
    """The `json_schema_extra` that puts `rules` on a field's CRD node, and the validator that runs them.

    Use as ``Annotated[str, Field(json_schema_extra=extra), AfterValidator(check)]``; the validator raises
    one ValueError naming every failed rule, so both paths report the same sentences.
    """

    def check(value: str) -> str:
        failed = [rule.message for rule in rules if not rule.holds(value)]
        if failed:
            raise ValueError("; ".join(failed))
        return value

    return {"x-kubernetes-validations": [rule.as_crd() for rule in rules]}, check
