"""Trainer processes on this machine with the environment each pod of a TransferJob's Job would get.

With `workers` > 1 that is the Indexed Job's: `KUBEGRAFT_WORKERS`, the Job and Service names, each pod's
`JOB_COMPLETION_INDEX`, and (test only) loopback addresses standing for the workers' stable hostnames, so
the processes train together over gRPC as MultiWorkerMirroredStrategy would across pods.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kubegraft import runtime
from tests.harness.ports import free_port


def start_local_workers(
    manifest: Path, root: Path, *, job: str, run_id: str, workers: int, logical_cpus: int = 0
) -> list[subprocess.Popen[bytes]]:
    """Start `kubegraft train` once per worker; logs, termination notes and scratch go under `root`.

    `job` is the Job's name (also the headless Service's, as the operator renders them); `logical_cpus`
    > 0 splits the CPU into that many logical devices in each process (replicas without GPUs).
    """
    addresses = {f"{job}-{i}.{job}:{runtime.WORKER_PORT}": f"127.0.0.1:{free_port()}" for i in range(workers)}
    command = [str(Path(sys.executable).parent / "kubegraft"), "train", "--progress-port", "0"]
    processes = []
    for index in range(workers):
        env = {
            **os.environ,
            runtime.ENV_SPEC_PATH: str(manifest),
            runtime.ENV_RUN_ID: run_id,
            runtime.ENV_TERMINATION_LOG: str(root / f"termination-{index}"),
            runtime.ENV_SCRATCH_DIR: str(root / f"scratch-{index}"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        if logical_cpus:
            env["KUBEGRAFT_LOGICAL_CPUS"] = str(logical_cpus)
        if workers > 1:
            env.update(
                {
                    runtime.ENV_WORKERS: str(workers),
                    runtime.ENV_JOB_NAME: job,
                    runtime.ENV_WORKER_SERVICE: job,
                    runtime.ENV_WORKER_PORT: str(runtime.WORKER_PORT),
                    runtime.ENV_COMPLETION_INDEX: str(index),
                    runtime.ENV_TEST_ADDRESSES: json.dumps(addresses),
                }
            )
        log = (root / f"worker-{index}.log").open("wb")
        processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    return processes
