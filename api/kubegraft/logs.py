"""Log output of the trainer: text lines for people, or one JSON object per line for log collectors.

`kubegraft train` and `kubegraft run` call `configure` once at start with `--log-format` or
$KUBEGRAFT_LOG_FORMAT (the operator sets it on every training pod from its own `--log-format`). The operator's
own logs go through kopf's formatter (`kopf run --log-format json`, python-json-logger as here), so both sides
write the same keys: `message`, `timestamp` (ISO 8601, UTC), `severity` (debug, info, warn, error, fatal),
plus `logger` here. `console` is the trainer's per-epoch summary: a bare line in text mode, a record in JSON.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from kubegraft.runtime import ENV_LOG_FORMAT

CONSOLE_LOGGER = "kubegraft.console"
NATIVE_LOGGER = "native"
# abseil/glog line prefixes (TensorFlow's C++ logs: "I0000 00:00:1796609389.999586 28947 port.cc:153] ...").
_NATIVE_LINE = re.compile(r"^(?P<level>[IWEF])\d{4} ")
_NATIVE_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogFormat(StrEnum):
    """How logs are written: `text` (the default) or `json` (one object per line)."""

    text = "text"
    json = "json"


def log_format_from_env(env: Mapping[str, str] | None = None) -> LogFormat:
    """The format named by $KUBEGRAFT_LOG_FORMAT; `text` when unset.

    Raises:
        ValueError: the variable names another format (the message names the variable and the choices).
    """
    env = os.environ if env is None else env
    raw = env.get(ENV_LOG_FORMAT, "").strip().lower()
    if not raw:
        return LogFormat.text
    try:
        return LogFormat(raw)
    except ValueError:
        choices = ", ".join(f.value for f in LogFormat)
        raise ValueError(f"{ENV_LOG_FORMAT} must be one of {choices}, got {raw!r}") from None


class _JsonFormatter(JsonFormatter):
    """python-json-logger with kopf's `severity` values, so operator and trainer records read alike."""

    def add_fields(
        self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record["severity"] = (
            "debug"
            if record.levelno <= logging.DEBUG
            else "info"
            if record.levelno <= logging.INFO
            else "warn"
            if record.levelno <= logging.WARNING
            else "error"
            if record.levelno <= logging.ERROR
            else "fatal"
        )


def formatter(log_format: LogFormat, text: str = TEXT_FORMAT) -> logging.Formatter:
    """A formatter for `log_format`: `text` (a logging format string) for text mode."""
    if log_format is LogFormat.json:
        return _JsonFormatter("%(name)s %(message)s", rename_fields={"name": "logger"}, timestamp=True)
    return logging.Formatter(text)


def capture_native_stderr() -> TextIO:
    """Turn whatever writes to file descriptor 2 directly into `native` log records; return the real stderr.

    TensorFlow's C++ start-up lines ("oneDNN custom operations are on", CUDA and XLA messages) bypass Python
    and `TF_CPP_MIN_LOG_LEVEL` cannot silence all of them; uncaught tracebacks go to fd 2 too. A pipe takes
    fd 2's place and a thread logs each line it reads (abseil's I/W/E/F prefix sets the severity), so in
    JSON mode every line on stderr is a JSON object. Log handlers must write to the returned stream (a
    duplicate of the original fd 2), never to `sys.stderr`, or their own lines would loop back through the
    pipe. At exit fd 2 is restored and the lines still in the pipe are logged.
    """
    real = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    native = logging.getLogger(NATIVE_LOGGER)

    def pump() -> None:
        with os.fdopen(read_fd, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                text = line.rstrip("\n")
                if text.strip():
                    match = _NATIVE_LINE.match(text)
                    native.log(_NATIVE_LEVELS[match["level"]] if match else logging.WARNING, "%s", text)

    thread = threading.Thread(target=pump, name="native-stderr", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(real.fileno(), 2)  # drops the pipe's last writer: the thread reads to the end and stops
        thread.join(timeout=2)

    atexit.register(restore)
    return real


def configure(
    log_format: LogFormat,
    level: int = logging.INFO,
    *,
    stream: TextIO | None = None,
    console_stream: TextIO | None = None,
    capture_native: bool = False,
) -> None:
    """Send every log record, Python warnings included, to `stream` (stderr) in `log_format`.

    The `kubegraft.console` logger writes to `console_stream` (stdout): the bare message in text mode (the
    trainer's epoch lines look as they always did), a JSON record in JSON mode. With `capture_native` (the
    trainer in JSON mode) lines written to fd 2 by C libraries become records too (`capture_native_stderr`).
    Calling it again replaces the handlers an earlier call set up.
    """
    if stream is None:
        stream = capture_native_stderr() if capture_native else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    console_handler = logging.StreamHandler(console_stream if console_stream is not None else sys.stdout)
    console_handler.setFormatter(formatter(log_format, "%(message)s"))
    console = logging.getLogger(CONSOLE_LOGGER)
    console.handlers[:] = [console_handler]
    console.setLevel(logging.INFO)
    console.propagate = False
    logging.captureWarnings(True)


def console(message: str, **fields: Any) -> None:
    """Write one line for the person watching (`fields` become JSON keys in JSON mode)."""
    logger = logging.getLogger(CONSOLE_LOGGER)
    if not logger.handlers:
        # Library use without `configure` (tests, notebooks): behave like print.
        print(message, flush=True)
        return
    logger.info(message, extra=fields)
