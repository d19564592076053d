"""The fast path's SigV4 signer gives the headers botocore's own S3 signer gives for the same GET."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kubegraft_trainer.storage import GetSigner


def _botocore(url: str, credentials: Credentials, region: str) -> dict[str, str]:
    request = AWSRequest(method="GET", url=url)
    S3SigV4Auth(credentials.get_frozen_credentials(), "s3", region).add_auth(request)
    return dict(request.headers)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8333/bucket/fashion/T-shirt_top/00001.png",
        "http://localhost/bucket/" + quote("odd keys/a b+c%d/ünï.png", safe="/~"),
        "https://my-bucket.s3.eu-west-1.amazonaws.com/data/cat.jpg",
        "https://s3.eu-west-1.amazonaws.com:8443/my-bucket/data/cat.jpg",
    ],
)
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEXAMPLETOKEN//+="], ids=["keys", "session-token"])
def test_signed_get_headers_equal_botocore_s3_signer(url: str, token: str | None) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    expected = _botocore(url, credentials, "eu-west-1")
    if expected["X-Amz-Content-SHA256"] != GetSigner.EMPTY_SHA256:
        pytest.skip(f"botocore signs this URL with {expected['X-Amz-Content-SHA256']}")
    signer = GetSigner("eu-west-1")
    for _ in range(2):  # the second time from the cached signing key
        got = signer.headers(url, "AKIDEXAMPLE", credentials.secret_key, token, expected["X-Amz-Date"])
        assert got == {k: v for k, v in expected.items() if k != "User-Agent"}


def test_cached_signing_key_follows_the_date_and_a_rotated_secret() -> None:
    signer = GetSigner("us-east-1")
    url = "http://127.0.0.1:8333/b/k.png"
    for secret, date in [
        ("secret-1", "20261123T235959Z"),
        ("secret-1", "20261124T000000Z"),
        ("secret-2", "20261124T000001Z"),
    ]:
        expected = _botocore_at(url, Credentials("AK", secret), "us-east-1", date)
        assert signer.headers(url, "AK", secret, None, date)["Authorization"] == expected


def _botocore_at(url: str, credentials: Credentials, region: str, amz_date: str) -> str:
    """botocore's Authorization header for ``GET url`` signed at ``amz_date``."""
    import datetime
    from unittest import mock

    moment = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    with mock.patch("botocore.auth.get_current_datetime", return_value=moment):
        headers = _botocore(url, credentials, region)
    assert headers["X-Amz-Date"] == amz_date
    return headers["Authorization"]
