"""The `kubegraft` command line: CRD, validation, local training, prediction and the operator.

Each command is a thin shell over the module that does the work; heavy imports (TensorFlow, kopf) happen
inside the command so `kubegraft crd` and `kubegraft validate` stay fast and dependency-light.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from kubegraft.logs import LogFormat
from kubegraft.runtime import ENV_LOG_FORMAT

# kopf's --log-format for each of ours: `full` is kopf's default text line (time, logger, level, message).
_KOPF_LOG_FORMATS = {LogFormat.text: "full", LogFormat.json: "json"}
_LOG_FORMAT_HELP = "Log lines as text or one JSON object per line (message, timestamp, severity, ...)."

app = typer.Typer(
    name="kubegraft",
    help="Transfer learning on Kubernetes: TransferJob tooling, local training and the operator.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    """`--version`: the installed distribution's version (pyproject.toml), then exit 0."""
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"kubegraft {version('kubegraft')}")
        except PackageNotFoundError:  # running from a source tree that was never installed
            from kubegraft import __version__

            typer.echo(f"kubegraft {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Transfer learning on Kubernetes: TransferJob tooling, local training and the operator."""


@app.command()
def crd() -> None:
    """Print the TransferJob CustomResourceDefinition (YAML), generated from the pydantic models."""
    from kubegraft.crd import render_crd_yaml

    typer.echo(render_crd_yaml(), nl=False)


class OutputFormat(StrEnum):
    """How `kubegraft validate -o` prints the defaulted objects."""

    yaml = "yaml"
    json = "json"


class PredictFormat(StrEnum):
    """How `kubegraft predict -o` prints."""

    text = "text"
    json = "json"


class StatusFormat(StrEnum):
    """How `kubegraft status -o` prints."""

    table = "table"
    json = "json"
    yaml = "yaml"


def _read_manifest_file(file: str) -> bytes | None:
    """The bytes of `file` ('-': stdin), at most one past the size limit; None (said why) if unreadable."""
    import sys
    from pathlib import Path

    from kubegraft.manifests import MAX_MANIFEST_BYTES

    try:
        # One byte past the limit is enough to refuse a file (or a stream) that is too large.
        if file == "-":
            return sys.stdin.buffer.read(MAX_MANIFEST_BYTES + 1)
        with Path(file).open("rb") as handle:
            return handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        typer.echo(f"{file}: cannot read: {exc.strerror or exc}", err=True)
        return None


@app.command()
def validate(
    files: Annotated[
        list[str], typer.Argument(help="Manifest files (multi-document YAML); '-' reads stdin.")
    ],
    output: Annotated[
        OutputFormat | None,
        typer.Option(
            "--output",
            "-o",
            help="Print each valid TransferJob after defaulting, as the API server stores it.",
        ),
    ] = None,
) -> None:
    """Validate TransferJob manifests as the API server will (schema, defaults, CEL); exit 1 if any fails.

    Every error names its file, document (1-based) and field path. Documents of other kinds are skipped.
    """
    import json

    import yaml

    from kubegraft.validation import validate_documents

    failed = False
    valid: list[dict[str, Any]] = []
    for file in files:
        data = _read_manifest_file(file)
        if data is None:
            failed = True
            continue
        try:
            reports = validate_documents(data, file)
        except Exception as exc:  # a bug, not bad input: still one line and exit 1, never a traceback
            typer.echo(f"{file}: cannot validate ({type(exc).__name__}): {str(exc)[:200]}", err=True)
            failed = True
            continue
        for report in reports:
            if report.skipped:
                typer.echo(f"{report.label}: skipped (not a kubegraft.io TransferJob)", err=True)
            elif report.ok:
                typer.echo(f"{report.label}: valid", err=True)
                if report.result is not None:
                    valid.append(report.result.defaulted)
            else:
                failed = True
                for error in report.errors:
                    typer.echo(f"{report.label}: {error}", err=True)
    if output is OutputFormat.yaml and valid:
        typer.echo(yaml.safe_dump_all(valid, sort_keys=False), nl=False)
    elif output is OutputFormat.json and valid:
        typer.echo(
            json.dumps(
                valid[0] if len(valid) == 1 else {"apiVersion": "v1", "kind": "List", "items": valid},
                indent=2,
            )
        )
    if failed:
        raise typer.Exit(code=1)


def _train_process(spec_path: str, progress_port: int | None, verbose: int, log_format: LogFormat) -> None:
    """Shared body of `run` and `train`: the trainer's `main` in this process, its exit code ours."""
    import os

    from kubegraft import logs

    if log_format is LogFormat.json:
        # TensorFlow's C++ INFO lines are noise in a log collector (those it prints anyway become records).
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    logs.configure(log_format, capture_native=log_format is LogFormat.json)
    from kubegraft_trainer.run import main

    raise typer.Exit(code=main(spec_path, progress_port=progress_port, verbose=verbose))


@app.command()
def run(
    file: Annotated[str, typer.Argument(help="TransferJob manifest (YAML).")],
    local: Annotated[
        bool, typer.Option("--local", help="Train in this process (the only mode; `kubectl apply` submits).")
    ] = True,
    progress_port: Annotated[
        int | None,
        typer.Option(
            help="Port of /progress and /metrics; 0: any free port. Default $KUBEGRAFT_PROGRESS_PORT or 9090."
        ),
    ] = None,
    log_format: Annotated[
        LogFormat, typer.Option(envvar=ENV_LOG_FORMAT, case_sensitive=False, help=_LOG_FORMAT_HELP)
    ] = LogFormat.text,
) -> None:
    """Train a manifest's stages here (dataset and output local or s3://) and publish the model version."""
    import sys

    interactive = sys.stdout.isatty() and log_format is LogFormat.text
    _train_process(file, progress_port, verbose=1 if interactive else 0, log_format=log_format)


@app.command()
def train(
    progress_port: Annotated[
        int | None,
        typer.Option(help="Port of /progress and /metrics. Default $KUBEGRAFT_PROGRESS_PORT or 9090."),
    ] = None,
    log_format: Annotated[
        LogFormat, typer.Option(envvar=ENV_LOG_FORMAT, case_sensitive=False, help=_LOG_FORMAT_HELP)
    ] = LogFormat.text,
) -> None:
    """The training pod's entry point: train the TransferJob mounted at $KUBEGRAFT_SPEC."""
    from kubegraft_trainer.run import spec_path_from_env

    _train_process(spec_path_from_env(), progress_port, verbose=0, log_format=log_format)


@app.command()
def predict(
    model_uri: Annotated[
        str, typer.Argument(help="Model repository (output.uri) or a version folder; path or s3://.")
    ],
    images: Annotated[list[str], typer.Argument(help="Image files.")],
    *,
    version: Annotated[
        int | None, typer.Option(help="Version to use; default the latest complete one.")
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Classes to print per image.")] = 3,
    endpoint: Annotated[
        str | None, typer.Option(envvar="AWS_ENDPOINT_URL", help="S3 endpoint for s3:// URIs; default AWS.")
    ] = None,
    output: Annotated[
        PredictFormat,
        typer.Option(
            "--output",
            "-o",
            help="text: one line per image; json: the classes, each image's top classes and probabilities.",
        ),
    ] = PredictFormat.text,
) -> None:
    """Print the top classes of each image as the published model's serving signature predicts them."""
    from kubegraft.printing import prediction_document, render
    from kubegraft.spec import StorageSpec
    from kubegraft_trainer.errors import TrainerError
    from kubegraft_trainer.predict import load_published, predict_probabilities, top_k

    try:
        model = load_published(model_uri, StorageSpec.model_validate({"endpoint": endpoint}), version)
    except TrainerError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(code=int(exc.exit_code)) from None
    try:
        probabilities = predict_probabilities(model, images)
    except TrainerError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(code=int(exc.exit_code)) from None
    finally:
        model.close()
    if output is PredictFormat.json:
        rows = probabilities.tolist()
        document = prediction_document(model.uri, model.version, model.class_names, images, rows, top=top)
        typer.echo(render(document, "json"), nl=False)
        return
    typer.echo(f"# {model.uri} (version {model.version})", err=True)
    for image, row in zip(images, probabilities, strict=True):
        typer.echo(f"{image}: {top_k(row, model.class_names, top)}")


_NAMESPACE_HELP = "Namespace; default the kubeconfig context's namespace."
_KUBECONFIG_HELP = "Kubeconfig file; default $KUBECONFIG or ~/.kube/config (in a pod: its service account)."


def _transferjobs(kubeconfig: str | None, context: str | None) -> Any:
    """The cluster's TransferJobs through the kubeconfig; exit 1 with kubectl's kind of line if unusable."""
    from kubegraft.client import ClientError, TransferJobs

    try:
        return TransferJobs(kubeconfig, context)
    except ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None


@app.command()
def status(
    name: Annotated[str, typer.Argument(help="TransferJob name.")],
    *,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help=_NAMESPACE_HELP)] = None,
    output: Annotated[StatusFormat, typer.Option("--output", "-o", help="table, json or yaml.")] = (
        StatusFormat.table
    ),
    kubeconfig: Annotated[str | None, typer.Option(envvar="KUBECONFIG", help=_KUBECONFIG_HELP)] = None,
    context: Annotated[str | None, typer.Option(help="Kubeconfig context; default the current one.")] = None,
) -> None:
    """Show a TransferJob's run: phase, stage, epoch, progress, ETA, metrics, conditions, model URI."""
    from kubegraft.client import ClientError
    from kubegraft.printing import render, status_table, status_view

    jobs = _transferjobs(kubeconfig, context)
    try:
        view = status_view(jobs.get(name, namespace))
    except ClientError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=1) from None
    typer.echo(status_table(view) if output is StatusFormat.table else render(view, output.value), nl=False)


def _parse_timeout(text: str) -> float:
    """kubectl's durations: ``30s``, ``10m``, ``1h30m``, ``500ms``, or plain seconds."""
    import re

    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise typer.BadParameter(f"invalid duration {text!r} (e.g. 30s, 10m, 1h30m)")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


@app.command()
def wait(
    name: Annotated[str, typer.Argument(help="TransferJob name.")],
    *,
    for_: Annotated[
        str,
        typer.Option(
            "--for", help="condition=Type[=True|False], e.g. condition=Succeeded (as kubectl wait)."
        ),
    ],
    timeout: Annotated[str, typer.Option(help="How long to wait (30s, 10m, 1h); 0: check once.")] = "30s",
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help=_NAMESPACE_HELP)] = None,
    kubeconfig: Annotated[str | None, typer.Option(envvar="KUBECONFIG", help=_KUBECONFIG_HELP)] = None,
    context: Annotated[str | None, typer.Option(help="Kubeconfig context; default the current one.")] = None,
) -> None:
    """Wait for a condition of a TransferJob, like `kubectl wait`: exit 0 when met, 1 on timeout or error.

    Unlike kubectl, waiting for Succeeded stops at once (exit 1) when the run Failed, and the other way round.
    """
    from kubegraft.client import RESOURCE, ClientError, WaitFor

    try:
        wanted = WaitFor.parse(for_)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--for") from None
    seconds = _parse_timeout(timeout)
    jobs = _transferjobs(kubeconfig, context)
    try:
        outcome = jobs.wait(name, namespace, wanted, seconds)
    except ClientError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=1) from None
    if outcome.state == "met":
        typer.echo(f"{RESOURCE}/{name} condition met")
        return
    if outcome.state == "impossible":
        typer.echo(
            f"error: {RESOURCE}/{name} will not become {wanted.type}={wanted.status}: {outcome.message}",
            err=True,
        )
    else:
        typer.echo(f"error: timed out waiting for the condition on {RESOURCE}/{name}", err=True)
    raise typer.Exit(code=1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def operator(
    ctx: typer.Context,
    *,
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Namespace to watch (repeatable).")
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch all namespaces.")
    ] = False,
    metrics_port: Annotated[int, typer.Option(help="Port of /metrics and /readyz.")] = 8080,
    liveness: Annotated[
        str, typer.Option(help="kopf's liveness endpoint URL.")
    ] = "http://0.0.0.0:8081/healthz",
    peering: Annotated[str | None, typer.Option(help="Peering name for HA (mandatory when given).")] = None,
    standalone: Annotated[bool, typer.Option(help="No peering: the only replica.")] = False,
    priority: Annotated[
        int | None, typer.Option(help="Peering priority (highest replica is active).")
    ] = None,
    trainer_image: Annotated[str | None, typer.Option(help="Default trainer image.")] = None,
    allowed_image: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-image",
            help="Glob pattern spec.image must match (repeatable; sets KUBEGRAFT_ALLOWED_IMAGES).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            envvar=ENV_LOG_FORMAT,
            case_sensitive=False,
            help=f"{_LOG_FORMAT_HELP} Training pods get the same format.",
        ),
    ] = LogFormat.text,
) -> None:
    """Run the kubegraft operator (`kopf run -m kubegraft_operator.main`); replaces this process.

    Any other option is passed on to `kopf run` (e.g. `--debug`, `--quiet`, `--log-refkey k8s`); kopf
    refuses the ones it does not know.
    """
    import json
    import os
    import sys

    args = [sys.executable, "-m", "kopf", "run", "-m", "kubegraft_operator.main", f"--liveness={liveness}"]
    if all_namespaces or not namespace:
        args.append("--all-namespaces")
    for ns in namespace or []:
        args += ["--namespace", ns]
    if standalone:
        args.append("--standalone")
    elif peering:
        args += ["--peering", peering]
    if priority is not None:
        args += ["--priority", str(priority)]
    if verbose:
        args.append("--verbose")
    args.append(f"--log-format={_KOPF_LOG_FORMATS[log_format]}")
    args += ctx.args
    env = dict(os.environ, KUBEGRAFT_METRICS_PORT=str(metrics_port))
    env[ENV_LOG_FORMAT] = log_format.value
    if trainer_image:
        env["KUBEGRAFT_TRAINER_IMAGE"] = trainer_image
    if allowed_image:
        env["KUBEGRAFT_ALLOWED_IMAGES"] = json.dumps(allowed_image)
    os.execve(sys.executable, args, env)  # replaces the CLI with kopf (container entrypoint)


if __name__ == "__main__":
    app()
