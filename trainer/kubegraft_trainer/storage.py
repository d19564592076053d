"""Object storage for the trainer: one small interface over S3 (boto3) and the local filesystem.

The data loader (`dataset`, `pipeline`), the backbone loader, checkpoints and the exporter call `open_storage`
with a URI from the spec (``s3://bucket/prefix``, ``file:///path`` or a plain path) and then address objects
by keys relative to that URI. Failures surface as `TrainerError` with a `FailureReason`: a missing bucket or
object is not found (not retryable), bad credentials or AccessDenied are `StorageAccessDenied` (not
retryable), and connection trouble that outlasted botocore's retries is retryable. Messages never hold
credentials.

S3 credentials come from the standard chain: the ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` variables
the operator injects from the TransferJob's Secret, or the pod's cloud identity. One boto3 client, created
once, is shared by every thread (boto3 clients are thread-safe); its connection pool is sized for the
loader's threads.

Reading many small objects is dominated by botocore's per-request CPU (about 3 ms: event hooks, parsing),
which on a few cores caps a training pod at a few hundred images per second. `S3Storage.read_bytes`
therefore signs each GET itself (`GetSigner`: AWS Signature Version 4 for a body-less GET, with the client's
own credentials, refreshed by botocore's provider chain, its region and its addressing; the derived signing
key is cached per day, a seventh of botocore's signer's CPU) and sends it on botocore's own HTTP session
(`URLLib3Session`, with keep-alive); anything but a 200 answer is redone through the normal boto3 call, so
errors, retries and their reasons stay botocore's. `S3Storage.read_many` goes further for the data loader: a
batch's signed GETs run at once on libcurl (`multiget`), at an eighth of urllib3's client CPU per small
object, with the same fallback for whatever does not come back with a 200.

Both fast paths connect exactly as the boto3 client does (`s3_http.resolve`: the CA bundle from
``AWS_CA_BUNDLE``/the profile/``REQUESTS_CA_BUNDLE``/botocore's default, certificates verified, the proxy from
the client config or ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``, the client certificate) and sign with the
client's current credentials (session tokens, web identity, container credentials, refreshed by botocore).
A certificate that does not verify is `StorageAccessDenied` naming ``AWS_CA_BUNDLE``.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable
from urllib.parse import quote, urlsplit

import boto3
import botocore.session
from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.awsrequest import AWSPreparedRequest
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)
from botocore.httpsession import URLLib3Session
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from kubegraft.runtime import FailureReason
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.multiget import MultiGetter
from kubegraft_trainer.s3_http import HttpSettings, resolve

if TYPE_CHECKING:
    from kubegraft.spec import StorageSpec

__all__ = ["LocalStorage", "ObjectInfo", "S3Storage", "Storage", "open_storage"]

_T = TypeVar("_T")
log = logging.getLogger(__name__)

# Error codes S3 (and S3-compatible servers) answer for bad or insufficient credentials.
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
        "403",
        "Forbidden",
    }
)
_MISSING_BUCKET_CODES = frozenset({"NoSuchBucket"})
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# Raised by botocore while streaming a body, after the request (and its retries) succeeded.
_STREAM_ERRORS = (ReadTimeoutError, IncompleteReadError, ResponseStreamingError, ConnectionClosedError)
_DEFAULT_MAX_ATTEMPTS = 5
_MULTIPART_THRESHOLD = 64 * 1024 * 1024
_FAST_MISSES_ALLOWED = 20
# Answers that say "try again later", not "this path cannot work": they do not count as fast-path misses.
_TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # the payload hash of a GET
_DEFAULT_PORTS = {"http": 80, "https": 443}


class GetSigner:
    """AWS Signature Version 4 headers for a GET without a body or query string (an S3 object read).

    The same canonical request, string to sign and headers as botocore's ``S3SigV4Auth`` (host,
    x-amz-content-sha256 of the empty body, x-amz-date, and x-amz-security-token with temporary credentials),
    with the day's signing key derived once instead of four HMACs per request.

    Args:
        region: The bucket's region (the client's ``meta.region_name``).
        service: The signing name.
    """

    EMPTY_SHA256 = _EMPTY_SHA256

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._lock = threading.Lock()
        self._key: tuple[str, str, bytes] | None = None  # (secret key, date, signing key)

    def _signing_key(self, secret: str, date: str) -> bytes:
        with self._lock:
            cached = self._key
        if cached is not None and cached[0] == secret and cached[1] == date:
            return cached[2]
        key = f"AWS4{secret}".encode()
        for part in (date, self.region, self.service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        with self._lock:
            self._key = (secret, date, key)
        return key

    def headers(
        self, url: str, access_key: str, secret_key: str, token: str | None, amz_date: str | None = None
    ) -> dict[str, str]:
        """The headers that authenticate ``GET url`` (already URI-encoded, as it is sent).

        Args:
            url: The object's URL.
            access_key: Access key id.
            secret_key: Secret access key.
            token: Session token of temporary credentials, or None.
            amz_date: The request time as ``YYYYMMDDTHHMMSSZ`` (default: now, UTC).

        Returns:
            Authorization, X-Amz-Date, X-Amz-Content-SHA256 and (with a token) X-Amz-Security-Token.
        """
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
            host = f"{host}:{parts.port}"
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        date = amz_date[:8]
        canonical_headers = f"host:{host}\nx-amz-content-sha256:{_EMPTY_SHA256}\nx-amz-date:{amz_date}\n"
        signed = "host;x-amz-content-sha256;x-amz-date"
        if token:
            canonical_headers += f"x-amz-security-token:{token}\n"
            signed += ";x-amz-security-token"
        canonical = f"GET\n{parts.path or '/'}\n\n{canonical_headers}\n{signed}\n{_EMPTY_SHA256}"
        scope = f"{date}/{self.region}/{self.service}/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(
            self._signing_key(secret_key, date), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        headers = {
            "X-Amz-Date": amz_date,
            "X-Amz-Content-SHA256": _EMPTY_SHA256,
            "Authorization": (
                f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, "
                f"Signature={signature}"
            ),
        }
        if token:
            headers["X-Amz-Security-Token"] = token
        return headers


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key relative to the storage root, its size in bytes and when it was written.

    ``modified`` (seconds since the epoch; None where unknown) does not take part in comparisons.
    """

    key: str
    size: int
    modified: float | None = field(default=None, compare=False)


@runtime_checkable
class Storage(Protocol):
    """Objects under one root URI, addressed by keys relative to it (``a/b.png``)."""

    uri: str

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, in key order."""
        ...

    def read_bytes(self, key: str) -> bytes:
        """Return the content of ``key``."""
        ...

    def read_many(self, keys: Sequence[str]) -> builtins.list[bytes | TrainerError]:
        """The contents of ``keys`` in order; a key that cannot be read has its `TrainerError` instead."""
        ...

    def write_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` as ``key``, replacing any previous content."""
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds an object."""
        ...

    def upload_file(self, local: Path, key: str) -> None:
        """Store the local file ``local`` as ``key`` (multipart for big files)."""
        ...

    def upload_dir(self, local_dir: Path, key_prefix: str) -> None:
        """Store every file under ``local_dir`` as ``key_prefix/<relative path>``."""
        ...

    def download_file(self, key: str, dest: Path) -> None:
        """Write the object ``key`` to the local file ``dest`` (parents created)."""
        ...

    def delete_prefix(self, key_prefix: str) -> None:
        """Delete every object whose key starts with ``key_prefix``."""
        ...

    def join(self, *parts: str) -> str:
        """The full URI of the key made of ``parts`` (the root URI without parts)."""
        ...


def open_storage(
    uri: str, storage: StorageSpec, *, not_found_reason: str = FailureReason.DATASET_NOT_FOUND
) -> Storage:
    """Open the storage at ``uri``.

    Args:
        uri: ``s3://bucket[/prefix]``, ``file:///path`` or a plain filesystem path.
        storage: Endpoint, region and addressing style for S3 (ignored for local paths).
        not_found_reason: The `FailureReason` raised when the bucket, root or a read object is missing:
            `DatasetNotFound` for data (the default), e.g. `BackboneUnavailable` for weights.

    Returns:
        An `S3Storage` for ``s3://`` URIs, else a `LocalStorage`.

    Raises:
        TrainerError: ``InvalidSpec`` for a malformed URI.
    """
    if uri.startswith("s3://"):
        return S3Storage(uri, storage, not_found_reason=not_found_reason)
    return LocalStorage(uri, not_found_reason=not_found_reason)


def _clean_key(*parts: str) -> str:
    """Join key parts with '/', dropping empty segments and redundant slashes."""
    segments = [s for part in parts for s in part.split("/") if s and s != "."]
    if ".." in segments:
        raise TrainerError(
            FailureReason.INVALID_SPEC, f"object key {'/'.join(parts)!r} must not contain '..' segments"
        )
    return "/".join(segments)


def _redact(text: str) -> str:
    """Remove any credential value from the environment that a server or library echoed into ``text``."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _retry_mode() -> Literal["standard", "adaptive", "legacy"]:
    """botocore's retry mode: AWS_RETRY_MODE if valid, else standard."""
    mode = os.environ.get("AWS_RETRY_MODE", "standard")
    if mode == "adaptive":
        return "adaptive"
    if mode == "legacy":
        return "legacy"
    return "standard"


def _max_attempts() -> int:
    try:
        return max(1, int(os.environ.get("AWS_MAX_ATTEMPTS", _DEFAULT_MAX_ATTEMPTS)))
    except ValueError:
        return _DEFAULT_MAX_ATTEMPTS


def _curl_handles(settings: HttpSettings) -> bool:
    """Whether libcurl can connect as botocore would: not through HTTPS forwarding or a proxy client cert."""
    config = settings.proxies_config
    return not config.get("proxy_use_forwarding_for_https") and not config.get("proxy_client_cert")


class S3Storage:
    """Objects under ``s3://bucket/prefix/`` through one thread-safe boto3 client.

    Args:
        uri: ``s3://bucket`` or ``s3://bucket/prefix``; the prefix is treated as a folder.
        spec: Endpoint, region and addressing style.
        not_found_reason: The `FailureReason` for a missing bucket or object on reads.
        max_pool_connections: Size of the HTTP connection pool; at least the number of threads fetching.
        multipart_threshold: Files at least this big move in parallel parts (upload_file, download_file).
        fast_get: Read objects with SigV4-signed GETs on botocore's HTTP session (a third of boto3's CPU
            per request), with the client's TLS and proxy settings; off, every read is a boto3 ``get_object``.
        batched_get: With ``fast_get``, run the signed GETs of a `read_many` batch at once on libcurl
            (pycurl, where installed; an eighth of urllib3's client CPU per small object).
    """

    def __init__(
        self,
        uri: str,
        spec: StorageSpec,
        *,
        not_found_reason: str = FailureReason.DATASET_NOT_FOUND,
        max_pool_connections: int = 64,
        multipart_threshold: int = _MULTIPART_THRESHOLD,
        fast_get: bool = True,
        batched_get: bool = True,
    ) -> None:
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise TrainerError(FailureReason.INVALID_SPEC, f"{uri!r} is not an s3://bucket/prefix URI")
        self.bucket = parts.netloc
        self.root = _clean_key(parts.path)
        self.uri = f"s3://{self.bucket}/{self.root}" if self.root else f"s3://{self.bucket}"
        self._not_found_reason = not_found_reason
        self._endpoint = spec.endpoint or "AWS S3"
        style = spec.addressing_style
        if style == "auto" and spec.endpoint:
            style = "path"  # S3-compatible servers (MinIO, SeaweedFS, Ceph) rarely serve virtual hosts.
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": style},
            retries={"mode": _retry_mode(), "max_attempts": _max_attempts()},
            max_pool_connections=max_pool_connections,
            connect_timeout=10,
            read_timeout=60,
            tcp_keepalive=True,
        )
        region = spec.region or ("us-east-1" if spec.endpoint else None)
        botocore_session = botocore.session.get_session()
        self._session = boto3.session.Session(botocore_session=botocore_session)
        try:
            self._client: Any = self._session.client(
                "s3", endpoint_url=spec.endpoint, region_name=region, config=config
            )
            settings = resolve(botocore_session, self._client.meta.config, self._client.meta.endpoint_url)
        except (BotoCoreError, ValueError) as exc:
            raise TrainerError(
                FailureReason.STORAGE_ACCESS_DENIED,
                f"cannot set up the S3 client for {self._endpoint}: {_redact(str(exc))[:300]}",
            ) from None
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=max(5 * 1024 * 1024, min(multipart_threshold, 16 * 1024 * 1024)),
            max_concurrency=8,
        )
        self._http: URLLib3Session | None = None  # botocore's HTTP session, the client's TLS and proxies
        self._signer: GetSigner | None = None
        self._base_url: str | None = None  # "<scheme>://<host>/[<bucket>/]": where keys go, for fast GETs
        self._fast_misses = 0
        self._multi: MultiGetter | None = None  # batches of signed GETs on libcurl (`read_many`)
        self._multi_misses = 0
        if fast_get:
            self._http = settings.http_session(
                max_pool_connections=max_pool_connections, connect_timeout=10, read_timeout=60
            )
            if batched_get and MultiGetter.available() and _curl_handles(settings):
                self._multi = MultiGetter(
                    ca_bundle=settings.ca_bundle,
                    verify=settings.verify is not False,
                    proxy=settings.proxy_for(self._client.meta.endpoint_url),
                    proxy_ca_bundle=settings.proxies_config.get("proxy_ca_bundle"),
                    client_cert=settings.client_cert,
                )

    def __repr__(self) -> str:
        return f"S3Storage({self.uri!r}, endpoint={self._endpoint!r})"

    @property
    def batches_reads(self) -> bool:
        """Whether `read_many` runs a batch's GETs concurrently itself (libcurl), so few threads suffice."""
        return self._multi is not None and self._http is not None

    def _key(self, key: str) -> str:
        return _clean_key(self.root, key)

    def join(self, *parts: str) -> str:
        """The full ``s3://`` URI of the key made of ``parts``."""
        key = self._key("/".join(parts))
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    def _error(self, exc: Exception, action: str, key: str, *, writing: bool = False) -> TrainerError:
        """Translate a boto3/botocore exception into a `TrainerError` without leaking credentials."""
        where = self.join(key)
        missing_reason = FailureReason.OUTPUT_NOT_WRITABLE if writing else self._not_found_reason
        cause = exc.__cause__ or exc.__context__
        if isinstance(exc, S3UploadFailedError | S3TransferFailedError) and isinstance(cause, Exception):
            exc = cause
        if isinstance(exc, SSLError):
            return TrainerError(
                FailureReason.STORAGE_ACCESS_DENIED,
                f"TLS verification of {self._endpoint} failed while trying to {action} {where} "
                f"({_redact(str(exc))[-200:]}): set AWS_CA_BUNDLE to the CA bundle that signed its "
                "certificate",
            )
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return TrainerError(
                FailureReason.STORAGE_ACCESS_DENIED,
                f"no S3 credentials found to {action} {where}: set the TransferJob's storage.secretRef "
                "or give the pod a cloud identity",
            )
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in _DENIED_CODES or status == 403:
                return TrainerError(
                    FailureReason.STORAGE_ACCESS_DENIED,
                    f"access denied ({code or status}) to {action} {where} at {self._endpoint}: check the "
                    "credentials in storage.secretRef and their permissions",
                )
            if code in _MISSING_BUCKET_CODES:
                return TrainerError(
                    missing_reason, f"bucket {self.bucket!r} does not exist at {self._endpoint} ({where})"
                )
            if code in _MISSING_KEY_CODES or status == 404:
                return TrainerError(missing_reason, f"{where} does not exist at {self._endpoint}")
            retryable = status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout")
            detail = _redact(str(error.get("Message", "")))[:200]
            return TrainerError(
                FailureReason.TRAINING_ERROR if retryable else missing_reason,
                f"S3 refused to {action} {where} ({code or status}{': ' + detail if detail else ''})",
                retryable=retryable,
            )
        if isinstance(exc, BotoCoreError | OSError):
            return TrainerError(
                FailureReason.TRAINING_ERROR,
                f"object storage at {self._endpoint} unreachable while trying to {action} {where} after "
                f"{_max_attempts()} attempts ({type(exc).__name__})",
                retryable=True,
            )
        return TrainerError(
            FailureReason.TRAINING_ERROR, f"failed to {action} {where}: {_redact(str(exc))[:200]}"
        )

    def _call(self, action: str, key: str, fn: Callable[[], _T], *, writing: bool = False) -> _T:
        try:
            return fn()
        except (BotoCoreError, ClientError, S3UploadFailedError, S3TransferFailedError, OSError) as exc:
            raise self._error(exc, action, key, writing=writing) from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object under the root whose relative key starts with ``prefix`` (paginated)."""
        full = self._key(prefix)
        if full and (prefix.endswith("/") or not prefix):
            full += "/"
        strip = len(self.root) + 1 if self.root else 0
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": 1000}
        )
        iterator = iter(pages)
        while True:
            page = self._call("list", prefix, lambda: next(iterator, None))
            if page is None:
                return
            for item in page.get("Contents", []):
                key = str(item["Key"])
                if key.endswith("/"):
                    continue  # a folder marker, not an object
                written = item.get("LastModified")
                yield ObjectInfo(
                    key=key[strip:],
                    size=int(item.get("Size", 0)),
                    modified=written.timestamp() if written is not None else None,
                )

    @retry(
        retry=retry_if_exception_type(_STREAM_ERRORS),
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=0.2, max=2),
        reraise=True,
    )
    def _get(self, full_key: str) -> bytes:
        # botocore retries the request; a body cut off mid-stream is retried here.
        body = self._client.get_object(Bucket=self.bucket, Key=full_key)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def _object_url(self, full_key: str) -> str:
        if self._base_url is None:
            # botocore resolves endpoint, region and addressing style; keep everything before the key.
            probe = "kubegraft-probe"
            url = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": probe}
            )
            self._base_url = url.split("?", 1)[0].removesuffix(probe)
        return self._base_url + quote(full_key, safe="/~")

    def _signed_gets(self, full_keys: Sequence[str]) -> builtins.list[tuple[str, dict[str, str]]] | None:
        """URL and SigV4 headers of a GET per key, with the client's current credentials; None without any."""
        credentials = self._session.get_credentials()
        if credentials is None:
            return None
        frozen = credentials.get_frozen_credentials()  # refreshed here when temporary ones expire
        if not frozen.access_key or not frozen.secret_key:
            return None
        if self._signer is None:
            self._signer = GetSigner(self._client.meta.region_name)
        signed = []
        for full_key in full_keys:
            url = self._object_url(full_key)
            headers = self._signer.headers(url, frozen.access_key, frozen.secret_key, frozen.token)
            signed.append((url, headers))
        return signed

    def _get_fast(self, full_key: str) -> tuple[bytes | None, bool]:
        """A SigV4-signed GET on botocore's HTTP session: the body, or None on any failure (boto3 redoes it);
        and whether the server answered with a transient error (throttling, 5xx), which says nothing against
        the fast path."""
        if self._http is None:
            return None, False
        try:
            signed = self._signed_gets([full_key])
            if signed is None:
                return None, False
            ((url, headers),) = signed
            # A plain dict of headers is what urllib3 sends (botocore's stubs ask for its HTTPHeaders).
            request = AWSPreparedRequest("GET", url, headers, None, stream_output=False)  # type: ignore[arg-type]
            response = self._http.send(request)
            if response.status_code != 200:
                return None, response.status_code in _TRANSIENT_STATUSES
            return bytes(response.content), False
        except (BotoCoreError, OSError):  # botocore wraps urllib3's (SSLError, ProxyConnectionError, ...)
            return None, False

    def read_bytes(self, key: str) -> bytes:
        """Return the content of ``key``."""
        full_key = self._key(key)
        data, transient = self._get_fast(full_key)
        if data is not None:
            return data
        data = self._call("read", key, lambda: self._get(full_key))  # botocore's retries and backoff
        if self._http is not None and not transient:
            # boto3 read what the fast path could not (e.g. a bucket in another region that botocore's
            # redirect handling found): after a few such cases, stop paying for the doomed first try.
            self._fast_misses += 1
            if self._fast_misses >= _FAST_MISSES_ALLOWED:
                self._http = None
                log.info(
                    "Reading %s with boto3 only: signed GETs keep failing where boto3 succeeds", self.uri
                )
        return data

    def read_many(self, keys: Sequence[str]) -> builtins.list[bytes | TrainerError]:
        """The contents of ``keys``, fetched at once; a key that cannot be read has its `TrainerError`.

        The GETs of a batch run concurrently on libcurl (`multiget`) where pycurl is installed and the fast
        path is on; a key that does not come back with a 200 is read again through `read_bytes` (urllib3,
        then boto3), which gives a missing or forbidden object its reason. After several keys that libcurl
        missed and `read_bytes` then read, batches go through `read_bytes` only.
        """
        fetched: builtins.list[bytes | None] = [None] * len(keys)
        multi = self._multi if self._http is not None else None
        if multi is not None and keys:
            fetched = self._get_many_fast(multi, keys)
        out: builtins.list[bytes | TrainerError] = []
        for key, body in zip(keys, fetched, strict=True):
            if body is not None:
                out.append(body)
                continue
            try:
                data = self.read_bytes(key)
            except TrainerError as exc:
                out.append(exc)
                continue
            if multi is not None:
                # libcurl missed what the per-key path then read: after a few, stop paying for the doomed try.
                self._multi_misses += 1
                if self._multi_misses >= _FAST_MISSES_ALLOWED and self._multi is not None:
                    self._multi = None
                    log.info("Reading %s without libcurl: its GETs keep failing where boto3's work", self.uri)
            out.append(data)
        return out

    def _get_many_fast(self, multi: MultiGetter, keys: Sequence[str]) -> builtins.list[bytes | None]:
        """Signed GETs of ``keys`` on libcurl; None where that failed (or credentials are missing)."""
        try:
            signed = self._signed_gets([self._key(key) for key in keys])
            return [None] * len(keys) if signed is None else multi.get_many(signed)
        except Exception:  # libcurl or signing trouble: the per-key path redoes them and names the cause
            log.debug("batched GETs failed; reading one by one", exc_info=True)
            return [None] * len(keys)

    def write_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` as ``key``."""
        self._call(
            "write",
            key,
            lambda: self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data),
            writing=True,
        )

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds an object (a missing bucket counts as not found)."""
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if status == 404:
                return False
            raise self._error(exc, "check", key) from None
        except BotoCoreError as exc:
            raise self._error(exc, "check", key) from None
        return True

    def upload_file(self, local: Path, key: str) -> None:
        """Store the local file ``local`` as ``key`` (in parallel parts above the multipart threshold)."""
        self._call(
            "write",
            key,
            lambda: self._client.upload_file(str(local), self.bucket, self._key(key), Config=self._transfer),
            writing=True,
        )

    def upload_dir(self, local_dir: Path, key_prefix: str) -> None:
        """Store every file under ``local_dir`` as ``key_prefix/<relative path>``, eight at a time."""
        files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="s3-upload") as pool:
            futures = [
                pool.submit(self.upload_file, p, f"{key_prefix}/{p.relative_to(local_dir).as_posix()}")
                for p in files
            ]
            for future in futures:
                future.result()

    def copy_from(self, source: S3Storage, source_key: str, key: str) -> None:
        """Copy ``source_key`` of ``source`` (same endpoint and credentials) to ``key``, inside the server.

        boto3's managed copy: one CopyObject, or a multipart UploadPartCopy for big objects; no bytes pass
        through the pod.
        """
        self._call(
            "write",
            key,
            lambda: self._client.copy(
                {"Bucket": source.bucket, "Key": source._key(source_key)},
                self.bucket,
                self._key(key),
                Config=self._transfer,
            ),
            writing=True,
        )

    def download_file(self, key: str, dest: Path) -> None:
        """Write the object ``key`` to ``dest`` (parents created; multipart ranged GETs for big objects)."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._call(
            "read",
            key,
            lambda: self._client.download_file(self.bucket, self._key(key), str(dest), Config=self._transfer),
        )

    def delete_prefix(self, key_prefix: str) -> None:
        """Delete every object whose key starts with ``key_prefix``, 1000 per request."""
        keys = [info.key for info in self.list(key_prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            response = self._call(
                "delete",
                key_prefix,
                lambda b=batch: self._client.delete_objects(  # type: ignore[misc]
                    Bucket=self.bucket, Delete={"Objects": b, "Quiet": True}
                ),
                writing=True,
            )
            if errors := response.get("Errors"):
                first = errors[0]
                raise TrainerError(
                    FailureReason.OUTPUT_NOT_WRITABLE,
                    f"could not delete {len(errors)} objects under {self.join(key_prefix)} "
                    f"(first: {first.get('Key')}: {first.get('Code')})",
                )


class LocalStorage:
    """Files under a local folder, for local runs and tests; the same interface as `S3Storage`.

    Args:
        uri: ``file:///path`` or a plain path; relative paths resolve against the working directory.
        not_found_reason: The `FailureReason` for a missing root or file on reads.
    """

    def __init__(self, uri: str, *, not_found_reason: str = FailureReason.DATASET_NOT_FOUND) -> None:
        if uri.startswith("file://"):
            path = urlsplit(uri).path
            if not path:
                raise TrainerError(FailureReason.INVALID_SPEC, f"{uri!r} has no path")
            self.root = Path(path)
            self._scheme = "file://"
        else:
            self.root = Path(uri)
            self._scheme = ""
        self.uri = self._scheme + str(self.root)
        self._not_found_reason = not_found_reason

    def __repr__(self) -> str:
        return f"LocalStorage({self.uri!r})"

    def _path(self, key: str) -> Path:
        return self.root / _clean_key(key) if _clean_key(key) else self.root

    def join(self, *parts: str) -> str:
        """The URI (``file://`` if opened so, else a plain path) of the key made of ``parts``."""
        return self._scheme + str(self._path("/".join(parts)))

    def _missing(self, key: str) -> TrainerError:
        return TrainerError(self._not_found_reason, f"{self.join(key)} does not exist")

    def _os_error(self, exc: OSError, action: str, key: str, *, writing: bool = False) -> TrainerError:
        if isinstance(exc, PermissionError):
            return TrainerError(
                FailureReason.STORAGE_ACCESS_DENIED, f"permission denied to {action} {self.join(key)}"
            )
        if writing:
            return TrainerError(
                FailureReason.OUTPUT_NOT_WRITABLE, f"cannot {action} {self.join(key)}: {exc.strerror or exc}"
            )
        if isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError):
            return self._missing(key)
        return TrainerError(
            FailureReason.TRAINING_ERROR, f"cannot {action} {self.join(key)}: {exc}", retryable=True
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every file whose key relative to the root starts with ``prefix``, in key order."""
        clean = _clean_key(prefix)
        if clean and not prefix.endswith("/"):
            start = self._path(str(PurePosixPath(clean).parent))
        else:
            start = self._path(clean)
        if clean and prefix.endswith("/"):
            clean += "/"
        if not start.is_dir():
            return
        found: builtins.list[ObjectInfo] = []
        # os.scandir, not pathlib: a listing of 2,000 files took 0.03 s through Path objects.
        folders = [(str(start), start.relative_to(self.root).as_posix())]
        while folders:
            folder, relative = folders.pop()
            base = "" if relative == "." else relative + "/"
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir():
                        if not entry.is_symlink():  # as os.walk: symbolic links to folders are not followed
                            folders.append((entry.path, base + entry.name))
                        continue
                    key = base + entry.name
                    if not key.startswith(clean) or entry.name.startswith(".kubegraft-tmp-"):
                        continue
                    try:
                        stat = entry.stat()
                    except FileNotFoundError:  # a symbolic link to nothing holds no object
                        continue
                    found.append(ObjectInfo(key=key, size=stat.st_size, modified=stat.st_mtime))
        yield from sorted(found, key=lambda info: info.key)

    def read_many(self, keys: Sequence[str]) -> builtins.list[bytes | TrainerError]:
        """The contents of ``keys`` in order; a key that cannot be read has its `TrainerError` instead."""
        out: builtins.list[bytes | TrainerError] = []
        for key in keys:
            try:
                out.append(self.read_bytes(key))
            except TrainerError as exc:
                out.append(exc)
        return out

    def read_bytes(self, key: str) -> bytes:
        """Return the content of ``key``."""
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise self._os_error(exc, "read", key) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` as ``key`` atomically (a temporary file renamed into place)."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kubegraft-tmp-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            Path(tmp).replace(path)
        except OSError as exc:
            raise self._os_error(exc, "write", key, writing=True) from None

    def exists(self, key: str) -> bool:
        """Whether ``key`` is a file."""
        return self._path(key).is_file()

    def upload_file(self, local: Path, key: str) -> None:
        """Copy the local file ``local`` to ``key``."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, path)
        except OSError as exc:
            raise self._os_error(exc, "write", key, writing=True) from None

    def upload_dir(self, local_dir: Path, key_prefix: str) -> None:
        """Copy every file under ``local_dir`` to ``key_prefix/<relative path>``."""
        for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
            self.upload_file(path, f"{key_prefix}/{path.relative_to(local_dir).as_posix()}")

    def download_file(self, key: str, dest: Path) -> None:
        """Copy ``key`` to the local file ``dest`` (parents created)."""
        dest = Path(dest)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self._path(key), dest)
        except OSError as exc:
            raise self._os_error(exc, "read", key) from None

    def delete_prefix(self, key_prefix: str) -> None:
        """Delete every file whose key starts with ``key_prefix``, then the folders left empty."""
        try:
            for info in builtins.list(self.list(key_prefix)):
                path = self._path(info.key)
                path.unlink()
                for parent in path.parents:
                    if parent == self.root or not parent.is_relative_to(self.root) or any(parent.iterdir()):
                        break
                    parent.rmdir()
        except OSError as exc:
            raise self._os_error(exc, "delete", key_prefix, writing=True) from None
