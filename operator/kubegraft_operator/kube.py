"""The one place that talks to the Kubernetes API (besides kopf's own watching and patching).

`reconcile` calls it to create and delete a run's children, patch a Job's suspend flag, patch the
TransferJob's status and annotations, and post Events. Creates are idempotent (409 AlreadyExists is success:
names are deterministic), deletes too (404 is success). Other failures become kopf errors via `errors`.

The synchronous `kubernetes` client runs in worker threads; bodies are plain dicts in and out (no model
deserialisation), which keeps the operator fast and its memory flat.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubegraft.spec import GROUP, PLURAL, VERSION
from kubegraft_operator.errors import translate_api_error

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
REQUEST_TIMEOUT_SECONDS = 30.0

log = logging.getLogger(__name__)


def load_api_client() -> k8s.ApiClient:
    """An API client from the in-cluster service account, else from $KUBECONFIG / ~/.kube/config."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = 16
    return k8s.ApiClient(configuration)


def job_path(namespace: str, name: str = "") -> str:
    """The API path of Jobs in `namespace` (or of one Job)."""
    base = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    return f"{base}/{name}" if name else base


def configmap_path(namespace: str, name: str = "") -> str:
    """The API path of ConfigMaps in `namespace` (or of one ConfigMap)."""
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    return f"{base}/{name}" if name else base


def service_path(namespace: str, name: str = "") -> str:
    """The API path of Services in `namespace` (or of one Service)."""
    base = f"/api/v1/namespaces/{namespace}/services"
    return f"{base}/{name}" if name else base


def event_path(namespace: str) -> str:
    """The API path of core v1 Events in `namespace`."""
    return f"/api/v1/namespaces/{namespace}/events"


def workloads_path(namespace: str, job_uid: str) -> str:
    """Kueue Workloads of the Job with uid `job_uid` (Kueue labels them with it) in `namespace`."""
    selector = quote(f"kueue.x-k8s.io/job-uid={job_uid}")
    return f"/apis/kueue.x-k8s.io/v1beta1/namespaces/{namespace}/workloads?labelSelector={selector}"


def job_events_path(namespace: str, job_uid: str) -> str:
    """Core v1 Events about the Job with uid `job_uid` in `namespace`."""
    selector = quote(f"involvedObject.uid={job_uid}")
    return f"/api/v1/namespaces/{namespace}/events?fieldSelector={selector}"


def transferjob_path(namespace: str, name: str, subresource: str = "") -> str:
    """The API path of one TransferJob (or of its subresource, e.g. status)."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
    return f"{path}/{subresource}" if subresource else path


class Kube:
    """Async wrappers of the few API calls the operator makes.

    Attributes:
        requests: how many API requests this instance has made (for benchmarks and tests).
    """

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self._api = api_client
        self.requests = 0

    def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        response = self._api.call_api(
            path,
            method,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
        data = response.data
        return json.loads(data) if data else None

    async def _request(
        self, what: str, method: str, path: str, body: Any = None, content_type: str = ""
    ) -> Any:
        self.requests += 1
        try:
            return await asyncio.to_thread(self._call, method, path, body, content_type or "application/json")
        except ApiException as exc:
            if exc.status in (404, 409):
                raise
            retry_after = (exc.headers or {}).get("Retry-After")
            raise translate_api_error(
                exc.status, what, str(exc.reason or ""), retry_after=retry_after
            ) from exc
        except (HTTPError, OSError) as exc:
            raise translate_api_error(None, what, type(exc).__name__) from exc

    async def list_optional(self, path: str, what: str) -> list[dict[str, Any]] | None:
        """The items of the list at `path`, or None when it cannot be read (403 by RBAC, 404 not served).

        For extra detail only (Kueue Workloads, a Job's Events): a failure is logged, never raised.
        """
        try:
            answer = await self._request(f"list {what}", "GET", path)
        except ApiException as exc:
            log.debug("cannot list %s (%s): status detail skipped", what, exc.status)
            return None
        except (kopf.TemporaryError, kopf.PermanentError) as exc:
            log.debug("cannot list %s: %s", what, exc)
            return None
        items = (answer or {}).get("items") if isinstance(answer, Mapping) else None
        return [dict(item) for item in items or [] if isinstance(item, Mapping)]

    async def ping(self) -> None:
        """List one TransferJob: proves the API server answers and the CRD is served (readiness)."""
        await self._request("list TransferJobs", "GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}?limit=1")

    async def create(self, path: str, body: Mapping[str, Any]) -> bool:
        """Create `body` under collection `path`; True if created, False if it already existed (409)."""
        name = body["metadata"]["name"]
        try:
            await self._request(f"create {body['kind']} {name}", "POST", path, dict(body))
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise translate_api_error(exc.status, f"create {body['kind']} {name}") from exc
        return True

    async def delete(self, path: str, what: str) -> bool:
        """Delete the object at `path` with background propagation; True if deleted, False if already gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        try:
            await self._request(f"delete {what}", "DELETE", path, body)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise translate_api_error(exc.status, f"delete {what}") from exc
        return True

    async def patch(self, path: str, patch: Mapping[str, Any], what: str) -> None:
        """JSON-merge-patch the object at `path`; a missing object (404) is left alone."""
        try:
            await self._request(f"patch {what}", "PATCH", path, dict(patch), MERGE_PATCH)
        except ApiException as exc:
            if exc.status == 404:
                log.debug("%s is gone; nothing to patch", what)
                return
            raise translate_api_error(exc.status, f"patch {what}") from exc

    async def replace_status(self, path: str, status: Mapping[str, Any], what: str) -> None:
        """Set the whole status at `path` (a /status subresource) to `status`; a missing object is left alone.

        A JSON patch `add /status` (RFC 6902: replaces the member if present), so the result does not
        depend on what the server held before: used when the operator cannot be sure of that (a write of
        its own may have been lost, see `reconcile`).
        """
        operations = [{"op": "add", "path": "/status", "value": dict(status)}]
        try:
            await self._request(f"write {what}", "PATCH", path, operations, JSON_PATCH)
        except ApiException as exc:
            if exc.status == 404:
                log.debug("%s is gone; nothing to write", what)
                return
            raise translate_api_error(exc.status, f"write {what}") from exc

    @staticmethod
    def post_event(transferjob: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Post a Kubernetes Event about `transferjob` (kopf queues and sends it in the background)."""
        kopf.event(transferjob, type=type_, reason=reason, message=message)  # type: ignore[arg-type]
