"""The `kubegraft` command line: CRD, validation, local training, prediction and the operator.

Each command is a thin shell over the module that does the work; heavy imports (TensorFlow, kopf) happen inside
the command so `kubegraft crd` and `kubegraft validate` stay fast and dependency-light.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="kubegraft",
    help="Transfer learning on Kubernetes: TransferJob tooling, local training and the operator.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def crd() -> None:
    """Print the TransferJob CustomResourceDefinition (YAML), generated from the pydantic models."""
    from kubegraft.crd import render_crd_yaml

    typer.echo(render_crd_yaml(), nl=False)


if __name__ == "__main__":
    app()
