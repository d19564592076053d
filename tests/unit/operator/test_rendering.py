"""The Job and ConfigMap a TransferJob run becomes (pure rendering)."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubegraft import runtime
from kubegraft.manifests import load_manifest
from kubegraft_operator.config import OperatorConfig
from kubegraft_operator.errors import InvalidSpecError
from kubegraft_operator.rendering import (
    configmap_name,
    desired_suspend,
    job_name,
    parse_spec,
    render_configmap,
    render_job,
    spec_hash,
)
from tests.unit.operator.factories import BASE_SPEC, UID, transferjob, with_spec

CONFIG = OperatorConfig(trainer_image="registry.example/trainer:1")
AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]
        }
    }
}


def _container(job: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = job["spec"]["template"]["spec"]["containers"][0]
    return container


def _env(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _container(job)["env"]}


def test_job_and_configmap_names_derive_from_transferjob_name_and_run() -> None:
    assert job_name("flowers", 3) == "flowers-3"
    assert configmap_name("flowers", 3) == "flowers-3-spec"
    job = render_job(transferjob(), 3, 2, CONFIG)
    assert job["metadata"]["name"] == "flowers-3"
    assert job["metadata"]["namespace"] == "ml"


def test_rendering_is_deterministic_so_a_restarted_operator_renders_the_same_job() -> None:
    assert render_job(transferjob(), 1, 1, CONFIG) == render_job(transferjob(), 1, 1, CONFIG)


def test_job_and_configmap_are_owned_by_the_transferjob_for_cascading_deletion() -> None:
    for body in (render_job(transferjob(), 1, 1, CONFIG), render_configmap(transferjob(), 1)):
        (ref,) = body["metadata"]["ownerReferences"]
        assert ref["uid"] == UID
        assert ref["kind"] == "TransferJob"
        assert ref["controller"] is True
        assert ref["blockOwnerDeletion"] is True


def test_container_runs_the_configured_image_and_kubegraft_train_by_default() -> None:
    container = _container(render_job(transferjob(), 1, 1, CONFIG))
    assert container["image"] == "registry.example/trainer:1"
    assert container["command"] == ["kubegraft", "train"]


def test_spec_image_overrides_the_default_and_per_image_command_overrides_apply() -> None:
    config = OperatorConfig(image_commands={"stand-in:1": ("python", "-m", "stand_in")})
    container = _container(render_job(transferjob(with_spec(image="stand-in:1")), 1, 1, config))
    assert container["image"] == "stand-in:1"
    assert container["command"] == ["python", "-m", "stand_in"]


def test_gpus_are_requested_under_the_configured_resource_name_with_cpu_and_memory() -> None:
    config = OperatorConfig(gpu_resource="amd.com/gpu")
    spec = with_spec(resources={"gpus": 2, "cpu": "500m", "memory": "2Gi"})
    resources = _container(render_job(transferjob(spec), 1, 1, config))["resources"]
    expected = {"cpu": "500m", "memory": "2Gi", "amd.com/gpu": "2"}
    assert resources == {"requests": expected, "limits": expected}


def test_no_gpu_resource_at_all_when_zero_gpus() -> None:
    spec = with_spec(resources={"gpus": 0, "cpu": 2, "memory": "1Gi"})
    resources = _container(render_job(transferjob(spec), 1, 1, CONFIG))["resources"]
    assert "nvidia.com/gpu" not in resources["limits"]
    assert "nvidia.com/gpu" not in resources["requests"]
    assert resources["limits"]["cpu"] == "2"


def test_pod_runs_restricted_non_root_with_read_only_root_and_scratch_dirs() -> None:
    job = render_job(transferjob(), 1, 1, CONFIG)
    pod = job["spec"]["template"]["spec"]
    container = _container(job)
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 1000
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["restartPolicy"] == "Never"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[runtime.SCRATCH_DIR]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    env = _env(job)
    assert env["HOME"]["value"] == runtime.SCRATCH_DIR
    assert env["TMPDIR"]["value"] == "/tmp"


def test_pod_failure_policy_fails_fast_on_exit_78_and_ignores_disruptions() -> None:
    rules = render_job(transferjob(), 1, 1, CONFIG)["spec"]["podFailurePolicy"]["rules"]
    fail = next(r for r in rules if r["action"] == "FailJob")
    assert fail["onExitCodes"] == {"containerName": "trainer", "operator": "In", "values": [78]}
    ignore = next(r for r in rules if r["action"] == "Ignore")
    assert ignore["onPodConditions"][0]["type"] == "DisruptionTarget"


def test_a_drained_pod_has_the_grace_period_to_exit_143_which_the_job_retries() -> None:
    job = render_job(transferjob(), 1, 1, CONFIG)
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30  # the trainer needs seconds
    rules = job["spec"]["podFailurePolicy"]["rules"]
    failing = {code for r in rules if r["action"] == "FailJob" for code in r["onExitCodes"]["values"]}
    assert runtime.ExitCode.TERMINATED not in failing  # counted as a retryable failure, never fatal
    assert job["spec"]["backoffLimit"] >= 1


def test_run_policy_maps_to_job_backoff_deadline_ttl_and_suspend() -> None:
    spec = with_spec(
        runPolicy={
            "backoffLimit": 5,
            "activeDeadlineSeconds": 600,
            "ttlSecondsAfterFinished": 60,
            "suspend": True,
        }
    )
    job_spec = render_job(transferjob(spec), 1, 1, CONFIG)["spec"]
    assert job_spec["backoffLimit"] == 5
    assert job_spec["activeDeadlineSeconds"] == 600
    assert job_spec["ttlSecondsAfterFinished"] == 60
    assert job_spec["suspend"] is True


def test_defaults_leave_deadline_and_ttl_unset_and_the_job_unsuspended() -> None:
    job_spec = render_job(transferjob(), 1, 1, CONFIG)["spec"]
    assert "activeDeadlineSeconds" not in job_spec
    assert "ttlSecondsAfterFinished" not in job_spec
    assert job_spec["suspend"] is False
    assert job_spec["backoffLimit"] == 3


def test_kueue_queue_labels_the_job_and_creates_it_suspended() -> None:
    spec = with_spec(scheduling={"queueName": "team-a"})
    job = render_job(transferjob(spec), 1, 1, CONFIG)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True


def test_scheduling_fields_are_copied_to_the_pod() -> None:
    spec = with_spec(
        scheduling={
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": AFFINITY,
            "priorityClassName": "high",
        }
    )
    pod = render_job(transferjob(spec), 1, 1, CONFIG)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["affinity"] == AFFINITY
    assert pod["priorityClassName"] == "high"


def test_credentials_come_only_as_secret_key_refs_with_configurable_keys() -> None:
    spec = with_spec(
        storage={"secretRef": {"name": "s3-creds", "accessKeyIdKey": "id", "secretAccessKeyKey": "key"}}
    )
    env = _env(render_job(transferjob(spec), 1, 1, CONFIG))
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "s3-creds", "key": "id"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "s3-creds", "key": "key"}}
    assert "value" not in env["AWS_ACCESS_KEY_ID"]


def test_no_credential_env_without_secret_ref_so_cloud_identity_applies() -> None:
    env = _env(render_job(transferjob(), 1, 1, CONFIG))
    assert not any(name.startswith("AWS_") for name in env)


def test_spec_reaches_the_trainer_through_a_mounted_configmap_without_status() -> None:
    body = transferjob(status={"phase": "Running"})
    job = render_job(body, 2, 5, CONFIG)
    env = _env(job)
    assert env[runtime.ENV_SPEC_PATH]["value"] == f"{runtime.SPEC_MOUNT_DIR}/{runtime.SPEC_FILE_NAME}"
    assert env[runtime.ENV_RUN_ID]["value"] == f"{UID}-g5"
    mount = next(m for m in _container(job)["volumeMounts"] if m["mountPath"] == runtime.SPEC_MOUNT_DIR)
    volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "flowers-2-spec"
    manifest = yaml.safe_load(render_configmap(body, 2)["data"][runtime.SPEC_FILE_NAME])
    assert manifest == {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "TransferJob",
        "metadata": {"name": "flowers", "namespace": "ml"},
        "spec": BASE_SPEC,
    }


def test_progress_port_and_termination_message_policy() -> None:
    container = _container(render_job(transferjob(), 1, 1, CONFIG))
    assert container["ports"] == [
        {"name": "progress", "containerPort": runtime.PROGRESS_PORT, "protocol": "TCP"}
    ]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["terminationMessagePath"] == runtime.TERMINATION_LOG


def test_job_and_pod_template_carry_the_recommended_and_kubegraft_labels() -> None:
    job = render_job(transferjob(), 4, 1, CONFIG)
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["kubegraft.io/transferjob"] == "flowers"
        assert labels["kubegraft.io/run"] == "4"
        assert labels["app.kubernetes.io/instance"] == "flowers"
        assert labels["app.kubernetes.io/managed-by"] == "kubegraft-operator"
        for key in ("name", "component", "part-of"):
            assert f"app.kubernetes.io/{key}" in labels


def test_no_secret_value_appears_anywhere_in_the_rendered_objects() -> None:
    spec = with_spec(storage={"secretRef": {"name": "s3-creds"}, "endpoint": "http://s3.local:8333"})
    rendered = json.dumps(
        [render_job(transferjob(spec), 1, 1, CONFIG), render_configmap(transferjob(spec), 1)]
    )
    assert "s3-creds" in rendered  # the Secret's name is fine ...
    assert "secretKeyRef" in rendered  # ... referenced, not read
    assert "stringData" not in rendered
    assert '"data"' not in rendered.replace('"data": {"transferjob.yaml"', "")


def test_spec_hash_ignores_suspend_and_key_order_but_not_other_fields() -> None:
    a = with_spec(runPolicy={"suspend": False, "backoffLimit": 3})
    b = with_spec(runPolicy={"backoffLimit": 3, "suspend": True})
    assert spec_hash(a) == spec_hash(b)
    assert spec_hash(a) != spec_hash(with_spec(runPolicy={"suspend": False, "backoffLimit": 4}))
    assert spec_hash(BASE_SPEC) != spec_hash(with_spec(model={"backbone": "ResNet50"}))


def test_kueue_owns_unsuspending_unless_the_user_suspends() -> None:
    assert desired_suspend(parse_spec(with_spec(scheduling={"queueName": "q"}))) is None
    assert desired_suspend(parse_spec(with_spec(scheduling={"queueName": "q"}, runPolicy={"suspend": True})))
    assert desired_suspend(parse_spec(BASE_SPEC)) is False


def test_an_unparseable_spec_is_an_invalid_spec_error() -> None:
    with pytest.raises(InvalidSpecError):
        render_job(transferjob({"dataset": {}}), 1, 1, CONFIG)


POD_OPTIONS: dict[str, Any] = {
    "serviceAccountName": "ml-trainer",
    "imagePullSecrets": ["registry", "mirror"],
    "labels": {"azure.workload.identity/use": "true", "team": "vision"},
    "annotations": {"sidecar.istio.io/inject": "false"},
    "shmSize": "2Gi",
}


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = job["spec"]["template"]
    return pod


def test_pod_options_set_service_account_pull_secrets_labels_and_annotations() -> None:
    job = render_job(transferjob(with_spec(pod=POD_OPTIONS)), 2, 1, CONFIG)
    pod = _pod(job)
    assert pod["spec"]["serviceAccountName"] == "ml-trainer"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}, {"name": "mirror"}]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["metadata"]["labels"]["team"] == "vision"
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "trainer"
    # Pod labels are the pod's: the Job keeps only the operator's own.
    assert "team" not in job["metadata"]["labels"]


def test_spec_service_account_wins_over_the_operator_default_and_no_api_token_is_mounted() -> None:
    config = OperatorConfig(trainer_image="t:1", service_account="kubegraft-trainer")
    assert _pod(render_job(transferjob(), 1, 1, config))["spec"]["serviceAccountName"] == "kubegraft-trainer"
    pod = _pod(render_job(transferjob(with_spec(pod=POD_OPTIONS)), 1, 1, config))
    assert pod["spec"]["serviceAccountName"] == "ml-trainer"
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_no_service_account_pull_secrets_or_shm_volume_by_default() -> None:
    pod = _pod(render_job(transferjob(), 1, 1, CONFIG))
    assert "serviceAccountName" not in pod["spec"]
    assert "imagePullSecrets" not in pod["spec"]
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["spec", "scratch", "tmp"]
    assert all(m["mountPath"] != "/dev/shm" for m in _container({"spec": {"template": pod}})["volumeMounts"])


def test_shm_size_mounts_a_memory_backed_empty_dir_at_dev_shm() -> None:
    job = render_job(transferjob(with_spec(pod={"shmSize": "2Gi"})), 1, 1, CONFIG)
    volumes = {v["name"]: v for v in _pod(job)["spec"]["volumes"]}
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in _container(job)["volumeMounts"]


def test_every_label_the_operator_sets_on_a_pod_is_reserved_in_the_spec() -> None:
    from kubegraft.spec import OPERATOR_KEY_PREFIX, OPERATOR_LABEL_KEYS

    job = render_job(transferjob(with_spec(scheduling={"queueName": "q"})), 1, 1, CONFIG)
    for key in {**job["metadata"]["labels"], **_pod(job)["metadata"]["labels"]}:
        assert key.startswith(OPERATOR_KEY_PREFIX) or key in OPERATOR_LABEL_KEYS, key


def test_operator_labels_win_over_a_pod_label_that_slipped_past_admission() -> None:
    # Admission (CEL) refuses reserved keys; rendering still never lets one replace a selection label.
    spec = parse_spec(with_spec(pod={"labels": {"team": "a"}}))
    forged = spec.model_copy(
        update={"pod": spec.pod.model_copy(update={"labels": {"kubegraft.io/run": "99", "team": "a"}})}
    )
    job = render_job(transferjob(with_spec(pod={"labels": {"team": "a"}})), 3, 1, CONFIG, forged)
    assert _pod(job)["metadata"]["labels"]["kubegraft.io/run"] == "3"


def test_a_job_with_every_pod_option_passes_kubernetes_strict_validation() -> None:
    spec = with_spec(pod=POD_OPTIONS, scheduling={"queueName": "q"})
    job = render_job(transferjob(spec), 1, 1, CONFIG)
    kubernetes_validate.validate(job, "1.32.0", strict=True)


def test_configmap_spec_writes_shared_values_out_for_the_trainers_alias_free_loader() -> None:
    shared = {"uri": "s3://models/flowers/"}
    body = transferjob(with_spec(output=shared, storage={}))
    body["spec"]["storage"] = body["spec"]["output"]  # one object under two keys: safe_dump would alias it
    text = render_configmap(body, 1)["data"][runtime.SPEC_FILE_NAME]
    assert "&id" not in text
    assert load_manifest(text)["spec"]["storage"] == shared
