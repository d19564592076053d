"""The enriched Kubernetes API emulator: kmock's `KubernetesEmulator` made good enough for kopf and kubectl.

Who uses it: `tests.harness.cluster.Cluster` starts it in a subprocess (`python -m tests.harness.emulator`)
and every test, the e2e demo and the benchmarks talk to it over HTTP like to a real API server.

Why a subclass that serves object requests itself: vanilla kmock 0.8 stores objects without the server-side
fields Kubernetes adds, mis-parses `/api/v1/namespaces[/name]`, ignores selectors, scans every stored object
on each request and keeps every version (see shared/README.md). This subclass keeps kmock's discovery
endpoints (`/api`, `/apis`, `/apis/<group>/<version>`, `/version`) and its resource registry, and serves every
object request (list, watch, get, create, update, patch, delete on `/api/...` and `/apis/...`) from its own
index `{resource: {(namespace, name): object}}` with:

- server-side fields on create: `metadata.namespace` from the URL, `uid`, `resourceVersion` (one global
  counter, as etcd's revision), `creationTimestamp`, `generation` 1, and `generateName` expansion;
- `metadata.generation` bumped only when `spec` changes (status writes never bump it);
- the `status` subresource: writes to the main resource keep the stored status, writes to `/status` change
  only the status (for resources registered with a `status` subresource);
- merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch (as a merge patch without directives),
  server-side apply (as a merge patch that creates), PUT (replace, with `resourceVersion` preconditions);
- label and field selectors on list, watch and delete-collection; list responses with `kind`/`apiVersion`;
- watches from a `resourceVersion` (replayed from a bounded history, 410 Expired beyond it), with
  `timeoutSeconds`, bookmarks when asked, and a proper `application/json` content type (`kubectl get -w`);
- `meta.k8s.io/v1` Tables when asked (`kubectl get` columns, TransferJob printer columns);
- finalizers and `deletionTimestamp`; ownerReference garbage collection (background and foreground propagation
  cascade, orphan strips the references); deleting a Namespace deletes what it holds;
- admission for TransferJobs: `kubegraft.validation.validate_object` (or the pydantic model until that exists)
  on create and on every write that changes the spec; the defaulted object is stored; invalid objects get a
  real 422 `Status` (reason `Invalid`, `details.causes` with field paths); admitted specs' verdicts are
  cached (`admit_transferjob`), names are checked per object;
- Kubernetes-shaped `Status` errors: 404 NotFound, 409 AlreadyExists / Conflict, 422 Invalid, 405.

Known gaps (by design, tests must not rely on them): no authentication or RBAC, no OpenAPI documents (use
`kubectl apply --validate=false`), no field managers or managedFields, strategic-merge list semantics are
plain replacement, protobuf request bodies only for v1 Namespace, Secret and ConfigMap (`kubectl create
namespace|secret|configmap`; responses are JSON), no aggregated discovery (kubectl falls back to legacy
discovery), no CRD registration by creating CustomResourceDefinition objects (resources are registered in
Python, see `build_emulator`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import copy
import datetime
import json
import re
import secrets
import signal
import string
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import rendering  # private module: the exact kmock pin (==0.8) keeps it stable

from tests.harness.faults import FaultPlan, serve_faulty

JsonObj = dict[str, Any]
ObjKey = tuple[str | None, str]  # (namespace or None for cluster-scoped, name)

# Watch history kept per resource for `?watch=true&resourceVersion=N` replays; older versions get 410 Expired.
HISTORY_LENGTH = 20_000
# How often an idle watch checks whether its client went away.
WATCH_IDLE_CHECK_SECONDS = 5.0

TRANSFERJOBS = ("kubegraft.io", "v1alpha1", "transferjobs")
_GENERATE_NAME_ALPHABET = string.ascii_lowercase + string.digits


def now_rfc3339() -> str:
    """The current UTC time as Kubernetes writes timestamps (second precision, `Z` suffix)."""
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """A Kubernetes API error answered as a `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: JsonObj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> JsonObj:
        """The `v1 Status` body of this error."""
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


@attrs.frozen
class ResourceRef:
    """One served resource: its URL coordinates and its discovery information."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: frozenset[str]

    @property
    def api_version(self) -> str:
        """`apiVersion` of the objects: `v1` for the core group, `group/version` otherwise."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How the API server names the resource in messages: `pods`, `transferjobs.kubegraft.io`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def kind_qualified(self) -> str:
        """How the API server names the kind in 422 messages: `Pod`, `TransferJob.kubegraft.io`."""
        return f"{self.kind}.{self.group}" if self.group else self.kind


@attrs.frozen
class ParsedUrl:
    """An object URL split into its parts (kmock's own parser mis-reads `/api/v1/namespaces[/x]`)."""

    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_object_url(path: str) -> ParsedUrl | None:
    """Split `/api/v1/namespaces/ns/pods/x/status` and the like; None for discovery or non-API paths."""
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace: str | None = None
    # /namespaces/<ns>/<plural>... is namespaced, except the Namespace object's own subresources.
    if (
        rest[0] == "namespaces"
        and len(rest) >= 3
        and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
    ):
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return ParsedUrl(group, version, plural, namespace, name, subresource)


# ----------------------------------------------------------------------------------------------------
# Selectors


_SELECTOR_TERM = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[^\s!=,()]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


def _split_terms(selector: str) -> list[str]:
    """Split a selector at commas outside parentheses."""
    terms, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [t for t in terms if t.strip()]


def label_selector_matches(selector: str | None, labels: dict[str, str]) -> bool:  # noqa: PLR0912 - one flat branch per Kubernetes rule reads better than helpers
    """Whether `labels` satisfy a label selector string (`a=b,c!=d,e in (x,y),f notin (z),g,!h`).

    Raises:
        ApiError: 400 when the selector cannot be parsed.
    """
    if not selector:
        return True
    for term in _split_terms(selector):
        match = _SELECTOR_TERM.match(term)
        if match is None:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
        key, op, setop = match["key"], match["op"], match["setop"]
        if match["neg"]:
            if key in labels:
                return False
        elif op in ("=", "=="):
            if labels.get(key) != match["value"]:
                return False
        elif op == "!=":
            if labels.get(key) == match["value"]:
                return False
        elif setop:
            values = {v.strip() for v in match["values"].split(",") if v.strip()}
            if setop == "in" and labels.get(key) not in values:
                return False
            if setop == "notin" and key in labels and labels[key] in values:
                return False
        elif key not in labels:
            return False
    return True


def _dig(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def field_selector_matches(selector: str | None, obj: JsonObj) -> bool:
    """Whether `obj` satisfies a field selector (`metadata.name=x,status.phase!=Running`; any dotted path)."""
    if not selector:
        return True
    for term in _split_terms(selector):
        match = re.match(r"^\s*([^!=\s]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if match is None:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")
        path, op, value = match.groups()
        actual = _dig(obj, path)
        actual_text = (
            "" if actual is None else str(actual).lower() if isinstance(actual, bool) else str(actual)
        )
        if (actual_text == value) != (op in ("=", "==")):
            return False
    return True


# ----------------------------------------------------------------------------------------------------
# Patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; strategic-merge directives (`$patch`, `$setElementOrder/...`) dropped."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def json_patch(target: JsonObj, operations: list[JsonObj]) -> JsonObj:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test).

    Raises:
        ApiError: 422 when an operation cannot apply (missing path, failed test).
    """
    doc: Any = copy.deepcopy(target)

    def resolve(path: str) -> tuple[Any, str]:
        parts = _pointer(path)
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        return parent, parts[-1]

    def get(path: str) -> Any:
        parent, last = resolve(path)
        return parent[int(last)] if isinstance(parent, list) else parent[last]

    def remove(path: str) -> Any:
        parent, last = resolve(path)
        return parent.pop(int(last)) if isinstance(parent, list) else parent.pop(last)

    def add(path: str, value: Any) -> None:
        parent, last = resolve(path)
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), value)
        else:
            parent[last] = value

    for op in operations:
        try:
            kind, path = op["op"], op["path"]
            if kind == "add":
                add(path, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                remove(path)
                add(path, copy.deepcopy(op["value"]))
            elif kind == "move":
                add(path, remove(op["from"]))
            elif kind == "copy":
                add(path, copy.deepcopy(get(op["from"])))
            elif kind == "test":
                if get(path) != op["value"]:
                    raise ApiError(
                        422, "Invalid", f"the server rejected our request due to an error: test {path}"
                    )
            else:
                raise ApiError(400, "BadRequest", f"unknown JSON patch operation {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(
                422, "Invalid", f"the server rejected our request due to an error in our request: {exc!r}"
            ) from exc
    return doc  # type: ignore[no-any-return]


def _fold_string_data(ref: ResourceRef, obj: JsonObj) -> None:
    """Secrets: `stringData` is write-only; the API server stores it base64-encoded in `data`."""
    if ref.group == "" and ref.plural == "secrets" and obj.get("stringData"):
        data = obj.setdefault("data", {}) or {}
        for key, value in obj.pop("stringData").items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data


# ----------------------------------------------------------------------------------------------------
# Protobuf (what `kubectl create namespace|secret|configmap` send)

_PROTOBUF_MAGIC = b"k8s\x00"


def _protobuf_fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs of one protobuf message: varints as int, length-delimited as bytes.

    Raises:
        ApiError: 400 for anything malformed or a wire type Kubernetes objects do not use here.
    """
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            if pos >= len(data) or shift > 63:
                raise ApiError(400, "BadRequest", "invalid protobuf: truncated varint")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while pos < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, varint()
        elif wire == 2:
            size = varint()
            if pos + size > len(data):
                raise ApiError(400, "BadRequest", "invalid protobuf: truncated field")
            yield number, data[pos : pos + size]
            pos += size
        else:
            raise ApiError(400, "BadRequest", f"invalid protobuf: unsupported wire type {wire}")


def _protobuf_map(entries: list[bytes], *, binary: bool = False) -> dict[str, str]:
    """A protobuf map<string, string|bytes> (repeated {1: key, 2: value}); bytes values base64-encoded."""
    result: dict[str, str] = {}
    for entry in entries:
        fields = dict(_protobuf_fields(entry))
        key, value = fields.get(1, b""), fields.get(2, b"")
        assert isinstance(key, bytes) and isinstance(value, bytes)
        result[key.decode()] = base64.b64encode(value).decode() if binary else value.decode()
    return result


def _protobuf_message(data: bytes) -> dict[int, list[int | bytes]]:
    fields: dict[int, list[int | bytes]] = collections.defaultdict(list)
    for number, value in _protobuf_fields(data):
        fields[number].append(value)
    return fields


def _protobuf_strings(values: list[int | bytes]) -> list[str]:
    return [v.decode() for v in values if isinstance(v, bytes)]


def _protobuf_object_meta(data: bytes) -> JsonObj:
    """The identity and user fields of an ObjectMeta (name, generateName, namespace, labels, annotations)."""
    fields = _protobuf_message(data)
    meta: JsonObj = {}
    for number, key in ((1, "name"), (2, "generateName"), (3, "namespace")):
        if values := [v for v in _protobuf_strings(fields.get(number, [])) if v]:
            meta[key] = values[-1]
    for number, key in ((11, "labels"), (12, "annotations")):
        entries = [v for v in fields.get(number, []) if isinstance(v, bytes)]
        if entries:
            meta[key] = _protobuf_map(entries)
    if finalizers := _protobuf_strings(fields.get(14, [])):
        meta["finalizers"] = finalizers
    return meta


def decode_protobuf(body: bytes) -> JsonObj:
    """A Namespace, Secret or ConfigMap sent as Kubernetes protobuf, as its JSON object.

    Typed clients (`kubectl create namespace|secret|configmap`) send `application/vnd.kubernetes.protobuf`:
    the magic `k8s\\0`, then a `runtime.Unknown` {1: TypeMeta {1: apiVersion, 2: kind}, 2: raw object}. Only
    these three kinds are decoded (their generated.proto field numbers); anything else gets 415.

    Raises:
        ApiError: 415 for other kinds, 400 for malformed bytes.
    """
    if not body.startswith(_PROTOBUF_MAGIC):
        raise ApiError(400, "BadRequest", "invalid protobuf: missing the k8s envelope")
    unknown = _protobuf_message(body[len(_PROTOBUF_MAGIC) :])
    type_meta = _protobuf_message(next((v for v in unknown.get(1, []) if isinstance(v, bytes)), b""))
    api_version = (_protobuf_strings(type_meta.get(1, [])) or [""])[-1]
    kind = (_protobuf_strings(type_meta.get(2, [])) or [""])[-1]
    raw = _protobuf_message(next((v for v in unknown.get(2, []) if isinstance(v, bytes)), b""))
    if api_version != "v1" or kind not in ("Namespace", "Secret", "ConfigMap"):
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the test API server decodes protobuf only for v1 Namespace, Secret and ConfigMap, not {kind!r}:"
            " use `kubectl apply --validate=false -f`",
        )
    obj: JsonObj = {"apiVersion": "v1", "kind": kind}
    meta_bytes = next((v for v in raw.get(1, []) if isinstance(v, bytes)), b"")
    obj["metadata"] = _protobuf_object_meta(meta_bytes)

    def entries(number: int) -> list[bytes]:
        return [v for v in raw.get(number, []) if isinstance(v, bytes)]

    if kind == "Secret":
        if data := entries(2):
            obj["data"] = _protobuf_map(data, binary=True)
        if kind_type := [t for t in _protobuf_strings(raw.get(3, [])) if t]:
            obj["type"] = kind_type[-1]
        if string_data := entries(4):
            obj["stringData"] = _protobuf_map(string_data)
        if raw.get(5):
            obj["immutable"] = bool(raw[5][-1])
    elif kind == "ConfigMap":
        if data := entries(2):
            obj["data"] = _protobuf_map(data)
        if binary := entries(3):
            obj["binaryData"] = _protobuf_map(binary, binary=True)
        if raw.get(4):
            obj["immutable"] = bool(raw[4][-1])
    elif spec := entries(2):
        finalizers = _protobuf_strings(_protobuf_message(spec[-1]).get(1, []))
        obj["spec"] = {"finalizers": finalizers} if finalizers else {}
    return obj


# ----------------------------------------------------------------------------------------------------
# Admission


# Admission verdicts of admitted specs (see `admit_transferjob`): view without metadata (JSON) -> defaulted.
ADMISSION_CACHE_SIZE = 256
_PLACEHOLDER_NAME = "a"
_admitted: collections.OrderedDict[str, JsonObj] = collections.OrderedDict()


def _name_admitted(metadata: JsonObj) -> bool:
    """Whether `metadata` (a name only) passes every check of `validate_object` that reads metadata.

    Those are: the API server's own metadata checks, the CRD schema of `metadata`, and the root CEL rules that
    mention `metadata` (CEL rules below the root see only their own node, so no other rule can read the name).
    A root rule that reads metadata *and* something else fails here (its view holds metadata only), which
    sends the object to the full validation: slower, never wrong.
    """
    from kubegraft import validation

    schema = validation._schema()  # private helpers of our own validator: same schema, same CEL evaluation
    if validation._metadata_errors(metadata):
        return False
    rules = [r for r in schema.get("x-kubernetes-validations", ()) if "metadata" in r["rule"]]
    mini = {
        "type": "object",
        "properties": {"metadata": schema["properties"]["metadata"]},
        "x-kubernetes-validations": rules,
    }
    view = {"metadata": metadata}
    if next(jsonschema_validator(mini).iter_errors(view), None) is not None:
        return False
    errors: list[Any] = []
    validation._cel_check(view, mini, "", errors)
    return not errors


def jsonschema_validator(schema: JsonObj) -> Any:
    """A Draft 4 validator of `schema` (the dialect of CRD schemas), as `kubegraft.validation` uses."""
    import jsonschema

    return jsonschema.Draft4Validator(schema)


def _cached_admission(view: JsonObj) -> JsonObj | None:
    """The defaulted object for `view` from an earlier admission of the same spec, or None (validate fully).

    Only admitted verdicts are cached, keyed by the view without metadata (its JSON, key order included, so
    the same input gets the very same output); the name is checked per object by `_name_admitted`. Both
    pass exactly when `validate_object(view)` passes, and then it returns the cached defaulting. Anything
    else (an error, generateName) goes to the full validation, which words the errors.
    """
    from kubegraft.validation import validate_object

    metadata = view.get("metadata")
    if not isinstance(metadata, dict) or list(metadata) != ["name"] or not isinstance(metadata["name"], str):
        return None
    try:
        key = json.dumps({k: v for k, v in view.items() if k != "metadata"})
    except (TypeError, ValueError):
        return None
    defaulted = _admitted.get(key)
    if defaulted is None:
        result = validate_object({**view, "metadata": {"name": _PLACEHOLDER_NAME}})
        if not result.ok:
            return None
        defaulted = dict(result.defaulted)
        _admitted[key] = defaulted
        if len(_admitted) > ADMISSION_CACHE_SIZE:
            _admitted.popitem(last=False)
    else:
        _admitted.move_to_end(key)
    if not _name_admitted(metadata):
        return None
    return copy.deepcopy(defaulted)


def admit_transferjob(obj: JsonObj) -> tuple[JsonObj, list[tuple[str, str]]]:
    """Validate and default a TransferJob as the API server would with the CRD's schema and CEL rules.

    Uses `kubegraft.validation.validate_object`, the same code as `kubegraft validate` (the generated CRD's
    schema, defaults and CEL rules). Its CEL evaluation costs about 15 ms an object, so an admitted spec's
    verdict is reused for the next object with the same spec (`_cached_admission`; names are checked each
    time): same input, same verdict and defaulting.

    Returns:
        The object to store (pruned and defaulted) and a list of (field path, message) errors.
    """
    from kubegraft.validation import validate_object

    # The API server checks ObjectMeta itself; the CRD schema sees only the identity fields of metadata.
    meta = obj.get("metadata", {})
    view = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    view["metadata"] = {k: meta[k] for k in ("name", "generateName") if k in meta}
    defaulted = _cached_admission(view)
    if defaulted is None:
        result = validate_object(view)
        if not result.ok:
            return obj, [(str(e.path), str(e.message)) for e in result.errors]
        defaulted = dict(result.defaulted)
    # The API server owns metadata and status; the validator prunes and defaults the rest.
    defaulted["metadata"] = obj.get("metadata", {})
    if "status" in obj:
        defaulted["status"] = obj["status"]
    return defaulted, []


def invalid_error(ref: ResourceRef, name: str, errors: list[tuple[str, str]]) -> ApiError:
    """A 422 Invalid error worded like the API server's."""
    texts = [f"{path}: Invalid value: {message}" if path else message for path, message in errors]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{ref.kind_qualified} "{name}" is invalid: {joined}',
        {
            "name": name,
            "group": ref.group,
            "kind": ref.kind,
            "causes": [
                {"reason": "FieldValueInvalid", "message": f"Invalid value: {message}", "field": path}
                for path, message in errors
            ],
        },
    )


# Admission hooks by (group, plural): called with (ref, old object or None, new object); return what to store.
AdmissionHook = Callable[[ResourceRef, JsonObj | None, JsonObj], JsonObj]


def _transferjob_admission(ref: ResourceRef, old: JsonObj | None, new: JsonObj) -> JsonObj:
    if old is not None and old.get("spec") == new.get("spec"):
        return new  # metadata-only writes (finalizers, annotations) are not re-validated: ratcheting
    stored, errors = admit_transferjob(new)
    if errors:
        raise invalid_error(ref, new.get("metadata", {}).get("name", ""), errors)
    return stored


def _job_defaults(ref: ResourceRef, old: JsonObj | None, new: JsonObj) -> JsonObj:
    """batch/v1 Jobs on create: the selector and template labels the API server adds, and spec defaults."""
    if old is not None:
        return new
    uid, name = new["metadata"]["uid"], new["metadata"]["name"]
    spec = new.setdefault("spec", {})
    if not spec.get("manualSelector"):
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
    template = spec.setdefault("template", {})
    template_meta = template.get("metadata") or {}
    template_meta["labels"] = {
        **(template_meta.get("labels") or {}),
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    }
    template["metadata"] = template_meta
    for key, value in (("backoffLimit", 6), ("completions", 1), ("parallelism", 1), ("suspend", False)):
        spec.setdefault(key, value)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    return new


# ----------------------------------------------------------------------------------------------------
# Tables (kubectl get)


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    seconds = int((datetime.datetime.now(tz=datetime.UTC) - then).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _condition(obj: JsonObj, type_: str) -> str:
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == type_:
            return str(cond.get("status", ""))
    return ""


def _crd_printer_columns() -> list[tuple[str, Callable[[JsonObj], Any], int]]:
    """The TransferJob CRD's additionalPrinterColumns, in order, with their priority (1: `-o wide` only)."""
    from kubegraft.crd import build_crd

    columns = build_crd()["spec"]["versions"][0].get("additionalPrinterColumns", [])

    def cell(path: str) -> Callable[[JsonObj], Any]:
        def read(obj: JsonObj) -> Any:
            value = _dig(obj, path)
            if path == "metadata.creationTimestamp":
                return _age(value)
            return "" if value is None else value

        return read

    return [(c["name"].upper(), cell(c["jsonPath"].lstrip(".")), int(c.get("priority", 0))) for c in columns]


# Printer columns beyond NAME, by plural: (header, function of the object[, priority]); AGE is added last
# where no AGE column is given.
_Column = tuple[str, Callable[[JsonObj], Any]] | tuple[str, Callable[[JsonObj], Any], int]
PRINTER_COLUMNS: dict[str, list[_Column]] = {
    "transferjobs": _crd_printer_columns(),
    "pods": [
        ("STATUS", lambda o: o.get("status", {}).get("phase", "")),
        ("IP", lambda o: o.get("status", {}).get("podIP", "")),
    ],
    "jobs": [
        ("COMPLETE", lambda o: _condition(o, "Complete")),
        ("FAILED", lambda o: _condition(o, "Failed")),
        ("ACTIVE", lambda o: o.get("status", {}).get("active", 0)),
    ],
    "events": [
        ("TYPE", lambda o: o.get("type", "")),
        ("REASON", lambda o: o.get("reason", "")),
        (
            "OBJECT",
            lambda o: (
                f"{str(_dig(o, 'involvedObject.kind') or '').lower()}/{_dig(o, 'involvedObject.name') or ''}"
            ),
        ),
        ("MESSAGE", lambda o: o.get("message", "")),
    ],
}


def render_table(ref: ResourceRef, objs: list[JsonObj], resource_version: str) -> JsonObj:
    """A `meta.k8s.io/v1` Table of `objs`, as `kubectl get` asks for."""
    extra = [(c[0], c[1], c[2] if len(c) == 3 else 0) for c in PRINTER_COLUMNS.get(ref.plural, [])]
    own_age = any(h == "AGE" for h, _, _ in extra)
    columns = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
    columns += [
        {"name": h, "type": "string", "format": "", "description": h, "priority": p} for h, _, p in extra
    ]
    if not own_age:
        columns += [{"name": "Age", "type": "date", "format": "", "description": "Age", "priority": 0}]
    rows = []
    for obj in objs:
        meta = obj.get("metadata", {})
        cells = [meta.get("name", "")]
        cells += [fn(obj) for _, fn, _ in extra]
        if not own_age:
            cells += [_age(meta.get("creationTimestamp"))]
        rows.append(
            {
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": meta,
                },
            }
        )
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    }


def _wants_table(request: rendering.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "as=Table" in accept


# ----------------------------------------------------------------------------------------------------
# The emulator


@attrs.frozen
class WatchEvent:
    """One change as watches stream it."""

    revision: int
    type: str
    obj: JsonObj


@attrs.define(kw_only=True)
class EnrichedEmulator(kmock.KubernetesEmulator):
    """A kmock Kubernetes emulator that behaves enough like kube-apiserver for kopf, kubectl and the client.

    Register resources on `.resources` (as with kmock) before serving; objects live in `.store`.
    """

    store: dict[tuple[str, str, str], dict[ObjKey, JsonObj]] = attrs.field(
        factory=lambda: collections.defaultdict(dict), init=False
    )
    admission: dict[tuple[str, str], AdmissionHook] = attrs.field(
        factory=lambda: {
            (TRANSFERJOBS[0], TRANSFERJOBS[2]): _transferjob_admission,
            ("batch", "jobs"): _job_defaults,
        },
        init=False,
    )
    _revision: int = attrs.field(default=0, init=False)
    _history: dict[tuple[str, str, str], collections.deque[WatchEvent]] = attrs.field(
        factory=lambda: collections.defaultdict(lambda: collections.deque(maxlen=HISTORY_LENGTH)), init=False
    )
    _watchers: dict[tuple[str, str, str], set[asyncio.Queue[WatchEvent]]] = attrs.field(
        factory=lambda: collections.defaultdict(set), init=False
    )
    _refs: dict[tuple[str, str, str], ResourceRef] = attrs.field(factory=dict, init=False)
    _refs_size: int = attrs.field(default=-1, init=False)
    _gc_tasks: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)
    # Where the test kubelet writes pod logs (`<dir>/<namespace>_<pod>/container.log`) for `pods/log`.
    pod_logs_dir: Path | None = attrs.field(default=None)

    # -- resource registry ---------------------------------------------------------------------------------

    def resource_ref(self, group: str, version: str, plural: str) -> ResourceRef:
        """The registered resource for URL coordinates.

        Raises:
            ApiError: 404 when the resource is not registered.
        """
        self._refresh_refs()
        try:
            return self._refs[(group, version, plural)]
        except KeyError:
            raise ApiError(404, "NotFound", "the server could not find the requested resource") from None

    def _refresh_refs(self) -> None:
        if self._refs_size != len(self.resources):
            self._refs = {}
            for res in self.resources:
                info = self.resources[res]
                key = (res.group or "", res.version or "", res.plural or "")
                self._refs[key] = ResourceRef(
                    group=key[0],
                    version=key[1],
                    plural=key[2],
                    kind=info.kind or key[2].capitalize(),
                    namespaced=bool(info.namespaced),
                    subresources=frozenset(info.subresources),
                )
            self._refs_size = len(self.resources)

    def refs(self) -> list[ResourceRef]:
        """Every registered resource."""
        self._refresh_refs()
        return list(self._refs.values())

    def _key(self, ref: ResourceRef) -> tuple[str, str, str]:
        return (ref.group, ref.version, ref.plural)

    # -- request entry point ------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Serve object requests directly; leave discovery to kmock.

        kmock's own request parser raises on `/api/v1/namespaces[/name]`, and it records every request forever
        (memory grows in long benchmarks), so object requests bypass both.
        """
        parsed = parse_object_url(raw_request.path)
        if parsed is None:
            return await super().__call__(raw_request)
        body = await raw_request.read()
        request = rendering.Request(
            raw_request=raw_request,
            url=raw_request.url,
            method=raw_request.method,
            params=dict(raw_request.query),
            headers=dict(raw_request.headers),
            body=body,
        )
        try:
            ref = self.resource_ref(parsed.group, parsed.version, parsed.plural)
            return await self._serve(request, ref, parsed)
        except ApiError as exc:
            return aiohttp.web.json_response(exc.status(), status=exc.code)

    async def _serve_version(self, request: rendering.Request) -> JsonObj:
        """`/api/v1`, `/apis/<group>/<version>`: subresources listed without short names (kubectl warns)."""
        assert request.resource is not None
        group, version = request.resource.group or "", request.resource.version or ""
        refs = [r for r in self.refs() if r.group == group and r.version == version]
        if not refs:
            raise kmock.KubernetesResourceNotFoundError()
        resources = []
        for ref in sorted(refs, key=lambda r: r.plural):
            info = self.resources[f"{group}/{version}/{ref.plural}" if group else f"{version}/{ref.plural}"]
            resources.append(
                {
                    "name": ref.plural,
                    "singularName": info.singular or ref.kind.lower(),
                    "namespaced": ref.namespaced,
                    "kind": ref.kind,
                    "verbs": sorted(info.verbs),
                    "shortNames": sorted(info.shortnames),
                    "categories": sorted(info.categories),
                }
            )
            for sub in sorted(ref.subresources):
                resources.append(
                    {
                        "name": f"{ref.plural}/{sub}",
                        "singularName": "",
                        "namespaced": ref.namespaced,
                        "kind": ref.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    async def _serve(  # noqa: PLR0912 - one branch per verb, as the API server's handler table
        self, request: rendering.Request, ref: ResourceRef, url: ParsedUrl
    ) -> aiohttp.web.StreamResponse:
        method = request.method.value
        params = request.params
        namespace = url.namespace if ref.namespaced else None
        if url.subresource is not None and url.subresource not in ref.subresources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if method == "GET" and str(params.get("watch", "")).lower() in ("true", "1"):
            return await self._serve_watch_stream(request, ref, namespace, url.name)
        if method == "GET" and url.name is None:
            return self._json(self._list(request, ref, namespace))
        if method == "GET" and ref.plural == "pods" and url.subresource == "log":
            return self._pod_log(request, namespace, url.name or "")
        if method == "GET":
            obj = self._get(ref, namespace, url.name or "")
            if _wants_table(request):  # `kubectl get KIND NAME`: one row
                return self._json(render_table(ref, [obj], obj["metadata"].get("resourceVersion", "")))
            return self._json(obj)
        body = self._body(request)
        if method == "POST" and url.name is None:
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
            created = await self.create_object(ref, namespace, body, dry_run="dryRun" in params)
            return self._json(created, status=201)
        if url.name is None and method == "DELETE":
            return self._json(await self._delete_collection(request, ref, namespace))
        if url.name is None:
            raise ApiError(
                405, "MethodNotAllowed", f"the server does not allow this method on {ref.qualified}"
            )
        if method == "PUT":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
            return self._json(await self.replace_object(ref, namespace, url.name, body, url.subresource))
        if method == "PATCH":
            content_type = request.headers.get("Content-Type", "application/merge-patch+json").split(";")[0]
            patched = await self.patch_object(
                ref, namespace, url.name, body, content_type, subresource=url.subresource
            )
            return self._json(patched)
        if method == "DELETE":
            policy = (body or {}).get("propagationPolicy") if isinstance(body, dict) else None
            policy = params.get("propagationPolicy", policy)
            return self._json(await self.delete_object(ref, namespace, url.name, policy=policy))
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on {ref.qualified}")

    @staticmethod
    def _json(obj: JsonObj, status: int = 200) -> aiohttp.web.Response:
        return aiohttp.web.json_response(obj, status=status)

    @staticmethod
    def _body(request: rendering.Request) -> Any:
        if not request.body:
            return None
        if "protobuf" in request.headers.get("Content-Type", ""):
            return decode_protobuf(request.body)
        try:
            return json.loads(request.body)
        except ValueError:
            try:
                return yaml.safe_load(request.body)  # server-side apply sends YAML
            except yaml.YAMLError as exc:
                raise ApiError(400, "BadRequest", f"invalid body: {exc}") from exc

    # -- reads --------------------------------------------------------------------------------------------

    def _select(
        self, ref: ResourceRef, namespace: str | None, labels: str | None, fields: str | None
    ) -> Iterator[JsonObj]:
        bucket = self.store[self._key(ref)]
        for (ns, _), obj in sorted(bucket.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
            if namespace is not None and ns != namespace:
                continue
            if not label_selector_matches(labels, obj.get("metadata", {}).get("labels") or {}):
                continue
            if not field_selector_matches(fields, obj):
                continue
            yield obj

    def _list(self, request: rendering.Request, ref: ResourceRef, namespace: str | None) -> JsonObj:
        params = request.params
        items = list(self._select(ref, namespace, params.get("labelSelector"), params.get("fieldSelector")))
        revision = str(self._revision)
        if _wants_table(request):
            return render_table(ref, items, revision)
        return {
            "kind": f"{ref.kind}List",
            "apiVersion": ref.api_version,
            "metadata": {"resourceVersion": revision},
            "items": items,
        }

    def _get(self, ref: ResourceRef, namespace: str | None, name: str) -> JsonObj:
        obj = self.store[self._key(ref)].get((namespace, name))
        if obj is None:
            raise self._not_found(ref, name)
        return obj

    def _pod_log(self, request: rendering.Request, namespace: str | None, name: str) -> aiohttp.web.Response:
        """`pods/<name>/log` (kubectl logs): the test kubelet's log file of the pod; `tailLines` honoured."""
        self._get(self.resource_ref("", "v1", "pods"), namespace, name)
        path = (
            None if self.pod_logs_dir is None else self.pod_logs_dir / f"{namespace}_{name}" / "container.log"
        )
        if path is None or not path.exists():
            raise ApiError(400, "BadRequest", f'container in pod "{name}" is waiting to start: no log yet')
        text = path.read_text(errors="replace")
        tail = request.params.get("tailLines")
        if tail and tail.isdigit():
            text = "".join(text.splitlines(keepends=True)[-int(tail) :])
        return aiohttp.web.Response(text=text, content_type="text/plain")

    @staticmethod
    def _not_found(ref: ResourceRef, name: str) -> ApiError:
        return ApiError(
            404,
            "NotFound",
            f'{ref.qualified} "{name}" not found',
            {"name": name, "group": ref.group, "kind": ref.plural},
        )

    def get_object(self, ref: ResourceRef, namespace: str | None, name: str) -> JsonObj | None:
        """The stored object, or None (for in-process callers)."""
        return self.store[self._key(ref)].get((namespace if ref.namespaced else None, name))

    # -- watches ------------------------------------------------------------------------------------------

    async def _serve_watch_stream(  # noqa: PLR0912 - one flat branch per Kubernetes rule reads better than helpers
        self, request: rendering.Request, ref: ResourceRef, namespace: str | None, name: str | None
    ) -> aiohttp.web.StreamResponse:
        assert request._raw_request is not None
        params = request.params
        labels, fields = params.get("labelSelector"), params.get("fieldSelector")
        table = _wants_table(request)
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        bookmarks = str(params.get("allowWatchBookmarks", "")).lower() == "true"
        since = params.get("resourceVersion") or "0"

        def wanted(obj: JsonObj) -> bool:
            meta = obj.get("metadata", {})
            return (
                (namespace is None or meta.get("namespace") == namespace)
                and (name is None or meta.get("name") == name)
                and label_selector_matches(labels, meta.get("labels") or {})
                and field_selector_matches(fields, obj)
            )

        # Subscribe first so that nothing falls between the replay and the live stream.
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        key = self._key(ref)
        self._watchers[key].add(queue)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await response.prepare(request._raw_request)

            async def send(event_type: str, obj: JsonObj) -> None:
                payload = (
                    render_table(ref, [obj], obj["metadata"].get("resourceVersion", "")) if table else obj
                )
                line = json.dumps({"type": event_type, "object": payload}) + "\n"
                await response.write(line.encode())

            initial_events = str(params.get("sendInitialEvents", "")).lower() == "true"
            # Events up to `sent_up_to` are already reflected in what was sent (the queue may repeat them).
            if since == "0" or initial_events:
                sent_up_to = self._revision
                snapshot = [
                    o
                    for o in self._select(ref, namespace, labels, fields)
                    if name is None or o["metadata"]["name"] == name
                ]
                for obj in snapshot:
                    await send("ADDED", obj)
                if initial_events:
                    # The WatchList protocol (client-go's WatchListClient): a bookmark ends the initial state.
                    bookmark = {
                        "kind": ref.kind,
                        "apiVersion": ref.api_version,
                        "metadata": {
                            "resourceVersion": str(sent_up_to),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    }
                    await response.write(
                        (json.dumps({"type": "BOOKMARK", "object": bookmark}) + "\n").encode()
                    )
            else:
                start = int(since) if since.isdigit() else 0
                history = self._history[key]
                if history and history[0].revision > start + 1 and len(history) == history.maxlen:
                    gone = ApiError(
                        410, "Expired", f"too old resource version: {start} ({history[0].revision})"
                    )
                    await response.write(
                        (json.dumps({"type": "ERROR", "object": gone.status()}) + "\n").encode()
                    )
                    return response
                replay = list(history)
                sent_up_to = max(start, replay[-1].revision if replay else start)
                for event in replay:
                    if event.revision > start and wanted(event.obj):
                        await send(event.type, event.obj)
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            while True:
                wait = (
                    WATCH_IDLE_CHECK_SECONDS
                    if deadline is None
                    else min(WATCH_IDLE_CHECK_SECONDS, deadline - loop.time())
                )
                if wait <= 0:
                    break
                try:
                    event = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    transport = request._raw_request.transport
                    if transport is None or transport.is_closing():
                        break
                    if bookmarks:
                        bookmark = {
                            "kind": ref.kind,
                            "apiVersion": ref.api_version,
                            "metadata": {"resourceVersion": str(self._revision)},
                        }
                        await response.write(
                            (json.dumps({"type": "BOOKMARK", "object": bookmark}) + "\n").encode()
                        )
                    continue
                if event.revision > sent_up_to and wanted(event.obj):
                    await send(event.type, event.obj)
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._watchers[key].discard(queue)
        return response

    def _emit(self, ref: ResourceRef, event_type: str, obj: JsonObj) -> None:
        key = self._key(ref)
        event = WatchEvent(int(obj["metadata"]["resourceVersion"]), event_type, obj)
        self._history[key].append(event)
        for queue in self._watchers[key]:
            queue.put_nowait(event)

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    # -- writes -------------------------------------------------------------------------------------------

    def _admit(self, ref: ResourceRef, old: JsonObj | None, new: JsonObj) -> JsonObj:
        hook = self.admission.get((ref.group, ref.plural))
        return new if hook is None else hook(ref, old, new)

    async def create_object(
        self, ref: ResourceRef, namespace: str | None, body: JsonObj, *, dry_run: bool = False
    ) -> JsonObj:
        """Create an object as the API server does (server-side fields, admission, ADDED event).

        Raises:
            ApiError: 409 AlreadyExists, 422 Invalid, 400 for a missing name.
        """
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if ref.namespaced:
            body_ns = meta.get("namespace")
            if namespace and body_ns and body_ns != namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = namespace or body_ns or "default"
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(
                    422,
                    "Invalid",
                    f'{ref.kind} "" is invalid: metadata.name: Required value: '
                    "name or generateName is required",
                )
            for _ in range(100):
                candidate = meta["generateName"] + "".join(
                    secrets.choice(_GENERATE_NAME_ALPHABET) for _ in range(5)
                )
                if (meta.get("namespace"), candidate) not in self.store[self._key(ref)]:
                    meta["name"] = candidate
                    break
        name = meta["name"]
        obj_key = (meta.get("namespace"), name)
        if obj_key in self.store[self._key(ref)]:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{ref.qualified} "{name}" already exists',
                {"name": name, "group": ref.group, "kind": ref.plural},
            )
        obj["apiVersion"] = ref.api_version
        obj["kind"] = ref.kind
        if "status" in ref.subresources:
            obj.pop("status", None)  # status is written through /status only
        if ref.plural == "namespaces":
            obj["status"] = {"phase": "Active"}
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        for field in ("resourceVersion", "deletionTimestamp", "managedFields", "selfLink"):
            meta.pop(field, None)
        _fold_string_data(ref, obj)
        obj = self._admit(ref, None, obj)
        if dry_run:
            return obj
        obj["metadata"]["resourceVersion"] = self._next_revision()
        self.store[self._key(ref)][obj_key] = obj
        self._emit(ref, "ADDED", obj)
        return obj

    async def _write(self, ref: ResourceRef, old: JsonObj, new: JsonObj, subresource: str | None) -> JsonObj:
        """Store `new` in place of `old`: subresource rules, generation, admission, finalizer release."""
        new = copy.deepcopy(new)
        meta = new.setdefault("metadata", {})
        old_meta = old["metadata"]
        if subresource == "status":
            # /status changes only the status.
            new = {**copy.deepcopy(old), "status": new.get("status")}
            if new["status"] is None:
                new.pop("status")
            meta = new["metadata"]
        elif "status" in ref.subresources:
            # The main resource keeps the stored status.
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        # Server-owned metadata cannot be changed by clients.
        for field in ("uid", "creationTimestamp", "namespace", "name", "generation"):
            if field in old_meta:
                meta[field] = old_meta[field]
        if old_meta.get("deletionTimestamp"):
            meta["deletionTimestamp"] = old_meta["deletionTimestamp"]
        else:
            meta.pop("deletionTimestamp", None)
        new["apiVersion"], new["kind"] = ref.api_version, ref.kind
        _fold_string_data(ref, new)
        if subresource is None:
            new = self._admit(ref, old, new)
            meta = new["metadata"]
        # Compared after admission defaulting, as the API server does: re-applying the same spec is a no-op.
        if new.get("spec") != old.get("spec"):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if new == {**old, "metadata": {**old["metadata"]}}:
            return old  # no-op writes keep the resourceVersion and send no event
        key = (old_meta.get("namespace"), old_meta["name"])
        meta["resourceVersion"] = self._next_revision()
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self.store[self._key(ref)].pop(key, None)
            self._emit(ref, "DELETED", new)
            self._collect_dependents(new, None)
            return new
        self.store[self._key(ref)][key] = new
        self._emit(ref, "MODIFIED", new)
        return new

    async def replace_object(
        self,
        ref: ResourceRef,
        namespace: str | None,
        name: str,
        body: JsonObj,
        subresource: str | None = None,
    ) -> JsonObj:
        """PUT: replace the object (or its status), honouring a `resourceVersion` precondition.

        Raises:
            ApiError: 404, 409 Conflict on a stale resourceVersion, 422.
        """
        old = self._get(ref, namespace, name)
        wanted_rv = body.get("metadata", {}).get("resourceVersion")
        if wanted_rv and wanted_rv != old["metadata"].get("resourceVersion"):
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {ref.qualified} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                {"name": name, "group": ref.group, "kind": ref.plural},
            )
        return await self._write(ref, old, body, subresource)

    async def patch_object(
        self,
        ref: ResourceRef,
        namespace: str | None,
        name: str,
        body: Any,
        content_type: str,
        *,
        subresource: str | None = None,
    ) -> JsonObj:
        """PATCH with a merge, strategic-merge, JSON or apply patch (apply creates a missing object).

        Raises:
            ApiError: 404, 415 for an unknown patch type, 422.
        """
        if content_type == "application/apply-patch+yaml" and self.get_object(ref, namespace, name) is None:
            return await self.create_object(ref, namespace, body)
        old = self._get(ref, namespace, name)
        if content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
            new = json_patch(old, body)
        elif content_type in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
            "application/json",
        ):
            new = merge_patch(old, body)
        else:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format: {content_type}",
            )
        return await self._write(ref, old, new, subresource)

    async def delete_object(
        self, ref: ResourceRef, namespace: str | None, name: str, *, policy: str | None = None
    ) -> JsonObj:
        """Delete (or mark for deletion while finalizers remain), then collect dependents.

        Raises:
            ApiError: 404 when the object does not exist.
        """
        old = self._get(ref, namespace, name)
        meta = old["metadata"]
        key = (meta.get("namespace"), meta["name"])
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return old
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["resourceVersion"] = self._next_revision()
            self.store[self._key(ref)][key] = new
            self._emit(ref, "MODIFIED", new)
            return new
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = self._next_revision()
        self.store[self._key(ref)].pop(key, None)
        self._emit(ref, "DELETED", gone)
        self._collect_dependents(gone, policy)
        return gone

    async def _delete_collection(
        self, request: rendering.Request, ref: ResourceRef, namespace: str | None
    ) -> JsonObj:
        params = request.params
        items = list(self._select(ref, namespace, params.get("labelSelector"), params.get("fieldSelector")))
        deleted = [await self.delete_object(ref, namespace, o["metadata"]["name"]) for o in items]
        return {
            "kind": f"{ref.kind}List",
            "apiVersion": ref.api_version,
            "metadata": {"resourceVersion": str(self._revision)},
            "items": deleted,
        }

    # -- garbage collection -------------------------------------------------------------------------------

    def _collect_dependents(self, owner: JsonObj, policy: str | None) -> None:
        """Schedule the garbage collector for a deleted owner (as kube-controller-manager does, soon)."""
        task = asyncio.get_running_loop().create_task(self._gc(owner, policy))
        self._gc_tasks.add(task)
        task.add_done_callback(self._gc_tasks.discard)

    async def _gc(self, owner: JsonObj, policy: str | None) -> None:
        await asyncio.sleep(0)  # after the owner's own response, like the real (asynchronous) collector
        uid = owner["metadata"].get("uid")
        owner_ns = owner["metadata"].get("namespace")
        is_namespace = owner.get("kind") == "Namespace" and not owner.get("apiVersion", "").count("/")
        for ref in list(self.refs()):
            for (ns, name), obj in list(self.store[self._key(ref)].items()):
                if is_namespace and ref.namespaced and ns == owner["metadata"]["name"]:
                    with contextlib.suppress(ApiError):
                        await self.delete_object(ref, ns, name)
                    continue
                owners = obj.get("metadata", {}).get("ownerReferences") or []
                if not any(o.get("uid") == uid for o in owners):
                    continue
                if ref.namespaced and owner_ns is not None and ns != owner_ns:
                    continue
                if policy == "Orphan":
                    remaining = [o for o in owners if o.get("uid") != uid]
                    with contextlib.suppress(ApiError):
                        await self.patch_object(
                            ref,
                            ns,
                            name,
                            {"metadata": {"ownerReferences": remaining or None}},
                            "application/merge-patch+json",
                        )
                    continue
                alive = [o for o in owners if o.get("uid") != uid and self._owner_alive(o, ns)]
                if alive:
                    continue  # another owner still holds it
                with contextlib.suppress(ApiError):
                    await self.delete_object(ref, ns, name)

    def _owner_alive(self, owner_ref: JsonObj, namespace: str | None) -> bool:
        for ref in self.refs():
            if ref.kind == owner_ref.get("kind") and ref.api_version == owner_ref.get("apiVersion"):
                obj = self.get_object(ref, namespace, owner_ref.get("name", ""))
                return obj is not None and obj["metadata"].get("uid") == owner_ref.get("uid")
        return False


# ----------------------------------------------------------------------------------------------------
# Building and serving


def _quota_used(pod: JsonObj, resource: str) -> int:
    """What `pod` counts against a ResourceQuota's `resource` (`pods`, or `requests.<integer resource>`)."""
    if resource == "pods":
        return 1
    name = resource.removeprefix("requests.")
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        amounts = container.get("resources") or {}
        value = (amounts.get("requests") or {}).get(name, (amounts.get("limits") or {}).get(name, 0))
        with contextlib.suppress(TypeError, ValueError):
            total += int(value)
    return total


def _pod_quota(emulator: EnrichedEmulator) -> AdmissionHook:
    """The ResourceQuota admission of pods: `pods` and integer `requests.*` (e.g. requests.nvidia.com/gpu).

    Like kube-apiserver, a pod that would exceed a quota of its namespace is refused with 403 Forbidden and
    the quota's words; pods that finished do not count. cpu/memory quotas are not emulated.
    """

    def admit(ref: ResourceRef, old: JsonObj | None, new: JsonObj) -> JsonObj:
        if old is not None:
            return new
        namespace, name = new["metadata"].get("namespace"), new["metadata"].get("name", "")
        live = [
            p
            for (ns, _), p in emulator.store[("", "v1", "pods")].items()
            if ns == namespace and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]
        for (ns, quota_name), quota in sorted(emulator.store[("", "v1", "resourcequotas")].items()):
            if ns != namespace:
                continue
            for resource, hard in sorted(((quota.get("spec") or {}).get("hard") or {}).items()):
                if resource != "pods" and not resource.startswith("requests."):
                    continue
                requested = _quota_used(new, resource)
                used = sum(_quota_used(p, resource) for p in live)
                if requested and used + requested > int(hard):
                    raise ApiError(
                        403,
                        "Forbidden",
                        f'pods "{name}" is forbidden: exceeded quota: {quota_name}, requested: '
                        f"{resource}={requested}, used: {resource}={used}, limited: {resource}={hard}",
                    )
        return new

    return admit


def build_emulator(pod_logs_dir: Path | None = None) -> EnrichedEmulator:
    """An emulator with the builtin kinds, TransferJob, kopf's peering resources and default namespaces."""
    from kubegraft import spec

    emulator = EnrichedEmulator(pod_logs_dir=pod_logs_dir)
    emulator.resources.load_bundled()
    all_verbs = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
    emulator.resources[f"{spec.GROUP}/{spec.VERSION}/{spec.PLURAL}"] = kmock.ResourceInfo(
        kind=spec.KIND,
        singular=spec.SINGULAR,
        namespaced=True,
        verbs=all_verbs,
        shortnames=set(spec.SHORT_NAMES),
        categories=set(spec.CATEGORIES),
        subresources={"status"},
    )
    emulator.resources["kopf.dev/v1/clusterkopfpeerings"] = kmock.ResourceInfo(
        kind="ClusterKopfPeering", singular="clusterkopfpeering", namespaced=False, verbs=all_verbs
    )
    emulator.resources["kopf.dev/v1/kopfpeerings"] = kmock.ResourceInfo(
        kind="KopfPeering", singular="kopfpeering", namespaced=True, verbs=all_verbs
    )
    # Kueue's Workloads, for tests that play Kueue (the operator reads them to explain Queued).
    emulator.resources["kueue.x-k8s.io/v1beta1/workloads"] = kmock.ResourceInfo(
        kind="Workload", singular="workload", namespaced=True, verbs=all_verbs, subresources={"status"}
    )
    emulator.admission[("", "pods")] = _pod_quota(emulator)
    ns_ref = emulator.resource_ref("", "v1", "namespaces")
    for namespace in ("default", "kube-system", "kube-public"):
        ns_obj = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": namespace,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": now_rfc3339(),
                "resourceVersion": emulator._next_revision(),
                "labels": {"kubernetes.io/metadata.name": namespace},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }
        emulator.store[("", "v1", "namespaces")][(None, namespace)] = ns_obj
    assert ns_ref.plural == "namespaces"
    return emulator


async def serve(
    host: str,
    port: int,
    ready_file: Path | None,
    pod_logs_dir: Path | None = None,
    faults: FaultPlan | None = None,
) -> None:
    """Serve the emulator until SIGTERM/SIGINT; write its URL to `ready_file` once listening.

    With `faults`, the same emulator is also served on a second port through `faults.FaultyFront`; the
    ready file then holds two lines, the clean URL and the faulty one.
    """
    import kubegraft.validation  # noqa: F401 - loaded before "ready" so that the first admission is not slow

    emulator = build_emulator(pod_logs_dir)
    async with emulator, kmock.Server(emulator, host=host, port=port) as server:
        url = f"http://{server.host}:{server.port}"
        urls = [url]
        faulty = None
        if faults is not None:
            faulty, faulty_url = await serve_faulty(emulator, faults, host, 0)
            urls.append(faulty_url)
        if ready_file is not None:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text("\n".join(urls))
            tmp.replace(ready_file)
        print(f"Kubernetes emulator listening on {' and '.join(urls)}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        if faulty is not None:
            faulty.close()


def main(argv: list[str] | None = None) -> None:
    """`python -m tests.harness.emulator --port 0 --ready-file /tmp/url`: serve in the foreground."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see --ready-file)")
    parser.add_argument("--ready-file", type=Path, help="where to write the URL once listening")
    parser.add_argument("--pod-logs-dir", type=Path, help="the test kubelet's workdir, for pods/log")
    parser.add_argument(
        "--faults", help="a FaultPlan as JSON: also serve a faulty port (tests.harness.faults)"
    )
    args = parser.parse_args(argv)
    plan = FaultPlan.from_json(args.faults) if args.faults else None
    asyncio.run(serve(args.host, args.port, args.ready_file, args.pod_logs_dir, plan))


if __name__ == "__main__":
    main()
