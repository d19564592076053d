"""How a boto3 S3 client connects (TLS trust, proxies, client certificate), resolved the way botocore does.

`storage.S3Storage` reads small objects outside boto3's call stack: signed GETs on botocore's own
`URLLib3Session` and batches of them on libcurl (`multiget`). Those requests must go where boto3's would,
trusting what boto3 trusts, so `resolve` repeats botocore's own resolution for a client created without
``verify`` and ``proxies`` arguments (``Session.create_client`` and ``EndpointCreator.create_endpoint``):

- TLS trust: the ``ca_bundle`` setting (``AWS_CA_BUNDLE`` or ``ca_bundle`` in the profile), else
  ``REQUESTS_CA_BUNDLE``, else botocore's default bundle (certifi's); certificates are always verified;
- proxies: the client config's ``proxies``, else the environment's (``HTTPS_PROXY``/``HTTP_PROXY``, skipped
  for hosts in ``NO_PROXY``), with the config's ``proxies_config`` (``proxy_ca_bundle``, ...);
- the client config's ``client_cert`` (mutual TLS).

Credentials are not here: the signer takes them from the client's credential chain on every batch (static
keys, session tokens, web identity and the container provider, refreshed by botocore before they expire).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.httpsession import ProxyConfiguration, URLLib3Session, get_cert_path
from botocore.utils import get_environ_proxies

__all__ = ["HttpSettings", "resolve"]


@dataclass(frozen=True)
class HttpSettings:
    """A client's connection settings, as botocore resolved (or would resolve) them.

    Attributes:
        verify: True (botocore's default CA bundle), a CA bundle path, or False (no verification).
        proxies: scheme -> proxy URL, as botocore's `ProxyConfiguration` takes them.
        proxies_config: botocore's ``proxies_config`` (proxy_ca_bundle, proxy_client_cert, ...).
        client_cert: a client certificate file, or (certificate, key) files.
    """

    verify: bool | str = True
    proxies: Mapping[str, str] = field(default_factory=dict)
    proxies_config: Mapping[str, Any] = field(default_factory=dict)
    client_cert: str | tuple[str, str] | None = None

    @property
    def ca_bundle(self) -> str | None:
        """The CA bundle file certificates are checked against; None when verification is off."""
        if self.verify is False:
            return None
        if isinstance(self.verify, str):
            return self.verify
        default = get_cert_path(True)  # certifi's bundle, else botocore's own cacert.pem
        return str(default) if default else None

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL requests to ``url`` go through (botocore's choice for its scheme), or None."""
        proxy: str | None = ProxyConfiguration(proxies=dict(self.proxies)).proxy_url_for(url)
        return proxy or None

    def http_session(
        self, *, max_pool_connections: int, connect_timeout: float, read_timeout: float
    ) -> URLLib3Session:
        """A botocore `URLLib3Session` with these settings: what boto3 itself sends requests on."""
        # botocore takes a CA bundle path for verify and (connect, read) for timeout; its stubs say less.
        return URLLib3Session(
            verify=self.verify,  # type: ignore[arg-type]
            proxies=dict(self.proxies),
            timeout=(connect_timeout, read_timeout),  # type: ignore[arg-type]
            max_pool_connections=max_pool_connections,
            client_cert=self.client_cert,
            proxies_config=dict(self.proxies_config) or None,
        )


def resolve(session: botocore.session.Session, config: Config, endpoint_url: str) -> HttpSettings:
    """The connection settings of a client made by ``session`` with ``config`` for ``endpoint_url``.

    Args:
        session: the botocore session the client was created from.
        config: the client's configuration (``client.meta.config``).
        endpoint_url: the URL requests go to (e.g. ``https://s3.eu-west-1.amazonaws.com``).

    Raises:
        ValueError: the CA bundle setting is blank (botocore refuses it too).
    """
    configured: str | None = session.get_config_variable("ca_bundle")
    if configured is None:
        configured = os.environ.get("REQUESTS_CA_BUNDLE")
    verify: bool | str = True if configured is None else configured
    if isinstance(verify, str) and not verify.strip():
        raise ValueError("the CA bundle (AWS_CA_BUNDLE, ca_bundle or REQUESTS_CA_BUNDLE) is an empty string")
    proxies = getattr(config, "proxies", None) or get_environ_proxies(endpoint_url)
    return HttpSettings(
        verify=verify,
        proxies=dict(proxies or {}),
        proxies_config=dict(getattr(config, "proxies_config", None) or {}),
        client_cert=getattr(config, "client_cert", None),
    )
