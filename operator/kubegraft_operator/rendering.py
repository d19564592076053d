"""Pure rendering of a TransferJob run into its children: the batch/v1 Job, the spec ConfigMap and, with
`spec.workers` > 1, the headless Service through which the Job's worker pods find each other.

Called by `reconcile` when a run's Job is missing. Same inputs, same output: names are derived from the
TransferJob's name and run number only, so a crashed and restarted operator renders the very same Job and
the API server's 409 tells it the Job is already there. Nothing here reads the cluster or the environment.

Several workers: one Indexed Job (`completions = parallelism = workers`), its pods in the subdomain of a
headless Service named like the Job, so worker i answers at `<job>-<i>.<job>` (the hostname Kubernetes gives
an Indexed Job's pod is `<job>-<index>`). Every worker gets the same pod spec; the trainer builds its
`TF_CONFIG` from `JOB_COMPLETION_INDEX` and the `KUBEGRAFT_WORKER*` variables. When one worker fails, the
others stop within seconds with exit code 75 (WorkerLost), which the pod failure policy ignores; the Job
controller replaces each failed index and the new pod set resumes from the chief's checkpoint. Kueue's
batch/Job integration sees one Workload with one pod set of `workers` pods, admitted all at once.

The TransferJob's spec travels to the trainer in a ConfigMap (apiVersion, kind, name, namespace and spec;
never status, never Secret data); S3 credentials travel only as `secretKeyRef`s to the user's own Secret.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import kopf
import yaml
from pydantic import ValidationError

from kubegraft import runtime
from kubegraft.scheduling import SchedulingSpec
from kubegraft.spec import API_VERSION, KIND, TransferJobSpec
from kubegraft_operator.config import OperatorConfig
from kubegraft_operator.errors import InvalidSpecError

CONTAINER_NAME = "trainer"
LABEL_TRANSFERJOB = "kubegraft.io/transferjob"
LABEL_RUN = "kubegraft.io/run"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_SPEC_HASH = "kubegraft.io/spec-hash"
ANNOTATION_GENERATION = "kubegraft.io/generation"
# On a Job the operator itself suspended (runPolicy.suspend): only such a Job is ever unsuspended by it. A Job
# suspended by anyone else (Kueue, also with manageJobsWithoutQueueName) is theirs to resume.
ANNOTATION_SUSPENDED = "kubegraft.io/suspended"
SPEC_VOLUME = "spec"
SCRATCH_VOLUME = "scratch"
TMP_VOLUME = "tmp"
SHM_VOLUME = "dshm"
SHM_DIR = "/dev/shm"  # the POSIX shared-memory mount point
TMP_DIR = "/tmp"  # an emptyDir mounted in the pod


# libyaml's emitter when PyYAML has it: the pure-Python one costs ~20 ms a manifest, most of a reconcile.
_BASE_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Dumper(_BASE_DUMPER):  # type: ignore[valid-type,misc]  # a class chosen at import time
    """Writes a value shared by two keys twice, never as an alias: the trainer's loader refuses aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_DUMPER: type[yaml.SafeDumper] = _Dumper


def job_name(transferjob: str, run: int) -> str:
    """The Job of run `run` of `transferjob`: `<name>-<run>` (deterministic: creates are idempotent)."""
    return f"{transferjob}-{run}"


def configmap_name(transferjob: str, run: int) -> str:
    """The ConfigMap holding run `run`'s TransferJob manifest: `<name>-<run>-spec`."""
    return f"{job_name(transferjob, run)}-spec"


def run_id(uid: str, generation: int) -> str:
    """The run identity the trainer names its checkpoints after: `<uid>-g<generation>`."""
    return f"{uid}-g{generation}"


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A digest of the spec that decides whether a new run is needed: everything except `runPolicy.suspend`.

    Suspending and resuming a run is not a new run, so `runPolicy.suspend` is left out; every other field
    (dataset, model, stages, resources, image, deadlines, ...) changes what the run would do or how, and a
    change to it starts the next run. Key order does not matter (canonical JSON).
    """
    stripped = {k: v for k, v in spec.items() if k != "runPolicy"}
    policy = {k: v for k, v in (spec.get("runPolicy") or {}).items() if k != "suspend"}
    if policy:
        stripped["runPolicy"] = policy
    canonical = json.dumps(stripped, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def service_name(transferjob: str, run: int) -> str:
    """The headless Service of run `run`'s workers: the Job's name (a DNS label: at most 63 characters)."""
    return job_name(transferjob, run)


def labels(transferjob: str, run: int) -> dict[str, str]:
    """The labels of a run's Job, pod template and ConfigMap (app.kubernetes.io set + kubegraft's)."""
    return {
        "app.kubernetes.io/name": "kubegraft-trainer",
        "app.kubernetes.io/instance": transferjob,
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/managed-by": "kubegraft-operator",
        "app.kubernetes.io/part-of": "kubegraft",
        LABEL_TRANSFERJOB: transferjob,
        LABEL_RUN: str(run),
    }


# Union member tags pydantic puts into error locations ("int", "str", "function-after[...]"): not fields.
_NOT_FIELDS = frozenset({"int", "str", "float", "bool"})


def _describe(exc: ValidationError) -> str:
    """One line per problem, `spec.<field path>: <what is wrong>` (the API server's way of saying it)."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        path = ".".join(
            str(part) for part in error["loc"] if str(part) not in _NOT_FIELDS and "[" not in str(part)
        )
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"spec.{path}: {message}" if path else f"spec: {message}")
    return "; ".join(lines)


def parse_spec(spec: Mapping[str, Any]) -> TransferJobSpec:
    """The typed spec, or `InvalidSpecError` naming each bad field.

    Admission (the CRD's schema and CEL rules) refuses almost everything the model refuses; what it cannot
    check (e.g. the syntax of `pod.labels` keys) ends here and the TransferJob fails with InvalidSpec.
    """
    try:
        return TransferJobSpec.model_validate(dict(spec))
    except ValidationError as exc:
        raise InvalidSpecError(_describe(exc)) from exc
    except ValueError as exc:
        raise InvalidSpecError(str(exc)) from exc


def desired_suspend(spec: TransferJobSpec) -> bool | None:
    """What the Job's `spec.suspend` must be now; None leaves it to Kueue.

    `runPolicy.suspend: true` always suspends. Without it, a Job in a Kueue queue is Kueue's to unsuspend
    when it admits the workload (the operator must not fight it), and any other Job runs.
    """
    if spec.run_policy.suspend:
        return True
    if spec.scheduling.queue_name:
        return None
    return False


def render_configmap(transferjob: Mapping[str, Any], run: int) -> dict[str, Any]:
    """The ConfigMap `<name>-<run>-spec`: the TransferJob manifest the trainer reads (no status/secrets)."""
    meta = transferjob["metadata"]
    manifest = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": transferjob["spec"],
    }
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(meta["name"], run),
            "namespace": meta["namespace"],
            "labels": labels(meta["name"], run),
        },
        "data": {runtime.SPEC_FILE_NAME: yaml.dump(manifest, Dumper=_DUMPER, sort_keys=False)},
    }
    kopf.adopt(body, owner=transferjob)  # type: ignore[arg-type]
    return body


def notice_event_name(transferjob: Mapping[str, Any], run: int, index: int) -> str:
    """The Event of notice `index` of run `run`: `<name>.<uid prefix>.r<run>.n<index>` (deterministic).

    A fixed name makes posting idempotent: after a crash between posting and recording it, the second
    post answers 409 and no duplicate appears. The uid prefix keeps a re-created namesake's Events apart.
    """
    meta = transferjob["metadata"]
    return f"{meta['name'][:200]}.{str(meta.get('uid', ''))[:8]}.r{run}.n{index}"


def job_created_event_name(transferjob: Mapping[str, Any], run: int) -> str:
    """The JobCreated Event of run `run`: `<name>.<uid prefix>.r<run>.created` (deterministic, once per run).

    Posted after a create that answered 201 and after one that answered 409 (the Job was there: a create
    whose reply was lost, or a crash before the watch saw it): the fixed name makes the second post a 409.
    """
    meta = transferjob["metadata"]
    return f"{meta['name'][:200]}.{str(meta.get('uid', ''))[:8]}.r{run}.created"


def render_event(
    transferjob: Mapping[str, Any],
    name: str,
    type_: str,
    reason: str,
    message: str,
    *,
    now: str,
    component: str,
    instance: str,
) -> dict[str, Any]:
    """A core v1 Event named `name` about `transferjob` (what kopf posts, but with a fixed name).

    Args:
        transferjob: the involved TransferJob (apiVersion, kind, metadata name/namespace/uid).
        name: the Event's name (see `notice_event_name`).
        type_: Normal or Warning.
        reason: a CamelCase reason.
        message: one or two sentences.
        now: RFC 3339 time with microseconds (eventTime is a MicroTime).
        component: the reporting component (the "From" column of `kubectl describe`).
        instance: the reporting replica.
    """
    meta = transferjob["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": transferjob.get("apiVersion") or API_VERSION,
            "kind": transferjob.get("kind") or KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message,
        "action": reason,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "eventTime": now,
        "count": 1,
    }


def render_service(transferjob: Mapping[str, Any], run: int) -> dict[str, Any]:
    """The headless Service `<name>-<run>` that gives run `run`'s worker pods stable DNS names (owned).

    Headless (`clusterIP: None`): DNS answers with the pods themselves, and `<job>-<i>.<service>` names pod i
    through the pods' `subdomain`. Not-ready addresses are published: workers resolve each other while
    starting, before any of them could be ready.
    """
    meta = transferjob["metadata"]
    run_labels = labels(meta["name"], run)
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(meta["name"], run),
            "namespace": meta["namespace"],
            "labels": run_labels,
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_TRANSFERJOB: meta["name"], LABEL_RUN: str(run)},
            "ports": [
                {
                    "name": runtime.WORKER_PORT_NAME,
                    "port": runtime.WORKER_PORT,
                    "targetPort": runtime.WORKER_PORT,
                    "protocol": "TCP",
                }
            ],
        },
    }
    kopf.adopt(body, owner=transferjob)  # type: ignore[arg-type]
    return body


def _worker_env(name: str, run: int, workers: int) -> list[dict[str, Any]]:
    """What a worker needs to find the others (its own index comes from JOB_COMPLETION_INDEX)."""
    return [
        {"name": runtime.ENV_WORKERS, "value": str(workers)},
        {"name": runtime.ENV_JOB_NAME, "value": job_name(name, run)},
        {"name": runtime.ENV_WORKER_SERVICE, "value": service_name(name, run)},
        {"name": runtime.ENV_WORKER_PORT, "value": str(runtime.WORKER_PORT)},
    ]


def _env(spec: TransferJobSpec, uid: str, generation: int, log_format: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": runtime.ENV_SPEC_PATH, "value": f"{runtime.SPEC_MOUNT_DIR}/{runtime.SPEC_FILE_NAME}"},
        {"name": runtime.ENV_RUN_ID, "value": run_id(uid, generation)},
        {"name": runtime.ENV_PROGRESS_PORT, "value": str(runtime.PROGRESS_PORT)},
        {"name": runtime.ENV_TERMINATION_LOG, "value": runtime.TERMINATION_LOG},
        {"name": runtime.ENV_SCRATCH_DIR, "value": runtime.SCRATCH_DIR},
        {"name": runtime.ENV_EXPECTED_GPUS, "value": str(spec.resources.gpus)},
        # The root filesystem is read-only: everything that writes under $HOME or $TMPDIR goes to emptyDirs.
        {"name": "HOME", "value": runtime.SCRATCH_DIR},
        {"name": "TMPDIR", "value": TMP_DIR},
        # The trainer logs in the operator's own format (text, or JSON lines for a log collector).
        {"name": runtime.ENV_LOG_FORMAT, "value": log_format},
    ]
    secret = spec.storage.secret_ref
    if secret is not None:
        # References only: the kubelet reads the user's Secret; its values never pass through the operator.
        for var, key in (
            ("AWS_ACCESS_KEY_ID", secret.access_key_id_key),
            ("AWS_SECRET_ACCESS_KEY", secret.secret_access_key_key),
        ):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key}}})
    return env


def _ids(uid: int | None, *fields: str) -> dict[str, int]:
    """The fixed UID fields of a security context; none when `uid` is None (OpenShift picks the UID)."""
    return {} if uid is None else dict.fromkeys(fields, uid)


def _resources(spec: TransferJobSpec, gpu_resource: str) -> dict[str, Any]:
    amounts: dict[str, str] = {"cpu": str(spec.resources.cpu), "memory": str(spec.resources.memory)}
    if spec.resources.gpus > 0:
        amounts[gpu_resource] = str(spec.resources.gpus)
    # Requests equal limits: a training pod gets the Guaranteed QoS class and is evicted last.
    return {"requests": dict(amounts), "limits": dict(amounts)}


TERMINATION_GRACE_SECONDS = 60


def _pod_failure_policy(workers: int) -> dict[str, Any]:
    def on_exit_code(action: str, code: runtime.ExitCode) -> dict[str, Any]:
        return {
            "action": action,
            "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In", "values": [int(code)]},
        }

    # The trainer exits 78 when the spec or the data is wrong: retrying cannot help.
    rules = [on_exit_code("FailJob", runtime.ExitCode.INVALID)]
    if workers > 1:
        # A worker that stopped because another one failed (exit 75, WorkerLost) is not charged a retry: one
        # restart of the pod set costs the one failure that caused it.
        rules.append(on_exit_code("Ignore", runtime.ExitCode.WORKER_LOST))
    # Preemption, eviction and node drains are not the trainer's fault: they do not use up retries.
    rules.append({"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]})
    return {"rules": rules}


def _scheduling_fields(scheduling: SchedulingSpec) -> dict[str, Any]:
    """The pod spec's placement fields from `spec.scheduling` (only those the spec sets)."""
    fields: dict[str, Any] = {}
    if scheduling.node_selector:
        fields["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        fields["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in scheduling.tolerations
        ]
    affinity = scheduling.affinity.model_dump(by_alias=True, exclude_none=True)
    if affinity:
        fields["affinity"] = affinity
    if scheduling.priority_class_name:
        fields["priorityClassName"] = scheduling.priority_class_name
    return fields


def render_job(
    transferjob: Mapping[str, Any],
    run: int,
    generation: int,
    config: OperatorConfig,
    spec: TransferJobSpec | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job `<name>-<run>` that trains run `run` of `transferjob` (owned by it).

    Args:
        transferjob: the TransferJob body (metadata name, namespace, uid; spec).
        run: the run number (1, 2, ...); a new spec generation gets the next one.
        generation: the metadata.generation the run was started for (it names the run's checkpoints).
        config: the operator's settings (default image, command, GPU resource name, ...).
        spec: the already parsed `transferjob["spec"]`, if the caller has it (parsed here otherwise).

    Raises:
        InvalidSpecError: the spec does not parse as a TransferJobSpec.
    """
    meta = transferjob["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    spec = spec if spec is not None else parse_spec(transferjob["spec"])
    image = spec.image or config.trainer_image
    run_labels = labels(name, run)
    job_labels = dict(run_labels)
    if spec.scheduling.queue_name:
        job_labels[LABEL_KUEUE_QUEUE] = spec.scheduling.queue_name
    workers = spec.workers
    env = _env(spec, meta["uid"], generation, config.log_format)
    ports = [{"name": runtime.PROGRESS_PORT_NAME, "containerPort": runtime.PROGRESS_PORT, "protocol": "TCP"}]
    if workers > 1:
        env += _worker_env(name, run, workers)
        ports.append(
            {"name": runtime.WORKER_PORT_NAME, "containerPort": runtime.WORKER_PORT, "protocol": "TCP"}
        )
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": config.image_pull_policy,
        "command": config.command_for(image),
        "env": env,
        "ports": ports,
        "resources": _resources(spec, config.gpu_resource),
        "securityContext": {
            "runAsNonRoot": True,
            **_ids(config.run_as_user, "runAsUser", "runAsGroup"),
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePath": runtime.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": SPEC_VOLUME, "mountPath": runtime.SPEC_MOUNT_DIR, "readOnly": True},
            {"name": SCRATCH_VOLUME, "mountPath": runtime.SCRATCH_DIR},
            {"name": TMP_VOLUME, "mountPath": TMP_DIR},
        ],
    }
    volumes: list[dict[str, Any]] = [
        {"name": SPEC_VOLUME, "configMap": {"name": configmap_name(name, run)}},
        {"name": SCRATCH_VOLUME, "emptyDir": {}},
        {"name": TMP_VOLUME, "emptyDir": {}},
    ]
    pod = spec.pod
    if pod.shm_size is not None:
        # A bigger /dev/shm than the runtime's 64Mi (tf.data, multiprocessing); it is the pod's memory.
        volumes.append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": str(pod.shm_size)}})
        container["volumeMounts"].append({"name": SHM_VOLUME, "mountPath": SHM_DIR})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # required by podFailurePolicy; retries are the Job's (backoffLimit)
        # On SIGTERM the trainer finishes a checkpoint save in progress and exits 143 within seconds; the
        # margin covers a big model's checkpoint upload. Drains and preemptions (DisruptionTarget) then do
        # not count against backoffLimit (podFailurePolicy), and the next pod resumes from the checkpoint.
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        # The trainer never talks to the Kubernetes API. Cloud identities do not need this token: the IRSA,
        # EKS Pod Identity and Azure webhooks project their own, GKE's metadata server needs none.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            **_ids(config.run_as_user, "runAsUser", "runAsGroup", "fsGroup"),
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    scheduling = spec.scheduling
    pod_spec.update(_scheduling_fields(scheduling))
    if service_account := pod.service_account_name or config.service_account:
        pod_spec["serviceAccountName"] = service_account
    if pod.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": secret} for secret in pod.image_pull_secrets]
    if workers > 1:
        pod_spec["subdomain"] = service_name(name, run)  # worker i is <job>-<i>.<service>
    policy = spec.run_policy
    job_spec: dict[str, Any] = {
        "completions": workers,
        "parallelism": workers,
        # A failed worker takes the others down with it: they exit WORKER_LOST, which podFailurePolicy
        # ignores, and the Job replaces every failed index. So a retry of the pod set counts one failure.
        "backoffLimit": policy.backoff_limit,
        # Kueue admits a queued Job by unsuspending it, so it is created suspended.
        "suspend": bool(policy.suspend or scheduling.queue_name),
        "podFailurePolicy": _pod_failure_policy(workers),
        "template": {
            # The spec's own labels and annotations first: the operator's (selection, bookkeeping) win.
            "metadata": {
                "labels": {**pod.labels, **run_labels},
                "annotations": {
                    **pod.annotations,
                    "kubectl.kubernetes.io/default-container": CONTAINER_NAME,
                },
            },
            "spec": pod_spec,
        },
    }
    if workers > 1:
        job_spec["completionMode"] = "Indexed"
    if policy.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    if policy.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = policy.ttl_seconds_after_finished
    body: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, run),
            "namespace": namespace,
            "labels": job_labels,
            "annotations": {
                ANNOTATION_SPEC_HASH: spec_hash(transferjob["spec"]),
                ANNOTATION_GENERATION: str(generation),
            },
        },
        "spec": job_spec,
    }
    if policy.suspend:
        body["metadata"]["annotations"][ANNOTATION_SUSPENDED] = "true"
    kopf.adopt(body, owner=transferjob)  # type: ignore[arg-type]
    return body
