"""The TransferJob contract: `kubegraft.io/v1alpha1`, the single source of truth for the spec.

Everything else derives from these models: the CRD's OpenAPI schema (`kubegraft.crd`), manifest validation
(`kubegraft.validation`), the operator's Job rendering and the trainer's configuration. Field descriptions
become `kubectl explain` text; defaults and bounds become schema defaults and bounds; `__cel_rules__` become
`x-kubernetes-validations`.

Manifests use camelCase (the aliases); Python code uses snake_case attributes. Validation accepts aliases
only, so a snake_case key in a manifest is an unknown field, exactly as the API server sees it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubegraft.base import ApiModel, unique
from kubegraft.kube import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_MAX,
    DNS_SUBDOMAIN_PATTERN,
    check_annotation_keys,
    check_label_keys,
)
from kubegraft.rules import CelRule, StringRule, string_rules
from kubegraft.scheduling import LabelValue, SchedulingSpec

GROUP = "kubegraft.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TransferJob"
PLURAL = "transferjobs"
SINGULAR = "transferjob"
SHORT_NAMES = ("tj",)
# Not "all": `kubectl get all` lists every resource of that category and fails (Forbidden, exit 1) for anyone
# without list on one of them; `all` is for built-in workloads (sig-cli kubectl conventions). `kubectl get
# kubegraft` (or `ml`) lists TransferJobs instead.
CATEGORIES = ("kubegraft", "ml")

# A TransferJob's name is the stem of its Jobs ("<name>-<run>"), ConfigMaps and label values (<= 63 chars).
MAX_NAME_LENGTH = 52

# Characters of an s3:// key or file:// path: no whitespace, control characters, query or fragment.
_URI_CHAR = r"[^\s?#\x00-\x1f\x7f]"
_S3_URI = rf"s3://[a-z0-9][a-z0-9.\-]{{1,61}}[a-z0-9](/{_URI_CHAR}*)?"
_FILE_URI = rf"file://{_URI_CHAR}+"
_PLAIN_PATH = r"[^\s:\x00-\x1f\x7f]+"
STORAGE_URI_PATTERN = rf"^({_S3_URI}|{_FILE_URI}|{_PLAIN_PATH})$"
WEIGHTS_PATTERN = rf"^(imagenet|none|{_S3_URI}|{_FILE_URI}|{_PLAIN_PATH})$"
# http(s)://host[:port][/path]: no credentials (@), query or fragment, no whitespace or control characters.
ENDPOINT_PATTERN = r"^https?://[^\s/?#@\x00-\x1f\x7f]+(/[^\s?#\x00-\x1f\x7f]*)?$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
# A relative path without '..' segments: it cannot leave its base (the characters: no whitespace, ':', '?',
# '#' or control characters). A segment is '.', or starts with a non-dot, one dot and a non-dot, or two dots
# and anything more: everything except '..'.
_SEGMENT_CHAR = r"[^/\s:\x00-\x1f\x7f?#]"
_NON_DOT = r"[^./\s:\x00-\x1f\x7f?#]"
_SAFE_SEGMENT = rf"(\.|\.?{_NON_DOT}{_SEGMENT_CHAR}*|\.\.{_SEGMENT_CHAR}+)"
RELATIVE_PATH_PATTERN = rf"^{_SAFE_SEGMENT}(/{_SAFE_SEGMENT})*$"
# A class name is a folder name: not '.', '..', no '/', no control characters, no leading space.
CLASS_NAME_PATTERN = r"^\.{0,2}[^./\s\x00-\x1f\x7f][^/\x00-\x1f\x7f]*$"
REGION_PATTERN = r"^[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?$"
IMAGE_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._/:@-]*)?$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"  # a Secret data key
MAX_INT32 = 2**31 - 1

_S3_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
# S3's bucket rules beyond the pattern (docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html)
# and the key rules that keep a URI inside its bucket and prefix.
S3_URI_RULES = (
    StringRule(
        rf"^s3://{_S3_LABEL}(\.{_S3_LABEL})*(/|$)",
        "the bucket name must be S3-valid: lowercase letters, digits and '-', with single dots between "
        "parts that start and end with a letter or digit (no '..')",
        prefix="s3://",
    ),
    StringRule(r"^s3://[^/]{3,63}(/|$)", "the bucket name must be 3 to 63 characters", prefix="s3://"),
    StringRule(
        r"^s3://[0-9]+(\.[0-9]+){3}(/|$)",
        "the bucket name must not look like an IP address",
        match=False,
        prefix="s3://",
    ),
    StringRule(
        r"^s3://(xn--|sthree-)|^s3://[^/]*(-s3alias|--ol-s3|--x-s3)(/|$)",
        "the bucket name uses a prefix or suffix that S3 reserves",
        match=False,
        prefix="s3://",
    ),
    StringRule(
        r"^s3://[^/]*/(.*/)?\.\.?(/|$)",
        "the key must not contain '.' or '..' segments",
        match=False,
        prefix="s3://",
    ),
    StringRule(
        r"^s3://[^/]*/(.*/)?/", "the key must not contain empty segments ('//')", match=False, prefix="s3://"
    ),
    StringRule(r"[?#]", "an s3:// URI has no query or fragment ('?', '#')", match=False, prefix="s3://"),
)
_S3_EXTRA, _check_s3_uri = string_rules(*S3_URI_RULES)
# Addresses a pod must never send credentials to: link-local (cloud metadata services), by name or number.
ENDPOINT_RULES = (
    StringRule(
        r"^https?://[^/]*@",
        "must not hold credentials (user:password@): name them in storage.secretRef",
        match=False,
    ),
    StringRule(r"[?#]", "must not have a query or fragment ('?', '#')", match=False),
    StringRule(
        # link-local IPv4 | IPv6 link-local, AWS's metadata and IPv4-mapped link-local | metadata names |
        # IPv4 in forms that resolvers read as other addresses: 1 to 3 numbers, octal or hex parts
        r"(?i)^https?://(169\.254\.[0-9.]*|\[(fe[89ab][0-9a-f]:[^\]]*|fd00:ec2::254|::ffff:(169\.254\.|a9fe:)"
        r"[^\]]*)\]|metadata|metadata\.google\.internal\.?|[0-9]+(\.[0-9]+){0,2}|([0-9a-fx]+\.){0,3}0[0-9x]"
        r"[0-9a-fx.]*)(:[0-9]*)?(/|$)",
        "must not be a link-local or cloud metadata address (169.254.0.0/16, fe80::/10, fd00:ec2::254, "
        "metadata.google.internal) nor an IPv4 address written as fewer than four numbers or in octal or hex",
        match=False,
    ),
)
_ENDPOINT_EXTRA, _check_endpoint = string_rules(*ENDPOINT_RULES)
StorageUri = Annotated[
    str,
    Field(min_length=1, max_length=1024, pattern=STORAGE_URI_PATTERN, json_schema_extra=_S3_EXTRA),
    AfterValidator(_check_s3_uri),
]

Backbone = Literal[
    "Xception",
    "VGG16",
    "VGG19",
    "ResNet50",
    "ResNet101",
    "ResNet152",
    "ResNet50V2",
    "ResNet101V2",
    "ResNet152V2",
    "InceptionV3",
    "InceptionResNetV2",
    "MobileNet",
    "MobileNetV2",
    "MobileNetV3Small",
    "MobileNetV3Large",
    "DenseNet121",
    "DenseNet169",
    "DenseNet201",
    "EfficientNetB0",
    "EfficientNetB1",
    "EfficientNetB2",
    "EfficientNetB3",
    "EfficientNetB4",
    "EfficientNetB5",
    "EfficientNetB6",
    "EfficientNetB7",
    "EfficientNetV2B0",
    "EfficientNetV2B1",
    "EfficientNetV2B2",
    "EfficientNetV2B3",
    "EfficientNetV2S",
    "EfficientNetV2M",
    "EfficientNetV2L",
    "ConvNeXtTiny",
    "ConvNeXtSmall",
    "ConvNeXtBase",
    "ConvNeXtLarge",
    "ConvNeXtXLarge",
]
# keras.applications refuses inputs smaller than these; every other backbone accepts 32 px.
BACKBONE_MIN_IMAGE_SIZE: dict[str, int] = {"Xception": 71, "InceptionV3": 75, "InceptionResNetV2": 75}
MIN_IMAGE_SIZE = 32
# Worker pods of one run (spec.workers): a DNS-friendly ceiling, far above what one run here needs.
MAX_WORKERS = 64
MAX_IMAGE_SIZE = 1024

Optimizer = Literal["adam", "adamw", "sgd", "rmsprop"]
OutputFormat = Literal["savedmodel", "keras", "tflite"]
PublishPolicy = Literal["always", "ifBetter"]
Monitor = Literal["val_accuracy", "val_loss", "accuracy", "loss"]


class EarlyStopping(ApiModel):
    """Stop a stage when its monitored metric stops improving, and keep the best epoch's weights."""

    enabled: bool = Field(True, description="Stop early and restore the best epoch's weights. Default true.")
    monitor: Monitor = Field("val_accuracy", description="Metric to watch. Default val_accuracy.")
    patience: int = Field(
        3, ge=0, le=1000, description="Epochs without improvement before stopping. Default 3."
    )
    min_delta: float = Field(
        0.0, ge=0, le=1, description="Smallest change that counts as an improvement. Default 0."
    )


def _trainable_ok(value: int | str) -> bool:
    return value == "all" or (isinstance(value, int) and value >= 0)


class Stage(ApiModel):
    """One training stage: which backbone layers learn, and how."""

    __cel_rules__ = (
        CelRule(
            rule="type(self.trainable) == int ? self.trainable >= 0 : self.trainable == 'all'",
            message="trainable must be a non-negative number of layers or the string 'all'",
            field_path=".trainable",
            check=lambda s: _trainable_ok(s.trainable),
        ),
        CelRule(
            rule="!has(self.momentum) || self.optimizer == 'sgd' || self.optimizer == 'rmsprop'",
            message="momentum applies only to the sgd and rmsprop optimizers",
            field_path=".momentum",
            check=lambda s: s.momentum is None or s.optimizer in ("sgd", "rmsprop"),
        ),
        CelRule(
            rule="!has(self.weightDecay) || self.optimizer == 'adamw'",
            message="weightDecay applies only to the adamw optimizer",
            field_path=".weightDecay",
            check=lambda s: s.weight_decay is None or s.optimizer == "adamw",
        ),
    )

    name: str = Field(
        ...,
        min_length=1,
        max_length=40,
        pattern=DNS_LABEL_PATTERN,
        description=(
            "Stage name, unique within the job (lowercase letters, digits and '-'), e.g. head, finetune."
        ),
    )
    trainable: Annotated[
        int | Annotated[str, Field(max_length=8)],
        Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
    ] = Field(
        0,
        description=(
            "Backbone layers trained in this stage, counted from the top: 0 trains only the head "
            "(backbone frozen), N unfreezes the last N layers, 'all' the whole backbone. "
            "BatchNormalization layers stay in inference mode. Default 0."
        ),
    )
    epochs: int = Field(10, ge=1, le=1000, description="Maximum epochs for this stage. Default 10.")
    batch_size: int = Field(
        32, ge=1, le=4096, description="Images per optimizer step, split across the replicas. Default 32."
    )
    optimizer: Optimizer = Field("adam", description="Optimizer: adam, adamw, sgd or rmsprop. Default adam.")
    learning_rate: float = Field(
        1.0e-3, gt=0, le=10, description="Learning rate; use a small one (1e-4 to 1e-5) when fine-tuning."
    )
    momentum: float | None = Field(
        None, ge=0, lt=1, description="Momentum for sgd (default 0.9) and rmsprop (default 0.0) only."
    )
    weight_decay: float | None = Field(
        None, ge=0, le=1, description="Decoupled weight decay for adamw only (default 0.004)."
    )
    early_stopping: EarlyStopping = Field(
        default_factory=EarlyStopping, description="Early stopping with best-weights restore, per stage."
    )

    @property
    def trains_backbone(self) -> bool:
        """Whether any backbone layer is trainable in this stage."""
        return self.trainable == "all" or (isinstance(self.trainable, int) and self.trainable > 0)


class Head(ApiModel):
    """The new top that replaces the backbone's classifier: Dense layers, then a softmax over the classes."""

    hidden: list[Annotated[int, Field(ge=1, le=8192)]] = Field(
        default_factory=lambda: [256],
        max_length=8,
        description="Units of each hidden Dense (ReLU) layer; [] puts the softmax right on the features.",
    )
    dropout: float = Field(0.3, ge=0, lt=1, description="Dropout rate before each Dense layer. Default 0.3.")
    batch_norm: bool = Field(False, description="BatchNormalization after each hidden layer. Default false.")


class ModelSpec(ApiModel):
    """The network: a pretrained backbone from keras.applications with a new head."""

    backbone: Backbone = Field(
        "ResNet50",
        description=(
            "keras.applications backbone; it also supplies preprocess_input. Default ResNet50. Minimum image "
            "size 32 px, 71 for Xception, 75 for InceptionV3 and InceptionResNetV2."
        ),
    )
    weights: Annotated[str, AfterValidator(_check_s3_uri)] = Field(
        "imagenet",
        max_length=1024,
        pattern=WEIGHTS_PATTERN,
        json_schema_extra=_S3_EXTRA,
        description=(
            "imagenet (downloaded by Keras), none (train from scratch), or the URI (s3://, file:// or a "
            "path) of a saved backbone without its top (.keras) or of a weights file for the named backbone."
        ),
    )
    head: Head = Field(default_factory=Head, description="The classification head put on the backbone.")


class DatasetSpec(ApiModel):
    """Where the labelled images are and how they are split."""

    __cel_rules__ = (
        CelRule(
            rule="self.validationSplit + self.testSplit < 1.0",
            message="validationSplit + testSplit must be less than 1 so that training images remain",
            field_path=".testSplit",
            check=lambda d: d.validation_split + d.test_split < 1.0,
        ),
        CelRule(
            rule="self.layout == 'manifest' ? has(self.manifest) : !has(self.manifest)",
            message="manifest is required with layout manifest and not allowed with layout folders",
            field_path=".manifest",
            check=lambda d: (d.manifest is not None) == (d.layout == "manifest"),
        ),
    )

    uri: StorageUri = Field(
        ..., description="s3://bucket/prefix/ in clusters; file:// or a plain path for local runs."
    )
    layout: Literal["folders", "manifest"] = Field(
        "folders",
        description=(
            "folders: <uri>/<class>/<image>. manifest: a CSV of path,label[,xmin,ymin,xmax,ymax] whose "
            "optional boxes crop each image. Default folders."
        ),
    )
    manifest: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        pattern=RELATIVE_PATH_PATTERN,
        description=(
            "With layout manifest: the CSV's path relative to uri, e.g. labels.csv (no '.' or '..' segments)."
        ),
    )
    classes: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=253, pattern=CLASS_NAME_PATTERN)]] | None,
        AfterValidator(unique),
    ] = Field(
        None,
        min_length=2,
        max_length=10000,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Subset and order of the classes to learn; default: every class found, sorted by name.",
    )
    validation_split: float = Field(
        0.15,
        gt=0,
        lt=1,
        description="Fraction held out for validation (stratified, from seed). Default 0.15.",
    )
    test_split: float = Field(
        0.15,
        ge=0,
        lt=1,
        description="Fraction held out for the final test (stratified, from seed). Default 0.15.",
    )
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Seed of the split and of training. Default 42.")
    image_size: int = Field(
        224,
        ge=MIN_IMAGE_SIZE,
        le=MAX_IMAGE_SIZE,
        description=(
            "Square side in pixels images are resized to. Default 224. See model.backbone for minimums."
        ),
    )


class Augmentation(ApiModel):
    """Random image transforms applied during training only (layers inside the model, off at inference)."""

    horizontal_flip: bool = Field(False, description="Random left-right flips. Default false.")
    vertical_flip: bool = Field(False, description="Random up-down flips. Default false.")
    rotation: float = Field(0.0, ge=0, le=180, description="Maximum rotation in degrees. Default 0.")
    zoom: float = Field(0.0, ge=0, lt=1, description="Maximum zoom in or out, as a fraction. Default 0.")
    shear: float = Field(0.0, ge=0, lt=1, description="Maximum shear, as a fraction. Default 0.")
    brightness: float = Field(
        0.0, ge=0, le=1, description="Maximum brightness change, as a fraction. Default 0."
    )
    contrast: float = Field(0.0, ge=0, le=1, description="Maximum contrast change, as a fraction. Default 0.")

    @property
    def enabled(self) -> bool:
        """Whether any transform is on."""
        return any(
            (self.horizontal_flip, self.vertical_flip, self.rotation, self.zoom, self.shear, self.brightness)
        ) or bool(self.contrast)


class OutputSpec(ApiModel):
    """Where the trained model is published, as numbered versions <uri>/<n>/, and when a run may publish."""

    uri: StorageUri = Field(
        ...,
        description=(
            "Model repository, the base path to give TF Serving and KServe (storageUri): it holds only the "
            "versions <uri>/<n>/; checkpoints and staging go to <parent>/.kubegraft/<name>/ beside it."
        ),
    )
    formats: Annotated[list[OutputFormat], AfterValidator(unique)] = Field(
        default_factory=lambda: list[OutputFormat](["savedmodel"]),
        min_length=1,
        max_length=3,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Formats to publish: savedmodel (always served), keras, tflite. Default [savedmodel].",
    )
    publish_policy: PublishPolicy = Field(
        "always",
        description=(
            "always: every successful run publishes a version. ifBetter: only when the new model's test "
            "accuracy beats the latest published version's, both scored on this run's test split; otherwise "
            "the run succeeds without a new version (condition Published=False, reason NotBetter). "
            "Default always."
        ),
    )
    min_test_accuracy: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "Publish only when the test accuracy is at least this (0..1); below it the run succeeds without "
            "a new version (condition Published=False, reason BelowMinimum). Default: no minimum."
        ),
    )
    tensorboard: bool = Field(
        True,
        description=(
            "Write TensorBoard event files as the run goes (per epoch of every stage and search candidate: "
            "loss, accuracy, val_loss, val_accuracy, learning_rate, images_per_second; then the test "
            "metrics) to <parent>/.kubegraft/<name>/tensorboard/<run id>/, beside the model repository, "
            "never in it. Default true."
        ),
    )


class SecretRef(ApiModel):
    """A Secret in the TransferJob's own namespace holding S3 credentials (never copied anywhere)."""

    name: str = Field(
        ..., min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Secret name."
    )
    access_key_id_key: str = Field(
        "AWS_ACCESS_KEY_ID",
        min_length=1,
        max_length=253,
        pattern=SECRET_KEY_PATTERN,
        description="Key holding the access key id.",
    )
    secret_access_key_key: str = Field(
        "AWS_SECRET_ACCESS_KEY",
        min_length=1,
        max_length=253,
        pattern=SECRET_KEY_PATTERN,
        description="Key holding the secret key.",
    )


class StorageSpec(ApiModel):
    """How to reach object storage. Omit everything for AWS with the pod's cloud identity."""

    endpoint: (
        Annotated[str, Field(max_length=1024, pattern=ENDPOINT_PATTERN), AfterValidator(_check_endpoint)]
        | None
    ) = Field(
        None,
        json_schema_extra=_ENDPOINT_EXTRA,
        description=(
            "S3 endpoint URL, http(s)://host[:port][/path]; omit for AWS. No credentials, query or "
            "link-local (cloud metadata) address."
        ),
    )
    region: str | None = Field(
        None, min_length=1, max_length=64, pattern=REGION_PATTERN, description="Region, e.g. us-east-1."
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="S3 addressing style; auto uses path style with a custom endpoint. Default auto."
    )
    secret_ref: SecretRef | None = Field(
        None,
        description=(
            "Secret with credentials; omit to use the pod's cloud identity (IRSA, workload identity)."
        ),
    )


class ResourcesSpec(ApiModel):
    """Compute for the training pod."""

    gpus: int = Field(1, ge=0, le=16, description="GPUs (nvidia.com/gpu by default). Default 1.")
    cpu: Annotated[
        int | Annotated[str, Field(max_length=64)],
        Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
    ] = Field("4", description="CPU request and limit (a Kubernetes quantity). Default 4.")
    memory: Annotated[
        int | Annotated[str, Field(max_length=64)],
        Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
    ] = Field("16Gi", description="Memory request and limit (a Kubernetes quantity). Default 16Gi.")

    __cel_rules__ = (
        CelRule(
            rule="type(self.cpu) == int ? self.cpu > 0 : self.cpu.matches('" + QUANTITY_PATTERN + "')",
            message="cpu must be a Kubernetes quantity such as 4, 500m or 2.5",
            field_path=".cpu",
            check=lambda r: _quantity_ok(r.cpu),
        ),
        CelRule(
            rule="type(self.memory) == int ? self.memory > 0 : self.memory.matches('"
            + QUANTITY_PATTERN
            + "')",
            message="memory must be a Kubernetes quantity such as 16Gi or 512Mi",
            field_path=".memory",
            check=lambda r: _quantity_ok(r.memory),
        ),
    )


def _quantity_ok(value: int | str) -> bool:
    if isinstance(value, int):
        return value > 0
    return re.fullmatch(QUANTITY_PATTERN.strip("^$"), value) is not None


# Labels and annotations the operator puts on the training pod itself (selection, Kueue, kubectl): a
# TransferJob's `pod.labels` / `pod.annotations` may not set them (rendering lets the operator's win anyway).
OPERATOR_LABEL_KEYS = frozenset(
    {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
        "app.kubernetes.io/managed-by",
        "app.kubernetes.io/part-of",
        "kueue.x-k8s.io/queue-name",
    }
)
OPERATOR_KEY_PREFIX = "kubegraft.io/"
MAX_POD_LABELS = 32
MAX_POD_ANNOTATIONS = 32
MAX_ANNOTATION_VALUE = 4096


def _reserved_label(key: str) -> bool:
    return key.startswith(OPERATOR_KEY_PREFIX) or key in OPERATOR_LABEL_KEYS


_RESERVED_LABELS_CEL = ", ".join(f"'{key}'" for key in sorted(OPERATOR_LABEL_KEYS))


class PodOptions(ApiModel):
    """The training pod's identity, pull secrets, labels, annotations and shared memory."""

    # Reserved keys are checked in CEL too (cheap: startsWith and a constant list); the full key syntax is
    # pydantic's (a regex over map keys of unknown length is beyond the API server's CEL cost budget), and
    # the API server checks it again when the operator creates the Job.
    __cel_rules__ = (
        CelRule(
            rule=(
                f"self.labels.all(k, !k.startsWith('{OPERATOR_KEY_PREFIX}') && "
                f"!(k in [{_RESERVED_LABELS_CEL}]))"
            ),
            message=(
                f"labels under {OPERATOR_KEY_PREFIX} and the operator's own app.kubernetes.io and Kueue "
                "labels are reserved: the operator sets them to select and account for its pods"
            ),
            field_path=".labels",
            check=lambda p: not any(_reserved_label(k) for k in p.labels),
        ),
        CelRule(
            rule=f"self.annotations.all(k, !k.startsWith('{OPERATOR_KEY_PREFIX}'))",
            message=f"annotations under {OPERATOR_KEY_PREFIX} are reserved for the operator's bookkeeping",
            field_path=".annotations",
            check=lambda p: not any(k.startswith(OPERATOR_KEY_PREFIX) for k in p.annotations),
        ),
        CelRule(
            rule=(
                "!has(self.shmSize) || (type(self.shmSize) == int ? self.shmSize > 0 : "
                "self.shmSize.matches('" + QUANTITY_PATTERN + "'))"
            ),
            message="shmSize must be a Kubernetes quantity such as 1Gi or 512Mi",
            field_path=".shmSize",
            check=lambda p: p.shm_size is None or _quantity_ok(p.shm_size),
        ),
    )

    service_account_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description=(
            "ServiceAccount of the training pod, in the TransferJob's namespace: its cloud identity (IRSA, "
            "EKS Pod Identity, GKE or Azure Workload Identity). Default: the operator's setting, else the "
            "namespace's default. No Kubernetes API token is mounted; the identity webhooks project their "
            "own token."
        ),
    )
    image_pull_secrets: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]],
        AfterValidator(unique),
    ] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Names of docker-registry Secrets in the TransferJob's namespace to pull the image with.",
    )
    labels: Annotated[
        dict[str, LabelValue],
        AfterValidator(check_label_keys),
    ] = Field(
        default_factory=dict,
        max_length=MAX_POD_LABELS,
        description=(
            "Extra labels of the training pod (e.g. azure.workload.identity/use: 'true'). Keys under "
            "kubegraft.io/ and the app.kubernetes.io and Kueue labels the operator sets are reserved."
        ),
    )
    annotations: Annotated[
        dict[str, Annotated[str, Field(max_length=MAX_ANNOTATION_VALUE)]],
        AfterValidator(check_annotation_keys),
    ] = Field(
        default_factory=dict,
        max_length=MAX_POD_ANNOTATIONS,
        description=(
            "Extra annotations of the training pod (e.g. sidecar.istio.io/inject: 'false'). Keys under "
            "kubegraft.io/ are reserved."
        ),
    )
    shm_size: (
        Annotated[
            int | Annotated[str, Field(max_length=64)],
            Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
        ]
        | None
    ) = Field(
        None,
        description=(
            "Size of an in-memory /dev/shm (emptyDir medium Memory with this sizeLimit), e.g. 2Gi for "
            "tf.data or multiprocessing; it counts against resources.memory. Default: the runtime's 64Mi."
        ),
    )


class RunPolicy(ApiModel):
    """Retries, deadlines and suspension of the training Job."""

    backoff_limit: int = Field(3, ge=0, le=100, description="Retries after retryable failures. Default 3.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, le=MAX_INT32, description="Fail the run after this many seconds. Default: no deadline."
    )
    ttl_seconds_after_finished: int | None = Field(
        None,
        ge=0,
        le=MAX_INT32,
        description="Delete the finished Job (not the model) after this many seconds.",
    )
    suspend: bool = Field(
        False, description="Suspend the run (stops its pods); false resumes it. Default false."
    )


Strategy = Literal["auto", "stages"]


class SearchBudget(ApiModel):
    """Bounds of the `strategy: auto` recipe search (candidates run cheapest first until a bound is hit)."""

    minutes: int = Field(
        30,
        ge=1,
        le=10080,
        description=(
            "Wall-clock minutes the search may spend on candidates; no new candidate starts after that and "
            "a running one stops at its next epoch end. Default 30."
        ),
    )
    epochs: int = Field(
        200,
        ge=1,
        le=100000,
        description=(
            "Training epochs the search may spend over all candidates (each candidate's stages count); a "
            "candidate that would exceed it is skipped. Default 200."
        ),
    )


def _nested(first: str, second: str) -> bool:
    """Whether one URI equals the other or lies inside it (a trailing '/' does not matter)."""
    a, b = (uri if uri.endswith("/") else uri + "/" for uri in (first, second))
    return a.startswith(b) or b.startswith(a)


def _auto_allowed(s: TransferJobSpec) -> bool:
    return s.strategy != "auto" or (s.stages is None and s.classifier != "linear")


def _workers_allowed(s: TransferJobSpec) -> bool:
    return s.workers == 1 or s.resolved_strategy == "stages"


def _gate_has_test_split(s: TransferJobSpec) -> bool:
    gated = s.output.publish_policy != "always" or s.output.min_test_accuracy is not None
    return s.dataset.test_split > 0 or not gated


def _budget_allowed(s: TransferJobSpec) -> bool:
    return s.budget is None or s.resolved_strategy == "auto"


class TransferJobSpec(ApiModel):
    """What to learn from, what to start from, how to train and where to publish."""

    __cel_rules__ = (
        CelRule(
            rule="!has(self.stages) || self.stages.all(s, self.stages.exists_one(t, t.name == s.name))",
            message="stage names must be unique",
            field_path=".stages",
            check=lambda s: s.stages is None or len({st.name for st in s.stages}) == len(s.stages),
        ),
        CelRule(
            rule="self.model.backbone != 'Xception' || self.dataset.imageSize >= 71",
            message="dataset.imageSize must be at least 71 for the Xception backbone",
            field_path=".dataset.imageSize",
            check=lambda s: s.model.backbone != "Xception" or s.dataset.image_size >= 71,
        ),
        CelRule(
            rule=(
                "!(self.model.backbone in ['InceptionV3', 'InceptionResNetV2']) || "
                "self.dataset.imageSize >= 75"
            ),
            message=(
                "dataset.imageSize must be at least 75 for the InceptionV3 and InceptionResNetV2 backbones"
            ),
            field_path=".dataset.imageSize",
            check=lambda s: (
                s.model.backbone not in ("InceptionV3", "InceptionResNetV2") or s.dataset.image_size >= 75
            ),
        ),
        CelRule(
            rule=(
                "self.classifier != 'linear' || !has(self.stages) || "
                "self.stages.all(s, type(s.trainable) == string || s.trainable > 0)"
            ),
            message=(
                "with classifier linear the head is fit exactly on bottleneck features: stages may only "
                "fine-tune (trainable > 0 or 'all')"
            ),
            field_path=".stages",
            check=lambda s: (
                s.classifier != "linear" or s.stages is None or all(st.trains_backbone for st in s.stages)
            ),
        ),
        CelRule(
            rule=(
                "!has(self.strategy) || self.strategy != 'auto' || "
                "(!has(self.stages) && (!has(self.classifier) || self.classifier != 'linear'))"
            ),
            message=(
                "strategy auto chooses the stages and the classifier itself: remove stages and classifier "
                "linear, or set strategy stages"
            ),
            field_path=".strategy",
            check=_auto_allowed,
        ),
        CelRule(
            rule=(
                "!(self.output.uri + '/').startsWith(self.dataset.uri.endsWith('/') ? self.dataset.uri "
                ": self.dataset.uri + '/') && !(self.dataset.uri + '/').startsWith("
                "self.output.uri.endsWith('/') ? self.output.uri : self.output.uri + '/')"
            ),
            message=(
                "output.uri must not equal, lie inside or contain dataset.uri: publishing would write into "
                "the training data"
            ),
            field_path=".output.uri",
            check=lambda s: not _nested(s.output.uri, s.dataset.uri),
        ),
        CelRule(
            rule=(
                "!has(self.budget) || (!has(self.stages) && "
                "(!has(self.classifier) || self.classifier != 'linear') && "
                "(!has(self.strategy) || self.strategy == 'auto'))"
            ),
            message=(
                "budget bounds the strategy auto search only: remove it, or remove stages and classifier "
                "linear"
            ),
            field_path=".budget",
            check=_budget_allowed,
        ),
        CelRule(
            rule=(
                "!has(self.workers) || self.workers == 1 || "
                "(has(self.strategy) ? self.strategy == 'stages' : "
                "(has(self.stages) || (has(self.classifier) && self.classifier == 'linear')))"
            ),
            message=(
                "workers > 1 needs strategy stages: the strategy auto search decides by wall-clock time, "
                "which workers training together cannot share; give stages (or classifier linear)"
            ),
            field_path=".workers",
            check=_workers_allowed,
        ),
        CelRule(
            rule=(
                "!has(self.dataset.testSplit) || self.dataset.testSplit > 0.0 || "
                "((!has(self.output.publishPolicy) || self.output.publishPolicy == 'always') && "
                "!has(self.output.minTestAccuracy))"
            ),
            message=(
                "output.publishPolicy ifBetter and output.minTestAccuracy judge the model on the test split: "
                "dataset.testSplit must be more than 0"
            ),
            field_path=".output",
            check=_gate_has_test_split,
        ),
    )

    dataset: DatasetSpec = Field(..., description="Labelled images and their split.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Backbone, its weights and the new head.")
    stages: list[Stage] | None = Field(
        None,
        min_length=1,
        max_length=10,
        description=(
            "Training stages, run in order (strategy stages). Without stages the recipe search (strategy "
            "auto) chooses them; with strategy stages and no stages: 'head' (trainable 0, 10 epochs, adam "
            "1e-3) then 'finetune' (trainable 50, 10 epochs, sgd 1e-4 momentum 0.9); with classifier "
            "linear, no stage."
        ),
    )
    strategy: Strategy | None = Field(
        None,
        description=(
            "How the recipe is chosen. auto: train candidate recipes (linear classifier and head on cached "
            "features, fine-tunes of the top layers and of the whole backbone, with and without "
            "augmentation), keep the best on the validation split, and publish its stages next to the "
            "model (recipe.yaml) so the run can be pinned. stages: run stages as written (or the documented "
            "default). Default: stages when stages or classifier linear are given, otherwise auto."
        ),
    )
    budget: SearchBudget | None = Field(
        None,
        description=(
            "Bounds of the strategy auto search (minutes, epochs); default 30 minutes and 200 epochs. "
            "Only with strategy auto."
        ),
    )
    classifier: Literal["softmax", "linear"] = Field(
        "softmax",
        description=(
            "softmax: the head in model.head trained by the stages. linear: a multinomial logistic "
            "regression fit on cached bottleneck features (fastest), exported in the same serving model; "
            "later stages may fine-tune it with the backbone."
        ),
    )
    augmentation: Augmentation = Field(
        default_factory=Augmentation, description="Training-time augmentation; all off by default."
    )
    output: OutputSpec = Field(..., description="Where models are published.")
    storage: StorageSpec = Field(
        default_factory=StorageSpec, description="Object storage endpoint and credentials."
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="GPUs, CPU and memory of the pod."
    )
    workers: int = Field(
        1,
        ge=1,
        le=MAX_WORKERS,
        description=(
            "Training pods that train together (MultiWorkerMirroredStrategy, each with resources.gpus "
            "GPUs). More than 1 renders one Indexed Job of that many pods behind a headless Service; worker "
            "0 publishes. Needs strategy stages (stages or classifier linear). Default 1."
        ),
    )
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec, description="Placement and queueing.")
    image: str = Field(
        "",
        max_length=1024,
        pattern=IMAGE_PATTERN,
        description=(
            "Trainer image override (registry/repository[:tag][@digest]); empty uses the operator's default."
        ),
    )
    pod: PodOptions = Field(
        default_factory=PodOptions,
        description="ServiceAccount, pull Secrets, labels, annotations and /dev/shm of the training pod.",
    )
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy, description="Retries, deadline, TTL and suspend."
    )

    @property
    def resolved_strategy(self) -> Strategy:
        """The strategy in effect: the spec's, else stages when stages or the linear classifier are given."""
        if self.strategy is not None:
            return self.strategy
        return "stages" if self.stages is not None or self.classifier == "linear" else "auto"

    @property
    def resolved_budget(self) -> SearchBudget:
        """The search budget: the spec's, or the defaults."""
        return self.budget if self.budget is not None else SearchBudget()

    def resolved_stages(self) -> list[Stage]:
        """The stages to run: the spec's own, or the documented default for the classifier."""
        if self.stages is not None:
            return list(self.stages)
        if self.classifier == "linear":
            return []
        return [
            Stage.model_validate({"name": "head", "trainable": 0, "epochs": 10, "optimizer": "adam"}),
            Stage.model_validate(
                {
                    "name": "finetune",
                    "trainable": 50,
                    "epochs": 10,
                    "optimizer": "sgd",
                    "learningRate": 1.0e-4,
                    "momentum": 0.9,
                }
            ),
        ]


class ObjectMeta(ApiModel):
    """The metadata fields kubegraft reads; everything else Kubernetes puts there is kept as is."""

    model_config = ConfigDict(
        extra="allow",
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        allow_inf_nan=False,
    )

    name: str | None = Field(None, max_length=DNS_SUBDOMAIN_MAX)
    generate_name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @property
    def effective_name(self) -> str:
        """The name the API server will store: `name`, or `generateName` plus its five random characters."""
        if self.name is not None:
            return self.name
        return f"{self.generate_name}xxxxx" if self.generate_name else ""


class TransferJob(ApiModel):
    """A TransferJob manifest: apiVersion, kind, metadata and spec (status is the operator's)."""

    __cel_rules__ = (
        CelRule(
            rule=f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
            message=(
                f"metadata.name must be at most {MAX_NAME_LENGTH} characters so that Job names and labels "
                "derived from it fit"
            ),
            field_path=".metadata.name",
            check=lambda t: len(t.metadata.effective_name) <= MAX_NAME_LENGTH,
        ),
        CelRule(
            rule=f"self.metadata.name.matches('{DNS_LABEL_PATTERN}')",
            message=(
                "metadata.name must be a DNS label (lowercase letters, digits and '-', starting and ending "
                "with a letter or digit): it names the run's Jobs and Services"
            ),
            field_path=".metadata.name",
            check=lambda t: (
                re.fullmatch(DNS_LABEL_PATTERN.strip("^$"), t.metadata.effective_name) is not None
            ),
        ),
    )

    api_version: Literal["kubegraft.io/v1alpha1"] = Field("kubegraft.io/v1alpha1", alias="apiVersion")
    kind: Literal["TransferJob"] = "TransferJob"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: TransferJobSpec
    status: dict[str, Any] | None = None
