"""Kubernetes' own naming rules (apimachinery `validation.go`), for the fields kubegraft copies into a Job.

A TransferJob passes labels, node selectors, tolerations, affinity terms and queue names on to the Job and
its pod; whatever the Job's API server would refuse must be refused when the TransferJob is admitted,
naming the TransferJob's field. The patterns go into the CRD schema; the functions check what a CRD schema
cannot express (map keys) and what the API server checks natively in `metadata` (labels, annotations,
namespace), the same way for `kubegraft validate` and for the pydantic models.

Used by `kubegraft.spec` and `kubegraft.validation`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"{DNS_LABEL}(\.{DNS_LABEL})*"
DNS_LABEL_PATTERN = rf"^{DNS_LABEL}$"
DNS_SUBDOMAIN_PATTERN = rf"^{DNS_SUBDOMAIN}$"
# A label value: at most 63 characters, alphanumeric at both ends, '-', '_' and '.' inside; may be empty.
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
LABEL_VALUE_MAX = 63
# A qualified name (label and annotation keys, taint keys, topology keys): [DNS subdomain/]name.
QUALIFIED_NAME_PATTERN = rf"^({DNS_SUBDOMAIN}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$"
QUALIFIED_NAME_MAX = 253 + 1 + 63
DNS_SUBDOMAIN_MAX = 253
# The API server's bound on all annotations of one object together (keys plus values), in bytes.
ANNOTATIONS_MAX_BYTES = 256 * 1024
MAX_LABELS = 64


def _full(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern.removeprefix("^").removesuffix("$"), value) is not None


def qualified_name_problem(key: str, what: str = "label") -> str | None:
    """Why `key` is not a qualified name (`what`: label or annotation key), or None when it is one."""
    prefix, _, name = key.rpartition("/")
    shown = f"{what} key {key[:80]!r} is not a valid Kubernetes key"
    if "/" in prefix:
        return f"{shown}: at most one '/' (prefix/name)"
    if prefix and len(prefix) > DNS_SUBDOMAIN_MAX:
        return f"{shown}: the prefix must be at most {DNS_SUBDOMAIN_MAX} characters"
    if len(name) > LABEL_VALUE_MAX or not _full(QUALIFIED_NAME_PATTERN, key):
        return (
            f"{shown}: an optional DNS-subdomain prefix and '/', then at most 63 letters, digits, '-', '_' "
            "or '.', starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a label value, or None when it is one."""
    if len(value) > LABEL_VALUE_MAX:
        return f"must be at most {LABEL_VALUE_MAX} characters, got {len(value)}"
    if not _full(LABEL_VALUE_PATTERN, value):
        return (
            f"invalid label value {value[:80]!r}: alphanumeric characters, '-', '_' or '.', alphanumeric "
            "at both ends"
        )
    return None


def label_map_problems(labels: Mapping[Any, Any], values: bool = True, what: str = "label") -> Iterator[str]:
    """One sentence for each invalid key (and value, when `values`) of a label or annotation map."""
    for key, value in labels.items():
        key_problem = qualified_name_problem(key, what) if isinstance(key, str) else "keys must be strings"
        if key_problem:
            yield key_problem
        elif values and isinstance(value, str) and (value_problem := label_value_problem(value)):
            yield f"the value of {key[:80]!r}: {value_problem}"


def check_label_keys(labels: dict[str, str]) -> dict[str, str]:
    """Pydantic validator: every key of `labels` is a qualified name (values are checked by the schema)."""
    problems = list(label_map_problems(labels, values=False))
    if problems:
        raise ValueError("; ".join(problems))
    return labels


def check_annotation_keys(annotations: dict[str, str]) -> dict[str, str]:
    """Pydantic validator: every key of `annotations` is a qualified name."""
    problems = list(label_map_problems(annotations, values=False, what="annotation"))
    if problems:
        raise ValueError("; ".join(problems))
    return annotations


def metadata_problems(metadata: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(field path under metadata, problem) for what the API server checks in ObjectMeta's naming fields."""
    namespace = metadata.get("namespace")
    # An empty namespace is no namespace: the API server takes the request's.
    if (
        isinstance(namespace, str)
        and namespace
        and (len(namespace) > 63 or not _full(DNS_LABEL_PATTERN, namespace))
    ):
        yield "namespace", f"invalid namespace {namespace[:80]!r}: a DNS label of at most 63 characters"
    generate = metadata.get("generateName")
    if isinstance(generate, str) and len(generate) > DNS_SUBDOMAIN_MAX:
        yield "generateName", f"must be at most {DNS_SUBDOMAIN_MAX} characters, got {len(generate)}"
    labels = metadata.get("labels")
    if isinstance(labels, Mapping):
        if len(labels) > MAX_LABELS:
            yield "labels", f"at most {MAX_LABELS} labels, got {len(labels)}"
        for problem in label_map_problems(labels):
            yield "labels", problem
    annotations = metadata.get("annotations")
    if isinstance(annotations, Mapping):
        for problem in label_map_problems(annotations, values=False, what="annotation"):
            yield "annotations", problem
        size = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in annotations.items())
        if size > ANNOTATIONS_MAX_BYTES:
            yield "annotations", f"may not be more than {ANNOTATIONS_MAX_BYTES} bytes in all, got {size}"
