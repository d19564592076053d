"""kubegraft.logs: text or JSON log lines, the format from the environment, the console summary line."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest

from kubegraft import logs
from kubegraft.logs import LogFormat, configure, console, log_format_from_env


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    console_logger = logging.getLogger(logs.CONSOLE_LOGGER)
    saved_console = (console_logger.handlers[:], console_logger.propagate)
    yield
    root.handlers[:], level = saved
    root.setLevel(level)
    console_logger.handlers[:], console_logger.propagate = saved_console
    logging.captureWarnings(False)


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_format_writes_one_object_per_line_with_kopfs_keys() -> None:
    err, out = io.StringIO(), io.StringIO()
    configure(LogFormat.json, stream=err, console_stream=out)
    logging.getLogger("kubegraft_trainer.run").warning("slow download of %s", "s3://b/k")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    console("[head] epoch 1/3 accuracy=0.5000", stage="head", epoch=1)
    records = [json.loads(line) for line in _lines(err)]
    assert records[0]["message"] == "slow download of s3://b/k"
    assert records[0]["severity"] == "warn"
    assert records[0]["logger"] == "kubegraft_trainer.run"
    assert "timestamp" in records[0]
    assert records[1]["severity"] == "error" and "second line" in records[1]["exc_info"]
    [summary] = [json.loads(line) for line in _lines(out)]
    assert summary["message"].startswith("[head] epoch 1/3")
    assert (summary["stage"], summary["epoch"], summary["severity"]) == ("head", 1, "info")


def test_python_warnings_become_json_records_too() -> None:
    err = io.StringIO()
    configure(LogFormat.json, stream=err, console_stream=io.StringIO())
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    [record] = [json.loads(line) for line in _lines(err)]
    assert "deprecated thing" in record["message"] and record["severity"] == "warn"


def test_text_format_keeps_the_bare_console_line_and_the_classic_log_line() -> None:
    err, out = io.StringIO(), io.StringIO()
    configure(LogFormat.text, stream=err, console_stream=out)
    logging.getLogger("kubegraft_trainer.run").info("loading")
    console("published s3://b/m/1/ test_accuracy=0.9", model_uri="s3://b/m/1/")
    assert _lines(out) == ["published s3://b/m/1/ test_accuracy=0.9"]
    [line] = _lines(err)
    assert line.endswith(" INFO kubegraft_trainer.run: loading")


@pytest.mark.parametrize(
    ("raw", "expected"), [("", LogFormat.text), ("JSON", LogFormat.json), ("text", LogFormat.text)]
)
def test_format_comes_from_kubegraft_log_format(raw: str, expected: LogFormat) -> None:
    assert log_format_from_env({"KUBEGRAFT_LOG_FORMAT": raw}) is expected


def test_an_unknown_format_is_refused_naming_the_variable() -> None:
    with pytest.raises(ValueError, match=r"KUBEGRAFT_LOG_FORMAT must be one of text, json, got 'yaml'"):
        log_format_from_env({"KUBEGRAFT_LOG_FORMAT": "yaml"})
