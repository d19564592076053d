"""`python -m tests.harness`: run the test cluster in the foreground for demos and manual poking.

Starts the enriched API emulator, a kubeconfig and the test kubelet (and, with `--operator`, the kubegraft
operator), prints how to point kubectl at it, and runs until Ctrl-C; then stops everything it started.

    python -m tests.harness --workdir .cache/cluster --operator
    export KUBECONFIG=.cache/cluster/kubeconfig.yaml
    kubectl apply --validate=false -f examples/flowers.yaml && kubectl get tj -w
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from tests.harness.cluster import Cluster

app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0] if __doc__ else None)


@app.command()
def run(
    workdir: Annotated[Path, typer.Option(help="Kubeconfig, logs and pod directories.")] = Path(
        ".cache/cluster"
    ),
    gpus: Annotated[int, typer.Option(help="nvidia.com/gpu capacity of the test node.")] = 1,
    operator: Annotated[bool, typer.Option(help="Also run the kubegraft operator (kopf run).")] = False,
) -> None:
    """Run the cluster until interrupted."""
    venv_bin = str(Path(sys.executable).parent)
    pod_env = {"PATH": os.pathsep.join((venv_bin, os.environ.get("PATH", "")))}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Cluster(workdir.resolve(), gpus=gpus, pod_env=pod_env) as cluster:
        typer.echo(f"API server: {cluster.url}")
        typer.echo(f"export KUBECONFIG={cluster.kubeconfig}")
        typer.echo(f"pod logs under {cluster.kubelet.workdir}; emulator log {cluster.emulator_log}")
        if operator:
            process = cluster.start_operator()
            typer.echo(f"operator pid {process.pid}, log {process.log_path}")
        typer.echo("Ctrl-C stops everything.")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    app()
