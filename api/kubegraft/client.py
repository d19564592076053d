"""Reading TransferJobs from a cluster for `kubegraft status` and `kubegraft wait`, as kubectl does.

The API is reached through the kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``, its current context) or,
inside a pod, the service account, with the `kubernetes` client (the ``operator`` extra); it is imported
only when a command needs it. `wait_outcome` is the pure decision behind `kubegraft wait`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kubegraft.spec import GROUP, KIND, PLURAL, VERSION
from kubegraft.status import ConditionType

RESOURCE = f"{PLURAL}.{GROUP}"  # how kubectl names the resource in its messages
_TERMINAL = {ConditionType.SUCCEEDED: ConditionType.FAILED, ConditionType.FAILED: ConditionType.SUCCEEDED}


class ClientError(Exception):
    """The API cannot be reached or refused the request; the message is kubectl's kind of one line."""


class NotFoundError(ClientError):
    """The TransferJob does not exist."""


@dataclass(frozen=True)
class WaitFor:
    """A `--for=condition=Type[=value]` request."""

    type: str
    status: str = "True"

    @classmethod
    def parse(cls, text: str) -> WaitFor:
        """Parse kubectl's ``condition=Type[=value]`` (value True or False, any case; default True).

        Raises:
            ValueError: Not of that form.
        """
        kind, _, rest = text.partition("=")
        if kind != "condition" or not rest:
            raise ValueError(f"unrecognized condition: {text!r} (expected condition=Type[=True|False])")
        type_, _, value = rest.partition("=")
        status = value.capitalize() if value else "True"
        if not type_ or status not in ("True", "False"):
            raise ValueError(f"unrecognized condition: {text!r} (expected condition=Type[=True|False])")
        return cls(type_, status)


@dataclass(frozen=True)
class Outcome:
    """Where a wait stands: still waiting, met, or impossible (the run ended the other way)."""

    state: Literal["waiting", "met", "impossible"]
    message: str = ""


def _current(condition: Mapping[str, Any], generation: int | None) -> bool:
    """Whether a condition describes the current spec (kubectl wait skips older generations' conditions)."""
    observed = condition.get("observedGeneration")
    return observed is None or generation is None or int(observed) >= generation


def wait_outcome(transferjob: Mapping[str, Any], wanted: WaitFor) -> Outcome:
    """Whether ``wanted`` holds on the TransferJob, or can no longer hold in this run.

    Waiting for Succeeded is impossible once Failed is True for the current generation (and the other way
    round): the run is over and a new one needs a spec change, so the wait fails fast instead of timing out.
    """
    generation = transferjob.get("metadata", {}).get("generation")
    conditions = {
        c.get("type"): c
        for c in (transferjob.get("status") or {}).get("conditions") or []
        if _current(c, generation)
    }
    found = conditions.get(wanted.type)
    if found is not None and found.get("status") == wanted.status:
        return Outcome("met")
    opposite = _TERMINAL.get(wanted.type) if wanted.status == "True" else None
    ended = conditions.get(opposite) if opposite else None
    if ended is not None and ended.get("status") == "True":
        reason = ended.get("reason", "")
        message = str(ended.get("message", "")).strip()
        return Outcome(
            "impossible", f"the run ended {opposite}={ended['status']} ({reason}): {message}".strip()
        )
    return Outcome("waiting")


class TransferJobs:
    """TransferJobs of one cluster, read through the kubeconfig (or the pod's service account).

    Args:
        kubeconfig: A kubeconfig file; None: ``$KUBECONFIG``, ``~/.kube/config``, or in-cluster.
        context: A context of the kubeconfig; None: its current context.
    """

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        try:
            import kubernetes
        except ImportError as exc:  # the base install has no API client
            raise ClientError(
                "the kubernetes client is not installed: pip install 'kubegraft[operator]'"
            ) from exc
        self._kubernetes = kubernetes
        try:
            try:
                api = kubernetes.config.new_client_from_config(config_file=kubeconfig, context=context)
            except kubernetes.config.ConfigException:
                if kubeconfig or context:
                    raise
                kubernetes.config.load_incluster_config()
                api = kubernetes.client.ApiClient()
        except (kubernetes.config.ConfigException, OSError) as exc:
            raise ClientError(f"no usable kubeconfig: {exc}") from exc
        namespace = "default"
        try:
            _, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
            if context is not None:
                contexts, _ = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
                active = next((c for c in contexts if c["name"] == context), active)
            namespace = (active or {}).get("context", {}).get("namespace") or "default"
        except (kubernetes.config.ConfigException, OSError):
            pass  # in-cluster: the default namespace, as kubectl without a kubeconfig namespace
        self.default_namespace: str = namespace
        self._api = kubernetes.client.CustomObjectsApi(api)

    def get(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        """The TransferJob ``name``.

        Raises:
            NotFoundError: It does not exist.
            ClientError: The API refused or could not be reached.
        """
        namespace = namespace or self.default_namespace
        try:
            body: dict[str, Any] = self._api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except self._kubernetes.client.ApiException as exc:
            if exc.status == 404:
                raise NotFoundError(
                    f'Error from server (NotFound): {RESOURCE} "{name}" not found in namespace {namespace}'
                ) from None
            raise ClientError(f"Error from server ({exc.reason}): {str(exc.body or '')[:300]}") from None
        except Exception as exc:  # urllib3 connection errors and the like: one line, never a traceback
            raise ClientError(
                f"cannot reach the API server: {type(exc).__name__}: {str(exc)[:300]}"
            ) from None
        if body.get("kind") != KIND:
            raise ClientError(f"{name} is a {body.get('kind')}, not a {KIND}")
        return body

    def wait(
        self,
        name: str,
        namespace: str | None,
        wanted: WaitFor,
        timeout: float,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Outcome:
        """Poll the TransferJob until ``wanted`` is met, impossible, or ``timeout`` seconds passed.

        Returns:
            The last outcome: "met", "impossible", or "waiting" when the time ran out.

        Raises:
            NotFoundError, ClientError: As `get` (the TransferJob must exist when the wait starts and
                throughout, as with kubectl wait).
        """
        deadline = clock() + timeout
        while True:
            outcome = wait_outcome(self.get(name, namespace), wanted)
            if outcome.state != "waiting" or clock() >= deadline:
                return outcome
            sleep(max(min(interval, deadline - clock()), 0.0))
