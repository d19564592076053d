"""Read Kubernetes manifests from YAML the way kubectl does.

PyYAML follows YAML 1.1, where `1e-5` (no dot) is a string; kubectl (sigs.k8s.io/yaml, YAML 1.2 numbers)
sends it as a number. One loader for the CLI and the trainer keeps `learningRate: 1e-5` a float everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

_YAML12_FLOAT = re.compile(
    r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)


class ManifestLoader(yaml.SafeLoader):
    """A safe loader whose floats follow YAML 1.2's core schema (`1e-5`, `1E3`, `.5`)."""


ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ManifestLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))


def load_manifest(text: str) -> Any:
    """One YAML document (a manifest or a bare spec), numbers read as kubectl reads them."""
    return yaml.load(text, Loader=ManifestLoader)  # a SafeLoader subclass


def load_manifests(text: str) -> Iterator[Any]:
    """Every document of a YAML stream, numbers read as kubectl reads them."""
    return yaml.load_all(text, Loader=ManifestLoader)  # a SafeLoader subclass
