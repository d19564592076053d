"""The manifests the API tests share: the invalid corpus, the examples and valid variants of a minimal job."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
INVALID_DIR = Path(__file__).resolve().parent / "invalid"
EXAMPLES_DIR = REPO / "manifests" / "examples"
CRD_FILES = (
    REPO / "manifests" / "crd" / "kubegraft.io_transferjobs.yaml",
    REPO / "charts" / "kubegraft" / "crds" / "kubegraft.io_transferjobs.yaml",
)

MINIMAL: dict[str, Any] = {
    "apiVersion": "kubegraft.io/v1alpha1",
    "kind": "TransferJob",
    "metadata": {"name": "flowers"},
    "spec": {"dataset": {"uri": "s3://datasets/flowers/"}, "output": {"uri": "s3://models/flowers/"}},
}


@dataclass(frozen=True)
class InvalidCase:
    """One file of the invalid corpus and the field path its first line says must be named.

    `client_only` (a `# client-only: <why>` header line) marks what a CRD schema cannot express (map keys):
    `kubegraft validate` refuses it through the models, the CRD alone cannot.
    """

    path: Path
    expect: str
    client_only: bool = False

    @property
    def manifest(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        return loaded


def invalid_cases() -> list[InvalidCase]:
    """Every tests/unit/api/invalid/*.yaml with its `# expect: <path>` header."""
    cases = []
    for path in sorted(INVALID_DIR.glob("*.yaml")):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        if not first.startswith("# expect: "):
            raise ValueError(f"{path.name}: first line must be '# expect: <field path>'")
        header = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
        client_only = any(line.startswith("# client-only: ") for line in header)
        cases.append(InvalidCase(path, first.removeprefix("# expect: ").strip(), client_only))
    return cases


def example_files() -> list[Path]:
    """The documented example manifests."""
    return sorted(EXAMPLES_DIR.glob("*.yaml"))


def names(path: str, errors: list[Any]) -> bool:
    """Whether some error is at `path` or inside it (a list item or a child field)."""
    return any(e.path == path or e.path.startswith((f"{path}[", f"{path}.")) for e in errors)


def _variant(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    manifest = copy.deepcopy(MINIMAL)
    change(manifest)
    return manifest


def _spec(**fields: Any) -> Callable[[dict[str, Any]], object]:
    return lambda m: m["spec"].update(fields)


def _dataset(**fields: Any) -> Callable[[dict[str, Any]], object]:
    return lambda m: m["spec"]["dataset"].update(fields)


# Valid manifests near the edges of each rule: both validation paths must accept every one.
VALID_VARIANTS: dict[str, dict[str, Any]] = {
    "minimal": copy.deepcopy(MINIMAL),
    "generate-name": _variant(lambda m: m.update(metadata={"generateName": "flowers-"})),
    "empty-namespace": _variant(lambda m: m["metadata"].update(namespace="")),
    "label-key-with-253-char-prefix": _variant(
        lambda m: m["metadata"].update(labels={f"{'d' * 253}/team": "a"})
    ),
    "name-52-chars": _variant(lambda m: m["metadata"].update(name="a" * 52)),
    "namespace-labels-annotations": _variant(
        lambda m: m["metadata"].update(namespace="ml", labels={"team": "vision"}, annotations={"a": "b"})
    ),
    "nulls-are-pruned": _variant(_spec(stages=None, storage={"endpoint": None, "secretRef": None})),
    "trainable-all": _variant(_spec(stages=[{"name": "all", "trainable": "all"}])),
    "momentum-with-sgd": _variant(_spec(stages=[{"name": "a", "optimizer": "sgd", "momentum": 0.9}])),
    "momentum-with-rmsprop": _variant(_spec(stages=[{"name": "a", "optimizer": "rmsprop", "momentum": 0}])),
    "weight-decay-with-adamw": _variant(
        _spec(stages=[{"name": "a", "optimizer": "adamw", "weightDecay": 0.01}])
    ),
    "integer-learning-rate": _variant(_spec(stages=[{"name": "a", "learningRate": 1}])),
    "integer-splits": _variant(_dataset(testSplit=0)),
    "splits-just-below-one": _variant(_dataset(validationSplit=0.5, testSplit=0.49)),
    "manifest-layout": _variant(_dataset(layout="manifest", manifest="labels.csv")),
    "xception-at-71": _variant(
        lambda m: (
            m["spec"].update(model={"backbone": "Xception"}),
            m["spec"]["dataset"].update(imageSize=71),
        )
    ),
    "inception-at-75": _variant(
        lambda m: (
            m["spec"].update(model={"backbone": "InceptionV3"}),
            m["spec"]["dataset"].update(imageSize=75),
        )
    ),
    "linear-without-stages": _variant(_spec(classifier="linear")),
    "publish-gate": _variant(
        lambda m: m["spec"]["output"].update(publishPolicy="ifBetter", minTestAccuracy=0.8)
    ),
    "publish-gate-minimum-bounds": _variant(lambda m: m["spec"]["output"].update(minTestAccuracy=1)),
    "no-test-split-without-gate": _variant(
        lambda m: (
            m["spec"]["dataset"].update(testSplit=0),
            m["spec"]["output"].update(publishPolicy="always"),
        )
    ),
    "strategy-auto-with-budget": _variant(_spec(strategy="auto", budget={"minutes": 5, "epochs": 40})),
    "budget-without-strategy": _variant(_spec(budget={"minutes": 5})),
    "strategy-stages-without-stages": _variant(_spec(strategy="stages")),
    "strategy-stages-with-stages": _variant(_spec(strategy="stages", stages=[{"name": "a"}])),
    "strategy-stages-with-linear": _variant(_spec(strategy="stages", classifier="linear")),
    "linear-then-finetune": _variant(_spec(classifier="linear", stages=[{"name": "ft", "trainable": 20}])),
    "workers-with-stages": _variant(_spec(workers=2, stages=[{"name": "a"}])),
    "workers-with-strategy-stages": _variant(_spec(workers=64, strategy="stages")),
    "workers-with-linear": _variant(_spec(workers=3, classifier="linear")),
    "cpu-as-integer": _variant(_spec(resources={"cpu": 4, "memory": 17179869184})),
    "cpu-millicores": _variant(_spec(resources={"cpu": "500m", "memory": "512Mi", "gpus": 0})),
    "file-and-plain-paths": _variant(
        lambda m: m["spec"].update(
            dataset={"uri": "file:///data/flowers"}, output={"uri": "out/models"}, model={"weights": "none"}
        )
    ),
    "weights-from-s3": _variant(_spec(model={"weights": "s3://models/backbones/resnet50-notop.keras"})),
    "classes-subset": _variant(_dataset(classes=["tulips", "roses", "daisy"])),
    "head-without-hidden-layers": _variant(_spec(model={"head": {"hidden": []}})),
    "scheduling": _variant(
        _spec(
            scheduling={
                "nodeSelector": {"pool": "gpu"},
                "tolerations": [
                    {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {"operator": "Exists"},
                    {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "tolerationSeconds": 60},
                ],
                "priorityClassName": "batch-high",
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]},
                                {
                                    "matchFields": [
                                        {"key": "metadata.name", "operator": "In", "values": ["n1"]}
                                    ]
                                },
                            ]
                        },
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 10,
                                "preference": {
                                    "matchExpressions": [
                                        {"key": "example.com/cores", "operator": "Gt", "values": ["16"]},
                                        {"key": "spot", "operator": "DoesNotExist"},
                                    ]
                                },
                            }
                        ],
                    },
                    "podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 100,
                                "podAffinityTerm": {
                                    "labelSelector": {
                                        "matchLabels": {"app.kubernetes.io/name": "trainer"},
                                        "matchExpressions": [{"key": "tier", "operator": "Exists"}],
                                    },
                                    "namespaces": ["ml"],
                                    "topologyKey": "kubernetes.io/hostname",
                                },
                            }
                        ]
                    },
                },
                "queueName": "team-a",
            }
        )
    ),
    "storage-endpoint-and-secret": _variant(
        _spec(storage={"endpoint": "http://minio.storage:9000", "secretRef": {"name": "s3"}, "region": "x"})
    ),
    "pod-options": _variant(
        _spec(
            pod={
                "serviceAccountName": "ml-trainer",
                "imagePullSecrets": ["registry", "mirror"],
                "labels": {
                    "azure.workload.identity/use": "true",
                    "team": "",
                    "app.kubernetes.io/version": "1",
                },
                "annotations": {"sidecar.istio.io/inject": "false", "example.com/note": "any text at all"},
                "shmSize": "2Gi",
            }
        )
    ),
    "pod-shm-size-integer": _variant(_spec(pod={"shmSize": 1073741824})),
    "status-written-by-operator": _variant(
        lambda m: m.update(
            status={
                "phase": "Running",
                "stage": "head",
                "epoch": 3,
                "metrics": {"val_accuracy": 0.91, "loss": 1},
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "Training",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ],
            }
        )
    ),
}


HOSTILE_DIR = Path(__file__).resolve().parent / "hostile"
# The document the generated hostile cases start from (block YAML, so lines can be appended under spec).
HOSTILE_HEAD = yaml.safe_dump(MINIMAL, sort_keys=False)


@dataclass(frozen=True)
class HostileCase:
    """A file no parser of manifests should trust: its bytes and a substring the report must contain."""

    name: str
    expect: str
    data: bytes


def _spec_lines(*lines: str) -> bytes:
    return (HOSTILE_HEAD + "".join(f"  {line}\n" for line in lines)).encode()


def _classes(count: int) -> bytes:
    manifest = copy.deepcopy(MINIMAL)
    manifest["spec"]["dataset"]["classes"] = [f"c{i}" for i in range(count)]
    return yaml.safe_dump(manifest, sort_keys=False).encode()


def _generated() -> list[HostileCase]:
    """Hostile cases too big (or too binary) to keep as files: built on the fly, the same every time."""
    return [
        HostileCase("over-the-size-limit", "larger than", _spec_lines("image: " + "a" * 1_600_000)),
        HostileCase("string-of-1-4-mib", "spec.image", _spec_lines("image: " + "a" * 1_400_000)),
        HostileCase(
            "label-value-of-1-mib",
            "metadata.labels",
            HOSTILE_HEAD.replace(
                "  name: flowers\n", "  name: flowers\n  labels:\n    team: " + "v" * 2**20 + "\n"
            ).encode(),
        ),
        HostileCase(
            "annotations-over-256-kib",
            "metadata.annotations",
            HOSTILE_HEAD.replace(
                "  name: flowers\n", "  name: flowers\n  annotations:\n    note: " + "n" * 300_000 + "\n"
            ).encode(),
        ),
        HostileCase(
            "too-many-values",
            "more than 30000 values",
            _classes(35_000),
        ),
        HostileCase(
            "classes-over-10000",
            "spec.dataset.classes",
            _classes(10_001),
        ),
        HostileCase(
            "stages-2000",
            "spec.stages",
            _spec_lines("stages:", *(f"- {{name: s{i}}}" for i in range(2_000))),
        ),
        HostileCase(
            "too-many-documents", "more than 100 documents", ("---\n".join([HOSTILE_HEAD] * 101)).encode()
        ),
        HostileCase("utf-16-file", "not valid UTF-8", HOSTILE_HEAD.encode("utf-16")),
        HostileCase("unknown-keys-3000", "more errors", _spec_lines(*(f"k{i}: 1" for i in range(3_000)))),
        HostileCase("key-of-1-mib", "unknown field", _spec_lines("? " + "k" * 2**20, ": 1")),
        HostileCase(
            "nesting-60-deep",
            "spec.scheduling.affinity",
            _spec_lines("scheduling:", "  affinity: " + "{a: " * 60 + "1" + "}" * 60),
        ),
    ]


def hostile_cases() -> list[HostileCase]:
    """Every tests/unit/api/hostile/*.yaml (first line `# expect: <text>`) and the generated cases."""
    cases = []
    for path in sorted(HOSTILE_DIR.glob("*.yaml")):
        data = path.read_bytes()
        first = data.split(b"\n", 1)[0].decode("ascii")
        if not first.startswith("# expect: "):
            raise ValueError(f"{path.name}: first line must be '# expect: <text>'")
        cases.append(HostileCase(path.stem, first.removeprefix("# expect: ").strip(), data))
    return cases + _generated()
