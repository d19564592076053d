"""API failures become kopf retries: a server's Retry-After is the retry delay (bounded), else 5 s."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from kubegraft_operator.errors import RETRY_DELAY_SECONDS, retry_after_seconds, translate_api_error
from kubegraft_operator.kube import Kube, transferjob_path


@pytest.mark.parametrize(
    ("header", "delay"),
    [("7", 7.0), ("0", 1.0), ("2.5", 2.5), ("3600", 60.0), (" 12 ", 12.0)],
)
def test_retry_after_seconds_are_the_delay_within_one_second_and_a_minute(header: str, delay: float) -> None:
    assert retry_after_seconds(header) == delay


@pytest.mark.parametrize("header", [None, "", "soon", "Wed, 21 Oct 2026 07:28:00 GMT", "nan"])
def test_an_absent_or_unreadable_retry_after_gives_no_delay(header: str | None) -> None:
    assert retry_after_seconds(header) is None


def test_a_throttled_request_retries_after_the_servers_retry_after() -> None:
    error = translate_api_error(429, "patch Job ns/a-1", "Too Many Requests", retry_after="9")
    assert isinstance(error, kopf.TemporaryError)
    assert error.delay == 9.0


def test_a_server_error_without_retry_after_retries_after_the_default_delay() -> None:
    error = translate_api_error(500, "patch Job ns/a-1", "Internal Server Error")
    assert isinstance(error, kopf.TemporaryError)
    assert error.delay == RETRY_DELAY_SECONDS


def test_a_rejected_request_is_permanent_whatever_retry_after_says() -> None:
    assert isinstance(translate_api_error(422, "create Job ns/a-1", retry_after="3"), kopf.PermanentError)


class _AnsweringKube(Kube):
    """A Kube whose every request is answered with `status` and `headers`."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        super().__init__(k8s.ApiClient())
        self.status, self.headers = status, headers

    def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        exc = ApiException(status=self.status, reason="Too Many Requests")
        exc.headers = self.headers
        raise exc


@pytest.mark.parametrize(("status", "header", "delay"), [(429, "4", 4.0), (503, "120", 60.0)])
def test_the_operators_client_passes_the_answers_retry_after_on_as_the_retry_delay(
    status: int, header: str, delay: float
) -> None:
    kube = _AnsweringKube(status, {"Retry-After": header, "Content-Type": "application/json"})
    path = transferjob_path("ml", "flowers", "status")
    with pytest.raises(kopf.TemporaryError) as raised:
        asyncio.run(kube.patch(path, {"status": {"phase": "Pending"}}, "TransferJob ml/flowers status"))
    assert raised.value.delay == delay
    with pytest.raises(kopf.TemporaryError) as raised:
        asyncio.run(kube.replace_status(path, {"phase": "Pending"}, "TransferJob ml/flowers status"))
    assert raised.value.delay == delay


def test_the_operators_client_retries_after_the_default_delay_when_the_answer_has_no_retry_after() -> None:
    kube = _AnsweringKube(500, {})
    with pytest.raises(kopf.TemporaryError) as raised:
        asyncio.run(kube.delete("/api/v1/namespaces/ml/configmaps/x", "ConfigMap ml/x"))
    assert raised.value.delay == RETRY_DELAY_SECONDS
