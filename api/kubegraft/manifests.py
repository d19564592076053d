"""Read Kubernetes manifests from YAML the way kubectl does, and refuse what no API server would store.

PyYAML follows YAML 1.1, where `1e-5` (no dot) is a string; kubectl (sigs.k8s.io/yaml, YAML 1.2 numbers)
sends it as a number. One loader for the CLI and the trainer keeps `learningRate: 1e-5` a float everywhere.

A manifest is JSON in YAML clothing, so the loader is also the first line against hostile files: it refuses
aliases (billion-laughs bombs, recursive anchors), nesting deeper than `MAX_DEPTH`, duplicate keys (kubectl
rejects them), non-string keys and tags with no JSON value (`!!binary`, `!!set`, `!!timestamp`), and reads
dates as the strings kubectl sends. `decode_manifest` refuses files over etcd's 1.5 MiB request limit and
invalid UTF-8. Every refusal is a `ManifestError` with the line and column, never a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.resolver import Resolver

try:  # libyaml, shipped in PyYAML's wheels; the pure-Python parser is the same, only slower
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - a PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser):  # type: ignore[no-redef]
        """PyYAML's pure-Python reader, scanner and parser, in CParser's shape."""

        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)


# etcd's default --max-request-bytes: the API server cannot store a bigger object.
MAX_MANIFEST_BYTES = 1536 * 1024
# Deeper than any TransferJob (affinity terms reach about 12 levels); keeps the recursive composer safe.
MAX_DEPTH = 64
# Values (YAML nodes) per stream: a TransferJob at its bounds (10000 classes) holds about 10^4, a bundle of
# 100 ordinary ones about 10^4 too; composing streams, so a file of 10^5 tiny values stops here, early.
MAX_NODES = 30_000

_YAML12_FLOAT = re.compile(
    r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)
# Tags whose values JSON cannot carry; the loader refuses them instead of building bytes, sets or datetimes.
_NON_JSON_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("binary", "set", "omap", "pairs", "timestamp")
)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class ManifestError(ValueError):
    """A stream that is not a readable manifest: why, and where (1-based line and column) when known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column

    @property
    def position(self) -> str:
        """`line:col` (or `line`), empty when the error is about the whole file."""
        if self.line is None:
            return ""
        return f"{self.line}:{self.column}" if self.column is not None else str(self.line)

    def __str__(self) -> str:
        return f"{self.position}: {self.message}" if self.position else self.message


class ManifestLoader(Composer, _Parser, SafeConstructor, Resolver):
    """A safe loader with YAML 1.2 floats (`1e-5`, `.5`) refusing what JSON or an API server cannot hold.

    libyaml scans and parses (PyYAML's pure-Python scanner takes seconds on a 1.5 MiB file); composing stays
    in Python, where aliases and depth are refused before any node is built.
    """

    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        Composer.__init__(self)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        """Compose one node, refusing aliases and nesting beyond `MAX_DEPTH` before they cost anything."""
        if self.check_event(yaml.AliasEvent):
            event: Any = self.peek_event()
            raise ComposerError(
                None,
                None,
                f"YAML aliases (*{event.anchor}) are not allowed in manifests; write the value out",
                event.start_mark,
            )
        self._depth += 1
        self._nodes += 1
        try:
            if self._nodes > MAX_NODES:
                mark = self._mark()
                raise ComposerError(None, None, f"more than {MAX_NODES} values in one stream", mark)
            if self._depth > MAX_DEPTH:
                mark = self._mark()
                raise ComposerError(None, None, f"nesting deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _mark(self) -> Any:
        """Where the next event starts (libyaml's marks are not PyYAML's type, only alike)."""
        event: Any = self.peek_event()
        return event.start_mark

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A mapping whose keys are strings, each once (kubectl's strict decoding rejects duplicates)."""
        seen: set[str] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise ConstructorError(
                    None, None, f"mapping keys must be strings, got {key!r:.40}", key_node.start_mark
                )
            if key in seen:
                raise ConstructorError(None, None, f'duplicate key "{key:.80}"', key_node.start_mark)
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def construct_yaml_int(self, node: ScalarNode) -> int:
        """An integer; one longer than Python converts (4300 digits) is an error at its position."""
        try:
            value: int = super().construct_yaml_int(node)
        except ValueError:
            digits = len(str(node.value))
            raise ConstructorError(
                None, None, f"invalid integer: {digits} digits is more than Python reads", node.start_mark
            ) from None
        return value


ManifestLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in Resolver.yaml_implicit_resolvers.items()
}
ManifestLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))
ManifestLoader.yaml_constructors = {
    tag: constructor
    for tag, constructor in SafeConstructor.yaml_constructors.items()
    if tag not in _NON_JSON_TAGS
}
ManifestLoader.yaml_constructors["tag:yaml.org,2002:int"] = ManifestLoader.construct_yaml_int


def _as_manifest_error(exc: yaml.YAMLError, text: str) -> ManifestError:
    """One `ManifestError` (line, column, the problem in one line) from any PyYAML error."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            problem = f"{exc.problem} ({exc.context})"
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        return ManifestError(" ".join(f"invalid YAML: {problem}".split()), line, column)
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position]
        line = before.count("\n") + 1
        column = exc.position - (before.rfind("\n") + 1) + 1
        return (
            ManifestError(f"invalid YAML: character #x{exc.character:04x} is not allowed", line, column)
            if isinstance(exc.character, int)
            else ManifestError(f"invalid YAML: {exc.reason}", line, column)
        )
    return ManifestError(" ".join(f"invalid YAML: {exc}".split()))


def decode_manifest(data: bytes) -> str:
    """The text of a manifest file: at most `MAX_MANIFEST_BYTES`, valid UTF-8.

    Raises:
        ManifestError: the file is too large or not UTF-8 (with the line and column of the first bad byte).
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"larger than {MAX_MANIFEST_BYTES} bytes (1.5 MiB): the API server cannot store such an object"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        raise ManifestError(f"not valid UTF-8 (byte 0x{data[exc.start]:02x})", line, column) from None


def load_manifest(text: str) -> Any:
    """One YAML document (a manifest or a bare spec), numbers read as kubectl reads them.

    Raises:
        ManifestError: the text is not one readable YAML document (position and reason).
    """
    loader = ManifestLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise _as_manifest_error(exc, text) from None
    finally:
        loader.dispose()


def load_manifests(text: str) -> Iterator[Any]:
    """Every document of a YAML stream, numbers read as kubectl reads them, lazily.

    Raises:
        ManifestError: at the first document that is not readable YAML (earlier ones were yielded).
    """
    loader = ManifestLoader(text)
    try:
        while loader.check_data():  # type: ignore[no-untyped-call]  # untyped in the stubs
            yield loader.get_data()
    except yaml.YAMLError as exc:
        raise _as_manifest_error(exc, text) from None
    finally:
        loader.dispose()
