"""Progress and ETA in the status, `kubectl get` columns, and `kubegraft status` / `kubegraft wait`.

kubectl is the real binary (.tools/bin/kubectl) against the emulator; the CLI reads through the kubeconfig.
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from kubegraft.cli import app
from tests.integration.operator.conftest import OperatorEnv, stand_in_spec


def _kubegraft(op: OperatorEnv, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--kubeconfig", str(op.cluster.kubeconfig)])
    return result.exit_code, result.stdout, result.stderr


def _header(text: str) -> list[str]:
    return text.splitlines()[0].split()


def test_progress_grows_to_100_in_kubectl_columns_kubegraft_wait_and_status(op: OperatorEnv) -> None:
    op.apply("progress-cli", stand_in_spec("succeed", 1.0, epochs=12))
    seen: list[int] = []

    def training() -> bool:
        status = op.status("progress-cli")
        if "progress" in status:
            seen.append(status["progress"])
        return "etaSeconds" in status and 0 < status.get("progress", 0) < 100

    op.wait_status("progress-cli", lambda s: training(), timeout=60, what="progress and ETA")
    table = op.cluster.kubectl("get", "tj", "progress-cli", "-n", "default").stdout
    assert _header(table) == ["NAME", "PHASE", "STAGE", "EPOCH", "PROGRESS", "ETA", "VAL-ACC", "AGE"]
    row = dict(zip(_header(table), table.splitlines()[1].split(), strict=True))
    assert row["PHASE"] == "Running" and 0 < int(row["PROGRESS"]) < 100 and int(row["ETA"]) > 0

    code, out, err = _kubegraft(op, "wait", "progress-cli", "--for=condition=Succeeded", "--timeout=60s")
    assert (code, out.strip()) == (0, "transferjobs.kubegraft.io/progress-cli condition met"), err
    status = op.status("progress-cli")
    seen.append(status["progress"])
    assert seen == sorted(seen) and seen[-1] == 100
    assert status["etaSeconds"] == 0 and status["lastUpdateTime"]

    wide = op.cluster.kubectl("get", "tj", "progress-cli", "-n", "default", "-o", "wide").stdout
    assert _header(wide)[-2:] == ["MODEL", "RECIPE"]
    assert "file:///models/stand-in/1/" in wide
    assert "MODEL" not in op.cluster.kubectl("get", "tj", "progress-cli", "-n", "default").stdout

    code, out, _ = _kubegraft(op, "status", "progress-cli", "-n", "default", "-o", "json")
    view = json.loads(out)
    assert code == 0
    assert (view["phase"], view["progress"], view["modelUri"]) == (
        "Succeeded",
        100,
        "file:///models/stand-in/1/",
    )
    assert {c["type"] for c in view["conditions"]} >= {"Ready", "Succeeded"}
    code, out, _ = _kubegraft(op, "status", "progress-cli")
    fields = dict(line.split(":", 1) for line in out.splitlines() if not line.startswith(" "))
    assert code == 0
    assert (fields["Progress"].strip(), fields["ETA"].strip()) == ("100%", "0s")
    assert fields["Model"].strip() == "file:///models/stand-in/1/"


def test_kubegraft_wait_fails_fast_on_failed_times_out_and_reports_a_missing_job(op: OperatorEnv) -> None:
    op.apply("wait-broken", stand_in_spec("invalid", 0.1, epochs=1))
    code, _, err = _kubegraft(op, "wait", "wait-broken", "--for=condition=Succeeded", "--timeout=10m")
    assert code == 1
    assert "will not become Succeeded=True" in err and "DatasetNotFound" in err
    # The condition it does reach is met.
    code, out, _ = _kubegraft(op, "wait", "wait-broken", "--for", "condition=Failed", "--timeout=5s")
    assert (code, out.strip()) == (0, "transferjobs.kubegraft.io/wait-broken condition met")

    op.apply("wait-slow", stand_in_spec("succeed", 30.0, epochs=2))
    code, _, err = _kubegraft(op, "wait", "wait-slow", "--for=condition=Succeeded", "--timeout=2s")
    assert code == 1
    assert "timed out waiting for the condition on transferjobs.kubegraft.io/wait-slow" in err
    op.cluster.delete("kubegraft.io/v1alpha1", "transferjobs", "wait-slow")

    code, _, err = _kubegraft(op, "wait", "no-such-job", "--for=condition=Succeeded", "--timeout=1s")
    assert code == 1 and "NotFound" in err and "no-such-job" in err
    code, _, err = _kubegraft(op, "status", "no-such-job")
    assert code == 1 and "NotFound" in err
