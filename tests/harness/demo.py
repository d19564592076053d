"""`make demo` (`python -m tests.harness.demo`): one TransferJob end to end, as a user would run it.

What it does, printing every command a user would type:

1. writes a Fashion-MNIST transfer data set into `.demo/data/` (target classes 0-4 as PNG class folders) and
   keeps a few held-out t10k images aside in `.demo/holdout/`;
2. takes the backbone pretrained on the other classes (5-9) by `tests.harness.backbone` (built once, cached
   under `.cache/`): the stand-in for ImageNet weights, which cannot be downloaded here;
3. starts SeaweedFS (S3) and the Kubernetes emulator with its test kubelet on 127.0.0.1, then the operator as
   a real `kopf run` process; uploads the data set and the backbone;
4. applies the CRD, a namespace, the credentials Secret and `manifests/examples/fashion-mnist-demo.yaml` with
   the real kubectl, shows `kubectl get tj -w` as a live table (NAME PHASE STAGE EPOCH VAL-ACC, a row per
   change) with the namespace's Events in between;
5. prints the model URI, the test accuracy, the two plots (downloaded into `.demo/model/`) and the top-3
   predictions of `kubegraft predict` for the held-out images beside their true labels;
6. stops every process it started, also on Ctrl-C and on errors; the data stays in `.demo/`.

With `KUBECONFIG` set (or `--target cluster`) it skips step 3's local services and runs the same TransferJob
on that cluster, with the S3 endpoint and keys from `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID` and
`AWS_SECRET_ACCESS_KEY` (see docs/demo.md).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TextIO

import yaml

from tests.harness.fashion import CLASS_NAMES, write_class_folders
from tests.harness.ports import free_port
from tests.harness.s3 import SeaweedFS, s3_client
from tests.harness.transfer import TransferInputs, download_version, stage_inputs

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO_ROOT / ".demo"
MANIFEST = REPO_ROOT / "manifests" / "examples" / "fashion-mnist-demo.yaml"
CRD = REPO_ROOT / "manifests" / "crd" / "kubegraft.io_transferjobs.yaml"

TARGET_LABELS = (0, 1, 2, 3, 4)  # T-shirt_top, Trouser, Pullover, Dress, Coat: never seen by the backbone
TRAIN_PER_CLASS = 150  # train-split images per class uploaded as the data set
HOLDOUT_PER_CLASS = 4  # t10k images per class kept aside for `kubegraft predict`
DATASET_NAME = "fashion-mnist-0to4"
MODEL_NAME = "fashion-mnist"
DEMO_S3_PORT = 8333  # the endpoint the example manifest names (SeaweedFS's default S3 port)
WATCH_TIMEOUT = 540.0  # seconds a run may take before the demo gives up
PLOTS = ("training_curves.png", "confusion_matrix.png")
TABLE_COLUMNS = (
    ("NAME", ".metadata.name"),
    ("PHASE", ".status.phase"),
    ("STAGE", ".status.stage"),
    ("EPOCH", ".status.epoch"),
    ("VAL-ACC", ".status.metrics.val_accuracy"),
)
TERMINAL_PHASES = ("Succeeded", "Failed")

Target = Literal["local", "cluster"]


class DemoError(Exception):
    """The demo cannot go on; the message says why and what to do."""


def _relative(path: Path) -> str:
    """``path`` as a user in the repository root would type it."""
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(REPO_ROOT))
    return str(path)


class Console:
    """Everything the demo prints: section headers, commands as typed, their output, and notes."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.started = time.monotonic()

    def elapsed(self) -> str:
        """Time since the demo started, as m:ss."""
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60}:{seconds % 60:02d}"

    def section(self, title: str) -> None:
        """A numbered step's header."""
        self.out.write(f"\n== {title}  [{self.elapsed()}]\n")
        self.out.flush()

    def say(self, text: str = "") -> None:
        """A note or a line of output."""
        self.out.write(text + "\n")
        self.out.flush()

    def command(self, argv: Sequence[str]) -> None:
        """A command as the user would type it."""
        self.say("$ " + " ".join(_quote(a) for a in argv))

    def output(self, text: str) -> None:
        """A command's output, as it printed it."""
        if text:
            self.out.write(text if text.endswith("\n") else text + "\n")
            self.out.flush()


def _quote(arg: str) -> str:
    """Shell-quote an argument only where a shell needs it (readable commands)."""
    if arg and all(c.isalnum() or c in "-_./=:,@%+" for c in arg):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"


class Kubectl:
    """The real kubectl against one kubeconfig; prints each command as typed (`kubectl ...`)."""

    def __init__(self, binary: str, console: Console, kubeconfig: Path | None, emulated: bool) -> None:
        self.binary = binary
        self.console = console
        self.kubeconfig = kubeconfig
        # The emulator serves no OpenAPI documents: kubectl's client-side validation must be off there.
        self.apply_flags = ["--validate=false"] if emulated else []

    def env(self) -> dict[str, str]:
        """The environment kubectl runs in (KUBECONFIG set when the demo owns the cluster)."""
        env = dict(os.environ)
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def run(
        self, *args: str, show: bool = True, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `kubectl args`; print the command and its output when `show`.

        Raises:
            DemoError: with `check` and a non-zero exit, kubectl's stderr in the message.
        """
        if show:
            self.console.command(["kubectl", *args])
        result = subprocess.run(
            [self.binary, *args], capture_output=True, text=True, env=self.env(), timeout=timeout, check=False
        )
        if show:
            self.console.output(result.stdout)
            self.console.output(result.stderr)
        if check and result.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def apply(self, path: Path, *extra: str) -> None:
        """`kubectl apply [flags] -f path`.

        An API server that serves no OpenAPI documents (some proxies, the emulator) makes kubectl's
        client-side validation fail before anything is sent; the apply is then repeated with
        `--validate=false`, saying so.
        """
        args = ["apply", *self.apply_flags, *extra, "-f", _relative(path)]
        result = self.run(*args, check=False)
        if result.returncode != 0 and "failed to download openapi" in result.stderr:
            self.console.say(
                "(this API server serves no OpenAPI documents: applying without client validation)"
            )
            self.apply_flags = ["--validate=false"]
            result = self.run("apply", *self.apply_flags, *extra, "-f", _relative(path), check=False)
        if result.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")

    def stream(self, *args: str) -> subprocess.Popen[str]:
        """Start a long-running kubectl (a watch); its stdout is read line by line."""
        return subprocess.Popen(
            [self.binary, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=self.env(),
        )

    def get_json(self, *args: str) -> Any:
        """`kubectl get ... -o json`, decoded (not printed)."""
        return json.loads(self.run("get", *args, "-o", "json", show=False).stdout)


@dataclasses.dataclass
class Storage:
    """The S3 endpoint and identity the demo uploads with and the trainer pod reads with."""

    endpoint: str | None
    access_key: str
    secret_key: str
    region: str
    bucket: str

    def client(self) -> Any:
        """A boto3 client for this storage (path-style addressing with a custom endpoint)."""
        if self.endpoint:
            return s3_client(self.endpoint, self.access_key, self.secret_key)
        import boto3

        return boto3.session.Session().client(
            "s3",
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def env(self) -> dict[str, str]:
        """AWS_* variables for `kubegraft predict` run by the demo."""
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }
        if self.endpoint:
            env["AWS_ENDPOINT_URL"] = self.endpoint
        return env


class _PinnedS3Port(SeaweedFS):
    """SeaweedFS whose S3 gateway listens on a given port (the one the example manifest names)."""

    def __init__(self, workdir: Path, s3_port: int) -> None:
        super().__init__(workdir)
        self._s3_port = s3_port

    def _launch(self, config: Path) -> str:
        self.ports["s3.port"] = self._s3_port
        self.endpoint = f"http://127.0.0.1:{self._s3_port}"
        return super()._launch(config)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclasses.dataclass(frozen=True)
class Holdout:
    """A held-out image and its true class."""

    path: Path
    label: str


def prepare_data(console: Console, root: Path) -> tuple[Path, list[Holdout]]:
    """Write the transfer data set and the held-out images; return (data set folder, held-out images)."""
    dataset = write_class_folders(root / "data" / DATASET_NAME, TARGET_LABELS, TRAIN_PER_CLASS, split="train")
    holdout_root = write_class_folders(
        root / "holdout", TARGET_LABELS, HOLDOUT_PER_CLASS, split="test", seed=7
    )
    holdout = [
        Holdout(path, path.parent.name)
        for path in sorted(holdout_root.glob("*/*.png"), key=lambda p: CLASS_NAMES.index(p.parent.name))
    ]
    names = ", ".join(CLASS_NAMES[c] for c in TARGET_LABELS)
    console.say(
        f"data set: {TRAIN_PER_CLASS} PNGs per class x {len(TARGET_LABELS)} classes ({names}) "
        f"from the train split in {_relative(dataset)}/"
    )
    console.say(f"held out: {len(holdout)} t10k images in {_relative(holdout_root)}/ (never uploaded)")
    return dataset, holdout


def prepare_backbone(console: Console) -> Path:
    """The cached backbone pretrained on Fashion-MNIST 5-9 (built first when no session has yet).

    The build runs in its own process with its output (TensorFlow's start-up lines, Keras progress) in
    `.demo/logs/backbone.log`, so the demo's screen shows only what a person needs.
    """
    from tests.harness.backbone import SOURCE_CLASSES, cached_backbone

    path = cached_backbone()
    cached = path is not None
    if path is None:
        console.say("pretraining the backbone on Fashion-MNIST classes 5-9 (once; about a minute) ...")
        log = DEMO_DIR / "logs" / "backbone.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            built = subprocess.run(
                [sys.executable, "-m", "tests.harness.backbone"],
                cwd=REPO_ROOT,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        path = cached_backbone()
        if built.returncode != 0 or path is None:
            tail = log.read_text(errors="replace")[-2000:]
            raise DemoError(
                f"building the backbone failed (exit {built.returncode}); {_relative(log)}:\n{tail}"
            )
    record = json.loads(path.with_suffix(".json").read_text())
    sources = ", ".join(CLASS_NAMES[c] for c in SOURCE_CLASSES)
    console.say(
        f"backbone: MobileNetV2 (alpha 0.35, 32 px) pretrained on {sources}; "
        f"linear-probe accuracy {record['probe_accuracy']:.3f} on held-out source images"
        f"{' (cached)' if cached else ''}: {_relative(path)}"
    )
    return path


def _quality_lines(metrics: Mapping[str, Any]) -> list[str]:
    """What strategy auto published and how it compares with the run's own pixel baseline (metrics.json)."""
    lines: list[str] = []
    selection = metrics.get("selection")
    if isinstance(selection, dict):
        others = ", ".join(
            f"{c['name']} {c['validation_accuracy']:.3f}"
            for c in selection.get("contenders", [])
            if c.get("name") != selection.get("published")
        )
        score = selection.get("validation_accuracy", float("nan"))
        lines.append(
            f"published:      {selection.get('published')} ({selection.get('description')}), validation "
            f"{score:.3f} against {others or 'no other contender'}"
        )
        if selection.get("reason"):
            lines.append(f"why:            {selection['reason']}")
    baseline, test = metrics.get("baseline_accuracy"), metrics.get("testAccuracy")
    if isinstance(baseline, float) and isinstance(test, float):
        verdict = "at or above" if test >= baseline else "below"
        gain = metrics.get("transfer_gain", 0.0)
        lines.append(
            f"baseline:       pixel logistic regression {baseline:.3f} on the same test images: the "
            f"published model is {verdict} it ({test - baseline:+.3f}); transfer gain {gain:+.3f}"
        )
    return lines


def render_manifest(inputs: TransferInputs, storage: Storage, dest: Path) -> Path:
    """The manifest to apply: the example itself when it already names `inputs`, else an edited copy."""
    manifest = yaml.safe_load(MANIFEST.read_text())
    spec = manifest["spec"]
    wanted = {
        ("dataset", "uri"): inputs.dataset_uri,
        ("model", "weights"): inputs.weights_uri,
        ("output", "uri"): inputs.output_uri,
        ("storage", "endpoint"): storage.endpoint,
        ("storage", "region"): storage.region,
    }
    if all(spec[a].get(b) == value for (a, b), value in wanted.items()):
        return MANIFEST
    for (a, b), value in wanted.items():
        if value is None:
            spec[a].pop(b, None)
        else:
            spec[a][b] = value
    if storage.endpoint is None:
        spec["storage"].pop("addressingStyle", None)
    dest.write_text(
        f"# {_relative(MANIFEST)} with this demo's storage (written by `make demo`)\n"
        + yaml.safe_dump(manifest, sort_keys=False)
    )
    return dest


def write_access_files(root: Path, namespace: str, secret_name: str, storage: Storage) -> tuple[Path, Path]:
    """The Namespace and the credentials Secret as manifests (the Secret file readable by its owner only)."""
    namespace_file = root / "namespace.yaml"
    namespace_file.write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    )
    secret_file = root / "s3-credentials.yaml"
    secret_file.touch(mode=0o600)
    secret_file.chmod(0o600)
    secret_file.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": secret_name, "namespace": namespace},
                "type": "Opaque",
                "stringData": {
                    "AWS_ACCESS_KEY_ID": storage.access_key,
                    "AWS_SECRET_ACCESS_KEY": storage.secret_key,
                },
            },
            sort_keys=False,
        )
    )
    return namespace_file, secret_file


class LiveStatus:
    """`kubectl get tj -w` as a table of changes, and the namespace's Events, read from two kubectl watches.

    A row is printed when NAME, PHASE, STAGE, EPOCH or VAL-ACC changes (kubectl prints a line for every
    update of the object, most of them to fields not shown); VAL-ACC is rounded to three places. Events are
    printed as they arrive, indented under the table.
    """

    # kubectl's printers expand tabs to spaces: fields are separated by a character messages rarely hold.
    EVENT_SEPARATOR = "|"
    EVENT_TEMPLATE = (
        'jsonpath={.type}{"|"}{.reason}{"|"}{.involvedObject.kind}/{.involvedObject.name}{"|"}'
        '{.message}{"\\n"}'
    )

    def __init__(self, kubectl: Kubectl, console: Console, name: str, namespace: str) -> None:
        self.kubectl = kubectl
        self.console = console
        self.name = name
        self.namespace = namespace
        self.lines: queue.Queue[tuple[str, str, str]] = queue.Queue()  # (watch, line, elapsed at arrival)
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self.last_row: tuple[str, ...] | None = None
        self.phase = ""

    def table_args(self) -> list[str]:
        """The arguments of the table watch."""
        columns = ",".join(f"{header}:{path}" for header, path in TABLE_COLUMNS)
        return ["get", "tj", "-n", self.namespace, "-w", "-o", f"custom-columns={columns}"]

    def events_args(self) -> list[str]:
        """The arguments of the Events watch."""
        return ["get", "events", "-n", self.namespace, "--watch-only", "-o", self.EVENT_TEMPLATE]

    def start(self) -> None:
        """Start both watches before the TransferJob is applied, so that no state and no Event is missed."""
        self._spawn("events", self.events_args())
        self._spawn("table", self.table_args())

    def print_header(self) -> None:
        """Print the table watch's command and the table header (rows follow from `follow`)."""
        self.console.command(["kubectl", *self.table_args()])
        self.console.say(self._format(tuple(h for h, _ in TABLE_COLUMNS), "ELAPSED"))

    def _spawn(self, tag: str, args: list[str]) -> None:
        process = self.kubectl.stream(*args)
        self.processes[tag] = process

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                self.lines.put((tag, line.rstrip("\n"), self.console.elapsed()))
            self.lines.put((tag, "", self.console.elapsed()))  # end of stream

        threading.Thread(target=pump, name=f"kubectl-{tag}", daemon=True).start()

    @staticmethod
    def _format(cells: Sequence[str], elapsed: str) -> str:
        name, phase, stage, epoch, val_acc = cells
        return f"{name:<22} {phase:<10} {stage:<10} {epoch:<6} {val_acc:<8} {elapsed}"

    def _table_line(self, line: str, elapsed: str) -> None:
        cells = line.split()
        if len(cells) != len(TABLE_COLUMNS) or cells[0] != self.name:
            return
        cells = ["-" if c == "<none>" else c for c in cells]
        with contextlib.suppress(ValueError):
            cells[4] = f"{float(cells[4]):.3f}"
        row = tuple(cells)
        self.phase = row[1]
        if row != self.last_row:
            self.last_row = row
            self.console.say(self._format(row, elapsed))

    def _event_line(self, line: str) -> None:
        parts = [p.strip() for p in line.split(self.EVENT_SEPARATOR, 3)]
        if len(parts) == 4:
            type_, reason, obj, message = parts
            self.console.say(f"    event {type_:<7} {reason:<18} {obj}: {message}")
        elif line.strip():
            self.console.say(f"    event {line.strip()}")

    def follow(self, timeout: float, alive: Mapping[str, Any]) -> str:
        """Print rows and Events until the phase is terminal; return it.

        Args:
            timeout: seconds to wait for a terminal phase.
            alive: name -> object with an `alive` property (the operator); one that dies ends the demo.

        Raises:
            DemoError: on timeout or when a process the run needs has died.
        """
        deadline = time.monotonic() + timeout
        terminal_at: float | None = None
        while True:
            now = time.monotonic()
            if terminal_at is not None and now - terminal_at > 1.5:  # trailing Events of the last update
                return self.phase
            if now > deadline:
                raise DemoError(f"the TransferJob did not finish within {timeout:.0f} s (phase {self.phase})")
            for what, process in alive.items():
                if not process.alive:
                    raise DemoError(f"the {what} exited; its log: {getattr(process, 'log_path', '?')}")
            try:
                tag, line, elapsed = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if tag == "table":
                if line:
                    self._table_line(line, elapsed)
                elif terminal_at is None:  # the watch ended (API server closed it): watch again
                    self._spawn("table", self.table_args())
            elif line:
                self._event_line(line)
            if self.phase in TERMINAL_PHASES and terminal_at is None:
                terminal_at = time.monotonic()

    def stop(self) -> None:
        """Stop both watches."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@dataclasses.dataclass
class Demo:
    """One demo run: its console, what it started (an ExitStack) and where it keeps its data."""

    console: Console
    stack: contextlib.ExitStack
    target: Target
    root: Path = DEMO_DIR
    namespace: str = ""
    name: str = ""
    secret_name: str = ""
    operator: Any = None
    metrics_port: int = 0

    def __post_init__(self) -> None:
        manifest = yaml.safe_load(MANIFEST.read_text())
        self.namespace = manifest["metadata"]["namespace"]
        self.name = manifest["metadata"]["name"]
        self.secret_name = manifest["spec"]["storage"]["secretRef"]["name"]

    def run(self) -> int:
        """All steps; returns the exit status (0 when the TransferJob succeeded)."""
        for sub in ("cluster", "s3", "model", "data", "holdout"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)

        self.console.section("1. Data: a transfer task and a pretrained backbone")
        dataset, holdout = prepare_data(self.console, self.root)
        backbone = prepare_backbone(self.console)

        if self.target == "local":
            self.console.section("2. Local services: S3, Kubernetes API (emulator + kubelet), operator")
            storage, kubectl = self.start_local()
        else:
            self.console.section("2. Your cluster and your S3")
            storage, kubectl = self.connect_cluster()

        self.console.section("3. Upload the data set and the backbone")
        inputs = stage_inputs(
            storage.client(), storage.bucket, DATASET_NAME, dataset, backbone, model_name=MODEL_NAME
        )
        self.console.say(f"{inputs.images} images -> {inputs.dataset_uri}")
        self.console.say(f"backbone -> {inputs.weights_uri}")
        manifest = render_manifest(inputs, storage, self.root / "fashion-mnist-demo.yaml")

        self.console.section("4. Apply the TransferJob")
        live = LiveStatus(kubectl, self.console, self.name, self.namespace)
        self.stack.callback(live.stop)
        namespace_file, secret_file = write_access_files(self.root, self.namespace, self.secret_name, storage)
        if self.target == "local":
            kubectl.apply(CRD)
        kubectl.apply(namespace_file)
        kubectl.apply(secret_file, "--server-side")
        if self.target == "cluster":  # a TransferJob left by an earlier demo run would be "unchanged"
            kubectl.run("delete", "tj", self.name, "-n", self.namespace, "--ignore-not-found", "--wait")
        live.start()
        self.console.command(["kubegraft", "validate", _relative(manifest)])
        self._kubegraft("validate", _relative(manifest))
        kubectl.apply(manifest)

        self.console.section("5. Watch it train")
        live.print_header()
        alive = {"operator": self.operator} if self.operator is not None else {}
        phase = live.follow(WATCH_TIMEOUT, alive)
        live.stop()

        self.console.section("6. Result")
        kubectl.run("get", "tj", "-n", self.namespace)
        tj = kubectl.get_json("tj", self.name, "-n", self.namespace)
        if phase != "Succeeded":
            self.explain_failure(tj, kubectl)
            return 1
        self.report(tj, storage, holdout)
        return 0

    # -- targets ------------------------------------------------------------------------------------------

    def start_local(self) -> tuple[Storage, Kubectl]:
        """Start SeaweedFS, the emulator with its kubelet, and the operator; all stopped on exit."""
        from tests.harness.cluster import Cluster

        if _port_free(DEMO_S3_PORT):
            server: SeaweedFS = _PinnedS3Port(self.root / "s3", DEMO_S3_PORT)
        else:
            self.console.say(f"port {DEMO_S3_PORT} is taken: S3 gets a free port and the manifest is copied")
            server = SeaweedFS(self.root / "s3")
        self.stack.enter_context(server)
        self.stack.callback(self.console.say, f"stopping S3 (SeaweedFS, pid {server.pid})")
        self.console.say(f"S3 (SeaweedFS, pid {server.pid}): {server.endpoint}")

        venv_bin = str(Path(sys.executable).parent)
        pod_env = {"PATH": os.pathsep.join((venv_bin, os.environ.get("PATH", "")))}
        cluster = self.stack.enter_context(Cluster(self.root / "cluster", pod_env=pod_env))
        self.stack.callback(self.console.say, "stopping the Kubernetes emulator and the kubelet (and pods)")
        self.console.say(f"Kubernetes API (emulator): {cluster.url}; pods run as local processes")
        self.metrics_port = free_port()
        self.operator = cluster.start_operator(env={"KUBEGRAFT_METRICS_PORT": str(self.metrics_port)})
        self.stack.callback(self.console.say, f"stopping the operator (pid {self.operator.pid})")
        self.console.say(
            f"operator: kopf run -m kubegraft_operator.main (pid {self.operator.pid}), "
            f"log {_relative(self.operator.log_path)}, metrics http://127.0.0.1:{self.metrics_port}/metrics"
        )
        self._wait_for_operator()
        self.console.command(["export", f"KUBECONFIG={_relative(cluster.kubeconfig)}"])
        storage = Storage(
            server.endpoint, server.access_key, server.secret_key, "us-east-1", "kubegraft-demo"
        )
        return storage, Kubectl(cluster.kubectl_path(), self.console, cluster.kubeconfig, emulated=True)

    def _wait_for_operator(self, timeout: float = 90.0) -> None:
        """Until the operator serves /metrics (its startup handler finished) or exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.operator.alive:
                raise DemoError(f"the operator exited at start:\n{self.operator.log_text()[-3000:]}")
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2):
                return
            time.sleep(0.5)
        raise DemoError(f"the operator did not start in {timeout:.0f} s; log {self.operator.log_path}")

    def connect_cluster(self) -> tuple[Storage, Kubectl]:
        """Use the cluster in KUBECONFIG and the S3 in AWS_*; the operator must be installed there."""
        missing = [v for v in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not os.environ.get(v)]
        if missing:
            raise DemoError(
                f"set {' and '.join(missing)} (and AWS_ENDPOINT_URL for non-AWS S3): docs/demo.md"
            )
        storage = Storage(
            endpoint=os.environ.get("AWS_ENDPOINT_URL") or None,
            access_key=os.environ["AWS_ACCESS_KEY_ID"],
            secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            bucket=os.environ.get("KUBEGRAFT_DEMO_BUCKET", "kubegraft-demo"),
        )
        from tests.harness.cluster import Cluster

        kubectl = Kubectl(Cluster.kubectl_path(), self.console, None, emulated=False)
        kubectl.run("config", "current-context")
        crd = kubectl.run("get", "crd", "transferjobs.kubegraft.io", check=False)
        if crd.returncode != 0:
            raise DemoError("the kubegraft operator is not installed on this cluster: see docs/deploy.md")
        self.console.say(
            f"S3: {storage.endpoint or 'AWS'} (region {storage.region}), bucket {storage.bucket}"
        )
        return storage, kubectl

    # -- results ------------------------------------------------------------------------------------------

    def explain_failure(self, tj: Mapping[str, Any], kubectl: Kubectl) -> None:
        """Why the run failed: the Failed/Stalled condition and the trainer's last log lines."""
        for condition in tj.get("status", {}).get("conditions", []):
            if condition.get("type") in ("Failed", "Stalled") and condition.get("status") == "True":
                self.console.say(
                    f"{condition['type']}: {condition.get('reason')}: {condition.get('message')}"
                )
        job = tj.get("status", {}).get("jobName")
        if job:
            kubectl.run("logs", f"job/{job}", "-n", self.namespace, "--tail=20", check=False)

    def report(self, tj: Mapping[str, Any], storage: Storage, holdout: Sequence[Holdout]) -> None:
        """Model URI, test accuracy, the plots and predictions for the held-out images."""
        status = tj["status"]
        model_uri = status["modelUri"]
        self.console.say(f"model:          {model_uri}")
        model_dir = download_version(
            storage.client(), model_uri, self.root / "model", ["metrics.json", "labels.txt", *PLOTS]
        )
        metrics = json.loads((model_dir / "metrics.json").read_text())
        test_accuracy = status.get("metrics", {}).get("test_accuracy")
        if test_accuracy is None:
            test_accuracy = _find_number(metrics, "test_accuracy")
        images = status.get("images") or {}
        self.console.say(
            f"test accuracy:  {test_accuracy:.3f} on {images.get('test', '?')} test images "
            f"(chance {1 / len(TARGET_LABELS):.2f})"
            if isinstance(test_accuracy, float)
            else f"test accuracy:  {test_accuracy}"
        )
        for line in _quality_lines(metrics):
            self.console.say(line)
        for plot in PLOTS:
            self.console.say(f"plot:           {_relative(model_dir / plot)}")
        self.console.say(f"metrics:        {_relative(model_dir / 'metrics.json')}")
        if self.metrics_port:
            self._show_operator_metrics()

        self.console.say()
        argv = ["kubegraft", "predict", model_uri, *(_relative(h.path) for h in holdout)]
        if storage.endpoint:
            keys = "AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...  # as in the Secret"
            self.console.say(f"$ export AWS_ENDPOINT_URL={storage.endpoint} {keys}")
        folders = sorted({_relative(h.path.parent.parent) for h in holdout})
        # Shown as the shell glob a user would type; run on the same files, in class order.
        self.console.say(
            "$ " + " ".join(["kubegraft", "predict", _quote(model_uri), *(f"{f}/*/*.png" for f in folders)])
        )
        result = self._kubegraft(*argv[1:], env=storage.env(), show=False)
        truth = {_relative(h.path): h.label for h in holdout}
        right = 0
        for line in result.stdout.splitlines():
            path, _, predictions = line.partition(": ")
            label = truth.get(path)
            if label is None:
                self.console.say(line)
                continue
            top = _parse_top(predictions)
            if top is None:  # an output format this demo does not know: show it as printed
                self.console.say(f"true {label:<12} {line}")
                continue
            right += top[0][0] == label
            mark = "ok  " if top[0][0] == label else "MISS"
            ranked = ", ".join(f"{name} {probability:.2f}" for name, probability in top)
            self.console.say(f"{mark} true {label:<12} {Path(path).name}: {ranked}")
        self.console.say(
            f"held-out images right: {right} of {len(holdout)} (never uploaded, never seen by the run)"
        )

    def _show_operator_metrics(self) -> None:
        """The operator's own view of the run (its /metrics, kubegraft series of this TransferJob)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        wanted = [
            line
            for line in text.splitlines()
            if line.startswith(("kubegraft_runs_", "kubegraft_transferjob_phase"))
            and not line.startswith("kubegraft_runs_failed")
            and (" 0.0" not in line)
            and "_created" not in line
        ]
        self.console.say(f"$ curl -s {url} | grep kubegraft_")
        for line in wanted:
            self.console.say(f"  {line}")

    def _kubegraft(
        self, *args: str, env: Mapping[str, str] | None = None, show: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the `kubegraft` CLI of this environment.

        Raises:
            DemoError: on a non-zero exit.
        """
        binary = shutil.which("kubegraft", path=str(Path(sys.executable).parent)) or "kubegraft"
        result = subprocess.run(
            [binary, *args],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            timeout=300,
            check=False,
        )
        if show:
            self.console.output(result.stdout)
            self.console.output(result.stderr)
        if result.returncode != 0:
            raise DemoError(
                f"kubegraft {args[0]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}"
            )
        return result


def _parse_top(text: str) -> list[tuple[str, float]] | None:
    """`kubegraft predict`'s ranking, ``[('Trouser', 0.93), ...]``, as a list; None if it is not one."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, list) and value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return [(str(name), float(probability)) for name, probability in value]
    return None


def _find_number(tree: Any, key: str) -> Any:
    """The first value of `key` anywhere in a JSON tree (metrics.json nests test metrics)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _find_number(value, key)
            if found is not None:
                return found
    elif isinstance(tree, list):
        for value in tree:
            found = _find_number(value, key)
            if found is not None:
                return found
    return None


def choose_target(requested: str, env: Mapping[str, str]) -> Target:
    """`local` (emulator) unless asked for `cluster` or KUBECONFIG is set with `auto`."""
    if requested == "auto":
        return "cluster" if env.get("KUBECONFIG") else "local"
    if requested not in ("local", "cluster"):
        raise ValueError(f"unknown target {requested!r}")
    return "local" if requested == "local" else "cluster"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the demo like Ctrl-C: the ExitStack stops what it started."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; the exit status is 0 when the TransferJob succeeded."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--target",
        choices=("auto", "local", "cluster"),
        default="auto",
        help="local: S3 and emulator here; cluster: KUBECONFIG's cluster; auto: cluster if KUBECONFIG is set",
    )
    args = parser.parse_args(argv)
    console = Console()
    target = choose_target(args.target, os.environ)
    console.say(
        f"kubegraft demo: {'local emulator' if target == 'local' else 'your cluster'}; data in .demo/"
    )
    status = 1
    with _signals():
        try:
            with contextlib.ExitStack() as stack:
                status = Demo(console, stack, target).run()
                console.section("7. Stop what the demo started")
        except KeyboardInterrupt:
            console.say("\ninterrupted: stopped everything the demo started")
            status = 130
        except DemoError as exc:
            console.say(f"\ndemo failed: {exc}")
            status = 1
    console.say(f"done in {console.elapsed()} (exit {status}); data kept in {_relative(DEMO_DIR)}/")
    return status


if __name__ == "__main__":
    sys.exit(main())
