"""The base of every contract model: camelCase aliases only, unknown fields and non-finite numbers refused.

Used by `kubegraft.spec`, `kubegraft.scheduling`, `kubegraft.status` and `kubegraft.runtime`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict
from pydantic.alias_generators import to_camel

from kubegraft.rules import RuleCheckedModel


class ApiModel(RuleCheckedModel):
    """Base for every contract model: camelCase aliases only, unknown fields rejected (kubectl strict)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
        extra="forbid",
        validate_default=True,
        allow_inf_nan=False,  # JSON has no NaN or Infinity: the API server never receives them
    )


def unique(items: list[Any] | None) -> list[Any] | None:
    """Reject duplicates in an `x-kubernetes-list-type: set` list, as the API server does."""
    if items is not None:
        seen: set[Any] = set()
        for item in items:
            if item in seen:
                raise ValueError(f"duplicate value {item!r}: items must be unique")
            seen.add(item)
    return items
