"""Offline validation of every object the deploy artefacts produce.

Built-in kinds: `kubernetes-validate --strict` against the bundled Kubernetes 1.35 schemas (unknown fields are
errors). Custom resources are not in that bundle, so each is checked against what defines it:
TransferJobs against kubegraft's own CRD (`kubegraft.validation.validate_object`), kopf peerings against the
kopf.dev CRDs shipped here, and prometheus-operator's ServiceMonitor, PodMonitor and PrometheusRule against
the subset of their v1 CRD schemas that kubegraft uses (field names and types as in prometheus-operator's
`monitoring.coreos.com` CRDs, unknown fields refused, so a misspelt field fails here and not at install).
"""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from kubegraft.validation import is_transferjob, validate_object
from tests.integration.deploy.conftest import KUBERNETES_VERSION, MANIFESTS

# prometheus-operator's Duration pattern (monitoring.coreos.com/v1).
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_NAMESPACE_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
}
_RELABELING = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
        "action": {
            "enum": [
                "replace",
                "keep",
                "drop",
                "hashmod",
                "labelmap",
                "labeldrop",
                "labelkeep",
                "lowercase",
                "uppercase",
                "keepequal",
                "dropequal",
            ]
        },
    },
}
_ENDPOINT_PROPERTIES = {
    "port": {"type": "string"},
    "path": {"type": "string"},
    "scheme": {"enum": ["http", "https"]},
    "interval": _DURATION,
    "scrapeTimeout": _DURATION,
    "honorLabels": {"type": "boolean"},
    "relabelings": {"type": "array", "items": _RELABELING},
    "metricRelabelings": {"type": "array", "items": _RELABELING},
}


def _custom_resource(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "namespace": {"type": "string"},
                    "labels": _STRING_MAP,
                    "annotations": _STRING_MAP,
                },
                "additionalProperties": False,
            },
            "spec": spec,
        },
    }


MONITORING_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _custom_resource(
        {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": _NAMESPACE_SELECTOR,
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": _ENDPOINT_PROPERTIES,
                    },
                },
            },
        }
    ),
    "PodMonitor": _custom_resource(
        {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": _NAMESPACE_SELECTOR,
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": _ENDPOINT_PROPERTIES,
                    },
                },
            },
        }
    ),
    "PrometheusRule": _custom_resource(
        {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": _DURATION,
                                        "keep_firing_for": _DURATION,
                                        "labels": _STRING_MAP,
                                        "annotations": _STRING_MAP,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        }
    ),
}


def _kopf_peering_schemas() -> dict[str, dict[str, Any]]:
    crds = yaml.safe_load_all((MANIFESTS / "kopf-peering-crds.yaml").read_text(encoding="utf-8"))
    return {
        crd["spec"]["names"]["kind"]: crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for crd in crds
    }


def validation_errors(obj: dict[str, Any]) -> list[str]:
    """Why `obj` would be refused by a Kubernetes 1.35 API server with the CRDs it needs; [] if admitted."""
    kind = obj.get("kind", "")
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    if is_transferjob(obj):
        return [str(error) for error in validate_object(obj).errors]
    if group == "monitoring.coreos.com":
        validator = jsonschema.Draft7Validator(MONITORING_SCHEMAS[kind])
        return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    if group == "kopf.dev":
        if not obj.get("metadata", {}).get("name"):
            return ["metadata.name is required"]
        validator = jsonschema.Draft7Validator(_kopf_peering_schemas()[kind])
        return [e.message for e in validator.iter_errors({k: v for k, v in obj.items() if k == "status"})]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    return []
