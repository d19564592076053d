"""A small stand-in for `kubegraft train` obeying the runtime contract, for the operator's integration tests.

Run as the trainer container's command (the operator's KUBEGRAFT_TRAINER_COMMAND) by the test kubelet. It
reads
the mounted TransferJob (KUBEGRAFT_SPEC), serves `GET /progress` (a TrainingProgress) on
KUBEGRAFT_PROGRESS_BIND:KUBEGRAFT_PROGRESS_PORT, "trains" by sleeping through its stages' epochs, writes a
compact TrainingProgress to KUBEGRAFT_TERMINATION_LOG and exits with a runtime ExitCode.

Behaviour is chosen by the spec's dataset URI, `file:///stand-in/<mode>/<seconds per epoch>`:
- `succeed`: trains and publishes `<output.uri>1/` (exit 0);
- `invalid`: fails at once with DatasetNotFound (exit 78, no retry);
- `retryable`: fails with StorageAccessDenied (exit 1, retried by the Job);
- `flaky`: fails like `retryable` on its first attempt (a marker file per run id), then succeeds;
- `nogain`: succeeds, with a BatchNormReestimated notice from the first epoch on (in /progress) and a final
  NoTransferGain notice and baseline metrics below the baseline (termination message);
- `gain`: succeeds with a RecipeChosen notice and baseline metrics above the baseline.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from kubegraft.runtime import (
    ENV_PROGRESS_BIND,
    ENV_PROGRESS_PORT,
    ENV_RUN_ID,
    ENV_SPEC_PATH,
    ENV_TERMINATION_LOG,
    PROGRESS_PORT,
    ExitCode,
    Notice,
    NoticeReason,
    TrainingProgress,
)
from kubegraft.spec import TransferJobSpec


class _Shared:
    """The progress the HTTP thread serves, replaced whole by the training loop."""

    lock = threading.Lock()
    state = TrainingProgress()


def _publish(progress: TrainingProgress) -> None:
    with _Shared.lock:
        _Shared.state = progress


class _Progress(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/progress":
            self.send_error(404)
            return
        with _Shared.lock:
            body = _Shared.state.model_dump_json(by_alias=True).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def _finish(progress: TrainingProgress, code: ExitCode) -> None:
    Path(os.environ[ENV_TERMINATION_LOG]).write_text(
        progress.model_dump_json(by_alias=True, exclude_defaults=True)
    )
    print(f"stand-in trainer exits {int(code)}: {progress.state} {progress.reason or ''}", flush=True)
    sys.exit(int(code))


def main() -> None:
    """Serve progress, sleep through the epochs, report the outcome the dataset URI asks for."""
    manifest = yaml.safe_load(Path(os.environ[ENV_SPEC_PATH]).read_text())
    spec = TransferJobSpec.model_validate(manifest["spec"])
    print(f"stand-in trainer: run {os.environ[ENV_RUN_ID]}, dataset {spec.dataset.uri}", flush=True)
    parts = spec.dataset.uri.removeprefix("file:///stand-in/").split("/")
    mode, seconds = parts[0], float(parts[1]) if len(parts) > 1 else 0.2
    bind = os.environ.get(ENV_PROGRESS_BIND, "0.0.0.0")
    server = ThreadingHTTPServer((bind, int(os.environ.get(ENV_PROGRESS_PORT, PROGRESS_PORT))), _Progress)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stages = spec.resolved_stages()
    total = sum(s.epochs for s in stages)
    state = TrainingProgress.model_validate(
        {"state": "loading", "stages": [s.name for s in stages], "totalEpochs": total}
    )
    _publish(state)
    if mode == "invalid":
        _finish(
            TrainingProgress.model_validate(
                {
                    "state": "failed",
                    "reason": "DatasetNotFound",
                    "message": f"No images under {spec.dataset.uri}.",
                }
            ),
            ExitCode.INVALID,
        )
    # Shared by the run's pods (each has its own HOME and TMPDIR): a fixed host path keyed by the run id.
    marker = Path("/tmp") / f"kubegraft-stand-in-flaky-{os.environ[ENV_RUN_ID]}"
    if mode == "retryable" or (mode == "flaky" and not marker.exists()):
        marker.touch()
        _finish(
            TrainingProgress.model_validate(
                {"state": "failed", "reason": "StorageAccessDenied", "message": "Access denied by storage."}
            ),
            ExitCode.RETRYABLE,
        )
    completed = 0
    if mode == "gain":
        recipe = Notice(reason=NoticeReason.RECIPE_CHOSEN, message="Chose head-then-finetune (score 0.91).")
        state = state.model_copy(update={"notices": [recipe], "recipe": "head-then-finetune"})
    for index, stage in enumerate(stages):
        for epoch in range(1, stage.epochs + 1):
            time.sleep(seconds)
            completed += 1
            state = state.model_copy(
                update={
                    "state": "training",
                    "stage": stage.name,
                    "stage_index": index,
                    "epoch": epoch,
                    "stage_epochs": stage.epochs,
                    "completed_epochs": completed,
                    "metrics": {
                        "val_accuracy": round(0.5 + 0.04 * completed, 3),
                        "loss": 1.0 / completed,
                    },
                    "images_per_second": 123.0,
                    # As the real trainer derives them: percent of planned epochs, at most 99 until done.
                    "progress": min(99, 100 * completed // total),
                    "eta_seconds": seconds * (total - completed),
                    "images_trained": 100 * completed,
                    # As the real trainer reports them: 2 replicas split the stage's batchSize.
                    "replicas": 2,
                    "global_batch_size": stage.batch_size,
                    "per_replica_batch_size": -(-stage.batch_size // 2),
                }
            )
            if mode == "nogain" and not state.notices:
                reestimated = Notice(
                    reason=NoticeReason.BATCH_NORM_REESTIMATED, message="Backbone BN statistics re-estimated."
                )
                state = state.model_copy(update={"notices": [reestimated]})
            _publish(state)
    metrics = {"test_accuracy": 0.9}
    notices = list(state.notices)
    if mode == "nogain":
        metrics = {"test_accuracy": 0.4, "baseline_accuracy": 0.5, "transfer_gain": -0.1}
        notices.append(
            Notice(
                reason=NoticeReason.NO_TRANSFER_GAIN, message="Test accuracy 0.4 is below the baseline 0.5."
            )
        )
    elif mode == "gain":
        metrics = {"test_accuracy": 0.9, "baseline_accuracy": 0.5, "transfer_gain": 0.4}
    final = state.model_copy(
        update={
            "state": "succeeded",
            "progress": 100,
            "eta_seconds": 0.0,
            "model_uri": f"{spec.output.uri.rstrip('/')}/1/",
            "metrics": metrics,
            "notices": notices,
        }
    )
    _finish(final, ExitCode.SUCCEEDED)


if __name__ == "__main__":
    main()
