"""A throwaway kopf operator that exercises the harness the way the real operator will (not the real
operator).

On each TransferJob it creates an adopted ConfigMap `<name>-toy` (so garbage collection has a child to
collect), writes `status.phase` and a `Ready` condition through the status subresource, and posts an Event.
Tests start it with `cluster.start_operator("--all-namespaces", "-m",
"tests.integration.harness.toy_operator")`.
"""

from __future__ import annotations

import os
from typing import Any

import kopf
import kubernetes


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Short batch window, handler logs posted as Events, bookkeeping under kubegraft.io annotations."""
    settings.posting.loggers = True
    # Peering (HA) tests shorten how long a silent peer counts as alive (kopf's default: 60 s).
    settings.peering.lifetime = int(os.environ.get("TOY_PEERING_LIFETIME", "60"))
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubegraft.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kubegraft.io")
    settings.batching.batch_window = 0.05


@kopf.on.create("kubegraft.io", "v1alpha1", "transferjobs")
def create_fn(
    name: str, namespace: str | None, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any
) -> None:
    """Create the child ConfigMap (adopted) and report Ready in status."""
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-toy"},
        "data": {"backbone": body["spec"]["model"]["backbone"]},
    }
    kopf.adopt(configmap, owner=body)
    kubernetes.config.load_kube_config()
    api = kubernetes.client.CoreV1Api()
    try:
        api.create_namespaced_config_map(namespace or "default", configmap)
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:
            raise
    patch.status["phase"] = "Ready"
    patch.status["conditions"] = [{"type": "Ready", "status": "True", "reason": "ToyReady", "message": "ok"}]
    logger.info(f"toy operator handled {name}")
