"""Validate TransferJob manifests the way the API server will, and the same way through pydantic.

`validate_object` follows the apiextensions-apiserver's order on the generated CRD (`kubegraft.crd`): check
apiVersion and kind, prune nulls, reject unknown fields (like `kubectl --validate=strict`), apply the
schema's defaults, validate against the `openAPIV3Schema` (OpenAPI 3.0 is JSON Schema draft 4 here,
int-or-string honoured), then evaluate every `x-kubernetes-validations` CEL rule at its node with cel-python,
unless a type or required-field error makes that unsafe (the API server skips CEL then too).

`validate_with_pydantic` runs the same manifest through the pydantic models in strict mode (no coercion, as
the API server does none). Tests require both paths to reach the same verdict on a corpus of manifests.

Called by `kubegraft validate`, by the test harness that emulates the API server's admission, and by tests.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import celpy
import jsonschema
from celpy import celtypes
from celpy.adapter import json_to_cel
from pydantic import BaseModel, ValidationError

from kubegraft.crd import openapi_schema
from kubegraft.kube import metadata_problems
from kubegraft.manifests import MAX_DEPTH, MAX_MANIFEST_BYTES, ManifestError, decode_manifest, load_manifests
from kubegraft.rules import CelRule
from kubegraft.spec import API_VERSION, GROUP, KIND, TransferJob
from kubegraft.status import TransferJobStatus

# ObjectMeta fields a client may send; anything else under metadata is an unknown field (kubectl strict).
OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "ownerReferences",
        "finalizers",
        "managedFields",
        "selfLink",
    }
)
# What the apiserver appends when CEL rules were skipped because of blocking schema errors.
CEL_SKIPPED_MESSAGE = (
    "some validation rules were not checked because the object was invalid; correct the existing errors to "
    "complete validation"
)
# Errors after which CEL rules are not evaluated: a wrong type or missing field makes them unsafe, and an
# oversized string or list would exceed the API server's CEL cost budget (it refuses the object then).
_BLOCKING_VALIDATORS = frozenset({"type", "required", "anyOf", "maxItems", "maxLength", "maxProperties"})
# pydantic puts union member tags ("int", "str", "function-after[...]") into error locations: not fields.
_UNION_TAG = re.compile(r"^(int|str|float|bool|none|(list|dict|literal|function-\w+|nullable)\[.*\])$")
# Values longer than this are shortened in messages: one error stays one readable line.
_SHOWN_CHARS = 60
_INT64 = (-(2**63), 2**63 - 1)  # the API server decodes JSON integers into int64
MAX_MANIFEST_CHARS = MAX_MANIFEST_BYTES // 4  # shorter strings cannot exceed the byte limit in UTF-8
# Documents validated per stream: each costs tens of milliseconds (CEL), so a file of thousands would take
# minutes; a bigger bundle is split (`kubectl apply -f dir/`) or validated file by file.
MAX_DOCUMENTS = 100
MAX_REPORTED_ERRORS = 20  # per document: a file of 10^4 unknown keys gets a screenful, not 10^4 lines


@dataclass(frozen=True, order=True)
class FieldError:
    """One validation error: the dotted camelCase path of the field (``spec.stages[1].name``) and why."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass
class ValidationResult:
    """The outcome of validating one object: its errors and the object after pruning and defaulting."""

    errors: list[FieldError] = field(default_factory=list)
    defaulted: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the object would be admitted."""
        return not self.errors


def is_transferjob(obj: object) -> bool:
    """Whether a document claims to be a TransferJob of kubegraft's group (any version)."""
    if not isinstance(obj, Mapping):
        return False
    api_version = obj.get("apiVersion")
    return obj.get("kind") == KIND and isinstance(api_version, str) and api_version.split("/", 1)[0] == GROUP


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def _type_errors(obj: object) -> list[FieldError]:
    """apiVersion and kind: the only things checked before the schema applies."""
    if not isinstance(obj, Mapping):
        return [FieldError("", "a TransferJob manifest must be a mapping")]
    errors = []
    if obj.get("apiVersion") != API_VERSION:
        errors.append(FieldError("apiVersion", f"must be {API_VERSION}, got {obj.get('apiVersion')!r}"))
    if obj.get("kind") != KIND:
        errors.append(FieldError("kind", f"must be {KIND}, got {obj.get('kind')!r}"))
    return errors


def _metadata_errors(metadata: object) -> list[FieldError]:
    """What the API server checks in metadata itself: known fields only, and a name (or generateName)."""
    if metadata is None:
        return [FieldError("metadata.name", "name or generateName is required")]
    if not isinstance(metadata, Mapping):
        return [FieldError("metadata", "must be an object")]
    errors = [
        FieldError(_path("metadata", key), f'unknown field "{key}"')
        for key in metadata
        if key not in OBJECT_META_FIELDS
    ]
    if not metadata.get("name") and not metadata.get("generateName"):
        errors.append(FieldError("metadata.name", "name or generateName is required"))
    for key in ("name", "generateName", "namespace"):
        if key in metadata and not isinstance(metadata[key], str):
            errors.append(FieldError(_path("metadata", key), "must be a string"))
    for key in ("labels", "annotations"):
        value = metadata.get(key)
        if value is not None and not (
            isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values())
        ):
            errors.append(FieldError(_path("metadata", key), "must be a map of strings"))
    errors.extend(
        FieldError(_path("metadata", path), problem) for path, problem in metadata_problems(metadata)
    )
    return errors


def _brief(value: object) -> str:
    """`repr(value)`, shortened to about `_SHOWN_CHARS` characters."""
    try:
        text = repr(value)
    except ValueError:  # an integer past Python's 4300-digit conversion limit
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"


def json_errors(obj: object) -> list[FieldError]:
    """What JSON (so the API server) cannot carry: NaN and infinities, non-string keys, other Python types,
    nesting deeper than `MAX_DEPTH` (which also stops cycles). Iterative, so any input is safe to walk.
    """
    errors: list[FieldError] = []
    stack: list[tuple[object, str, int]] = [(obj, "", 0)]
    while stack and len(errors) < 20:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            errors.append(FieldError(path, f"nesting deeper than {MAX_DEPTH} levels"))
        elif isinstance(value, Mapping):
            for key, child in value.items():
                if isinstance(key, str):
                    stack.append((child, _path(path, key), depth + 1))
                else:
                    errors.append(FieldError(path, f"keys must be strings, got {_brief(key)}"))
        elif isinstance(value, list | tuple):
            stack.extend((child, _path(path, i), depth + 1) for i, child in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            errors.append(FieldError(path, f"must be a finite number, got {value}"))
        elif isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
            errors.append(FieldError(path, f"must fit in 64 bits, got {_brief(value)}"))
        elif not isinstance(value, str | int | float | bool) and value is not None:
            errors.append(FieldError(path, f"{type(value).__name__} is not a JSON value"))
    return sorted(errors)


def prune_nulls(value: Any) -> Any:
    """A copy of `value` without null-valued keys (the API server prunes nulls on non-nullable fields)."""
    if isinstance(value, Mapping):
        return {k: prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune_nulls(v) for v in value]
    return value


def _preserves_unknown(schema: Mapping[str, Any]) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


def _drop_unknown(value: Any, schema: Mapping[str, Any], path: str, errors: list[FieldError]) -> Any:
    """A copy of `value` without fields the schema does not declare; each dropped one is an error."""
    if path == "metadata":
        # ObjectMeta: the schema declares name and generateName only; `_metadata_errors` checks the rest.
        return value
    if isinstance(value, Mapping) and schema.get("type") == "object" and not _preserves_unknown(schema):
        properties: Mapping[str, Any] = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        out = {}
        for key, child in value.items():
            if key in properties:
                out[key] = _drop_unknown(child, properties[key], _path(path, key), errors)
            elif isinstance(additional, Mapping):
                out[key] = _drop_unknown(child, additional, _path(path, key), errors)
            else:
                errors.append(FieldError(_path(path, key), f'unknown field "{key}"'))
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_drop_unknown(item, schema["items"], _path(path, i), errors) for i, item in enumerate(value)]
    return value


def apply_defaults(value: Any, schema: Mapping[str, Any]) -> Any:
    """Fill absent fields with the schema's defaults, recursing into objects and list items (in place)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        for key, prop in schema.get("properties", {}).items():
            if key not in value and "default" in prop:
                value[key] = copy.deepcopy(prop["default"])
            if key in value:
                value[key] = apply_defaults(value[key], prop)
        additional = schema.get("additionalProperties")
        if isinstance(additional, Mapping):
            for key in value:
                value[key] = apply_defaults(value[key], additional)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            value[index] = apply_defaults(item, schema["items"])
    return value


@functools.cache
def _schema() -> dict[str, Any]:
    """The CRD's schema, built once per process (admission calls this for every write); never mutated."""
    return openapi_schema()


@functools.cache
def _validator() -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(_schema())


def _schema_errors(obj: Mapping[str, Any], schema: Mapping[str, Any]) -> tuple[list[FieldError], bool]:
    """jsonschema errors of `obj`, and whether any is blocking (a wrong type or a missing required field)."""
    validator = _validator() if schema is _schema() else jsonschema.Draft4Validator(schema)
    errors: set[FieldError] = set()
    blocking = False
    for error in validator.iter_errors(obj):
        path = ""
        for key in error.absolute_path:
            path = _path(path, key)
        blocking = blocking or error.validator in _BLOCKING_VALIDATORS
        if error.validator == "required":
            missing = [name for name in error.validator_value if name not in error.instance]
            errors.update(FieldError(_path(path, name), "Required value") for name in missing)
        elif error.validator == "anyOf" and error.schema.get("x-kubernetes-int-or-string"):
            errors.add(FieldError(path, f"must be an integer or a string, got {error.instance!r}"))
        else:
            message = error.message
            shown = repr(error.instance)
            if len(shown) > _SHOWN_CHARS:
                message = message.replace(shown, _brief(error.instance))
            errors.add(FieldError(path, message))
    errors.update(_list_set_errors(obj, schema, ""))
    return sorted(errors), blocking


def _list_set_errors(value: Any, schema: Mapping[str, Any], path: str) -> Iterator[FieldError]:
    """Duplicates in `x-kubernetes-list-type` set and map lists (JSON Schema's uniqueItems is not allowed)."""
    if isinstance(value, list):
        list_type = schema.get("x-kubernetes-list-type")
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen: set[str] = set()
        for index, item in enumerate(value):
            identity = (
                tuple(item.get(k) for k in keys) if list_type == "map" and isinstance(item, Mapping) else item
            )
            if list_type in ("set", "map"):
                key = repr(identity)  # hashable whatever the item (a set keeps this linear in the list)
                if key in seen:
                    yield FieldError(_path(path, index), f"Duplicate value: {_brief(identity)}")
                seen.add(key)
            if isinstance(schema.get("items"), Mapping):
                yield from _list_set_errors(item, schema["items"], _path(path, index))
    elif isinstance(value, Mapping):
        properties = schema.get("properties", {})
        for key, child in value.items():
            if key in properties:
                yield from _list_set_errors(child, properties[key], _path(path, key))


@functools.cache
def _program(rule: str) -> celpy.Runner:
    """The compiled CEL program of a rule (compiling parses with lark: cache it)."""
    env = celpy.Environment()
    return env.program(env.compile(rule))


def compile_rule(rule: str) -> None:
    """Compile a CEL rule, raising `celpy.CELParseError` when it is not valid CEL."""
    _program(rule)


def to_cel(value: Any, schema: Mapping[str, Any]) -> Any:
    """Convert a JSON value to CEL by its schema type, as the API server does (numbers are doubles)."""
    if schema.get("x-kubernetes-int-or-string"):
        return celtypes.IntType(value) if isinstance(value, int) else celtypes.StringType(value)
    if _preserves_unknown(schema):
        return json_to_cel(value)
    kind = schema.get("type")
    if kind == "object" and isinstance(value, Mapping):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        return celtypes.MapType(
            {
                celtypes.StringType(k): to_cel(v, properties.get(k) or additional or {})
                for k, v in value.items()
            }
        )
    if kind == "array" and isinstance(value, list):
        return celtypes.ListType([to_cel(v, schema.get("items", {})) for v in value])
    if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return celtypes.DoubleType(float(value))
    return json_to_cel(value)


def _cel_check(value: Any, schema: Mapping[str, Any], path: str, errors: list[FieldError]) -> Any:
    """Evaluate every x-kubernetes-validations rule at or below this node, children first.

    Returns the node's CEL value, built once from its children's, so each rule sees the same converted object
    and the conversion costs O(size) however many rules sit above it.
    """
    if isinstance(value, Mapping) and schema.get("type") == "object" and not _preserves_unknown(schema):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        cel_value: Any = celtypes.MapType(
            {
                celtypes.StringType(key): _cel_check(
                    child, properties.get(key) or additional or {}, _path(path, key), errors
                )
                for key, child in value.items()
            }
        )
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        cel_value = celtypes.ListType(
            [_cel_check(item, schema["items"], _path(path, i), errors) for i, item in enumerate(value)]
        )
    else:
        cel_value = to_cel(value, schema)
    for rule in schema.get("x-kubernetes-validations", ()):
        at = path + rule.get("fieldPath", "") if path else rule.get("fieldPath", "").lstrip(".")
        try:
            result = _program(rule["rule"]).evaluate({"self": cel_value})
        except Exception as exc:  # any failure to evaluate is the rule's error, as in the apiserver
            errors.append(FieldError(at, f"error evaluating rule {rule['rule']!r}: {exc}"))
            continue
        if not isinstance(result, celtypes.BoolType):
            errors.append(FieldError(at, f"error evaluating rule {rule['rule']!r}: {result!r}"))
        elif not result:
            errors.append(FieldError(at, rule["message"]))
    return cel_value


def validate_object(obj: Mapping[str, Any]) -> ValidationResult:
    """Validate one TransferJob manifest against the generated CRD, as the API server admits it.

    Args:
        obj: the manifest as loaded from YAML or JSON (not modified).

    Returns:
        The errors (empty when admitted) and the object after pruning, unknown-field removal and defaulting.
    """
    errors = _type_errors(obj) or json_errors(obj)
    if errors:
        return ValidationResult(errors=errors, defaulted=dict(obj) if isinstance(obj, Mapping) else {})
    schema = _schema()
    pruned = prune_nulls(obj)
    oversized = _size_errors(pruned, schema)
    if oversized:
        return ValidationResult(errors=[*oversized, FieldError("", CEL_SKIPPED_MESSAGE)], defaulted=pruned)
    metadata_errors = _metadata_errors(pruned.get("metadata"))
    errors.extend(metadata_errors)
    known = _drop_unknown(pruned, schema, "", errors)
    defaulted = apply_defaults(known, schema)
    schema_errors, blocking = _schema_errors(defaulted, schema)
    errors.extend(schema_errors)
    if blocking or any(e.path == "metadata" for e in metadata_errors):
        errors.append(FieldError("", CEL_SKIPPED_MESSAGE))
    else:
        # The API server generates the name before validation: CEL sees generateName plus five characters.
        cel_view = copy.deepcopy(defaulted)
        metadata = cel_view.setdefault("metadata", {})
        if "name" not in metadata:
            generate = metadata.get("generateName")
            metadata["name"] = f"{generate}xxxxx" if generate else ""
        _cel_check(cel_view, schema, "", errors)
    return ValidationResult(errors=_dedupe(errors), defaulted=defaulted)


def _size_errors(obj: Any, schema: Mapping[str, Any]) -> list[FieldError]:
    """Strings, lists and maps over their schema bounds, found in one walk of the object alone.

    Checked before anything else: an oversized list would make the full schema walk, defaulting and the CEL
    rules cost time in proportion to it (the API server's CEL budget refuses such an object too).
    """
    errors: list[FieldError] = []
    stack: list[tuple[Any, Mapping[str, Any], str]] = [(obj, schema, "")]
    while stack:
        value, node, path = stack.pop()
        if isinstance(value, str) and len(value) > node.get("maxLength", len(value)):
            errors.append(
                FieldError(path, f"must be at most {node['maxLength']} characters, got {len(value)}")
            )
        elif isinstance(value, list):
            if len(value) > node.get("maxItems", len(value)):
                errors.append(
                    FieldError(path, f"must have at most {node['maxItems']} items, got {len(value)}")
                )
            elif isinstance(node.get("items"), Mapping):
                stack.extend((item, node["items"], _path(path, i)) for i, item in enumerate(value))
        elif isinstance(value, Mapping):
            if len(value) > node.get("maxProperties", len(value)):
                errors.append(
                    FieldError(path, f"must have at most {node['maxProperties']} entries, got {len(value)}")
                )
                continue
            properties = node.get("properties", {})
            additional = node.get("additionalProperties")
            for key, child in value.items():
                child_node = properties.get(key) or (additional if isinstance(additional, Mapping) else None)
                if child_node is not None:
                    stack.append((child, child_node, _path(path, key)))
    return sorted(errors)


def _dedupe(errors: list[FieldError]) -> list[FieldError]:
    return list(dict.fromkeys(errors))


def _all_rules() -> list[CelRule]:
    """Every model's CEL rules, to map pydantic's rule failures back to their field paths."""
    from kubegraft.crd import _model_classes

    rules: list[CelRule] = []
    for cls in {**_model_classes(TransferJob), **_model_classes(TransferJobStatus)}.values():
        rules.extend(getattr(cls, "__cel_rules__", ()))
    return rules


def _loc_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for key in loc:
        if isinstance(key, str) and _UNION_TAG.match(key):
            continue
        path = _path(path, key)
    return path


def _pydantic_errors(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> list[FieldError]:
    errors: list[FieldError] = []
    rules = _all_rules()
    for error in exc.errors(include_url=False):
        loc = prefix + tuple(error["loc"])
        base = _loc_path(loc)
        if error["type"] == "value_error":
            text = str(error.get("ctx", {}).get("error", error["msg"]))
            matched = [r for r in rules if f"{(r.field_path or '').lstrip('.')}: {r.message}" in text]
            for rule in matched:
                relative = (rule.field_path or "").lstrip(".")
                errors.append(FieldError(_path(base, relative) if relative else base, rule.message))
            if matched:
                continue
            errors.append(FieldError(base, text))
        elif error["type"] == "extra_forbidden":
            errors.append(FieldError(base, f'unknown field "{loc[-1]}"'))
        else:
            errors.append(FieldError(base, error["msg"]))
    return errors


def validate_with_pydantic(obj: Mapping[str, Any]) -> list[FieldError]:
    """Validate a manifest with the pydantic models (strict: no coercion), paths in camelCase.

    Args:
        obj: the manifest as loaded from YAML or JSON.

    Returns:
        The errors; empty when the models accept the manifest.
    """
    errors = _type_errors(obj) or json_errors(obj)
    if errors:
        return errors
    pruned = prune_nulls(obj)
    errors.extend(_metadata_errors(pruned.get("metadata")))
    status = pruned.pop("status", None)
    for model, value, prefix in ((TransferJob, pruned, ()), (TransferJobStatus, status, ("status",))):
        if value is None:
            continue
        try:
            _validate_model(model, value)
        except ValidationError as exc:
            errors.extend(_pydantic_errors(exc, prefix))
    return _dedupe(errors)


def _validate_model(model: type[BaseModel], value: Any) -> None:
    model.model_validate(value, strict=True)


@dataclass
class DocumentReport:
    """The verdict on one document of a YAML stream (or on the stream), as `kubegraft validate` prints it.

    `position` (``line:col``) is set for errors of the file itself (YAML syntax, encoding, size), which belong
    to no document: they print as ``file:line:col: message``.
    """

    source: str
    index: int
    name: str
    skipped: bool = False
    result: ValidationResult | None = None
    errors: list[FieldError] = field(default_factory=list)
    position: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the document is valid (skipped documents are not invalid)."""
        return not self.errors

    @property
    def label(self) -> str:
        """`file#n (name)`: where the document is, 1-based; `file:line:col` for errors of the file."""
        if self.position is not None:
            return f"{self.source}:{self.position}" if self.position else self.source
        return f"{self.source}#{self.index} ({self.name})" if self.name else f"{self.source}#{self.index}"


def _file_error(source: str, index: int, exc: ManifestError) -> DocumentReport:
    return DocumentReport(source, index, "", errors=[FieldError("", exc.message)], position=exc.position)


def _printable(errors: list[FieldError]) -> list[FieldError]:
    """At most `MAX_REPORTED_ERRORS` errors, each path and message cut to a readable line."""

    def cut(text: str, limit: int) -> str:
        text = _one_line(text)
        return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"

    shown = [FieldError(cut(e.path, 160), cut(e.message, 400)) for e in errors[:MAX_REPORTED_ERRORS]]
    if len(errors) > MAX_REPORTED_ERRORS:
        shown.append(FieldError("", f"and {len(errors) - MAX_REPORTED_ERRORS} more errors"))
    return shown


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _one_line(text: str) -> str:
    """`text` with control characters (newlines, escapes) written as Python escapes: one printable line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


_KINDS = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _document_report(document: Any, source: str, index: int) -> DocumentReport:
    if not isinstance(document, Mapping):
        kind = _KINDS.get(type(document), type(document).__name__)
        error = FieldError("", f"a manifest document must be a mapping (apiVersion, kind, ...), not {kind}")
        return DocumentReport(source, index, "", errors=[error])
    metadata = document.get("metadata")
    name = _one_line(
        str(metadata.get("name") or metadata.get("generateName") or "")[:_SHOWN_CHARS]
        if isinstance(metadata, Mapping)
        else ""
    )
    if not is_transferjob(document):
        kind = _one_line(str(document.get("kind", "?"))[:_SHOWN_CHARS])
        return DocumentReport(source, index, f"{kind}/{name}" if name else kind, skipped=True)
    result = validate_object(document)
    errors = list(result.errors)
    if not errors:
        # What the CRD cannot express (map keys) the models check: the client is never weaker than admission.
        errors = validate_with_pydantic(document)
    return DocumentReport(source, index, name, result=result, errors=_printable(errors))


def validate_documents(text: str | bytes, source: str) -> list[DocumentReport]:
    """Validate every TransferJob in a multi-document YAML stream; other kinds are reported as skipped.

    Args:
        text: the YAML stream, as read from the file (bytes: size and UTF-8 are checked first).
        source: the file name (or ``-``) used in messages.

    Returns:
        One report per non-empty document, then (if the stream breaks) one report of the file error at its
        line and column: documents before a syntax error are still validated.
    """
    documents: list[Any] = []
    broken: ManifestError | None = None
    try:
        stream = decode_manifest(text) if isinstance(text, bytes) else text
        if isinstance(text, str) and len(stream) > MAX_MANIFEST_CHARS:
            decode_manifest(stream.encode("utf-8", "surrogatepass"))
        # Read up to one document past the limit before validating any: a stream that is too long costs
        # its parsing only.
        for document in load_manifests(stream):
            if len(documents) == MAX_DOCUMENTS:
                too_many = ManifestError(f"more than {MAX_DOCUMENTS} documents in one stream: split the file")
                return [_file_error(source, MAX_DOCUMENTS + 1, too_many)]
            documents.append(document)
    except ManifestError as exc:
        broken = exc
    reports = [
        _document_report(document, source, number)
        for number, document in enumerate(documents, start=1)
        if document is not None
    ]
    if broken is not None:
        reports.append(_file_error(source, len(documents) + 1, broken))
    return reports
