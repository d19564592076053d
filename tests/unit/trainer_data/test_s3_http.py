"""The fast paths' TLS and proxy settings are resolved in botocore's order, and match the client's."""

from __future__ import annotations

from pathlib import Path

import botocore.session
import pytest
from botocore.config import Config

from kubegraft_trainer.s3_http import resolve

ENDPOINT = "http://s3.internal:9000"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    return monkeypatch


def test_aws_ca_bundle_wins_over_requests_ca_bundle_which_wins_over_botocores_default(
    env: pytest.MonkeyPatch,
) -> None:
    assert resolve(botocore.session.get_session(), Config(), ENDPOINT).verify is True
    env.setenv("REQUESTS_CA_BUNDLE", "/etc/requests.pem")
    assert resolve(botocore.session.get_session(), Config(), ENDPOINT).verify == "/etc/requests.pem"
    env.setenv("AWS_CA_BUNDLE", "/etc/aws.pem")
    settings = resolve(botocore.session.get_session(), Config(), ENDPOINT)
    assert (settings.verify, settings.ca_bundle) == ("/etc/aws.pem", "/etc/aws.pem")


def test_the_profiles_ca_bundle_counts_like_aws_ca_bundle(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "config").write_text("[default]\nca_bundle = /etc/profile.pem\n")
    assert resolve(botocore.session.get_session(), Config(), ENDPOINT).verify == "/etc/profile.pem"


def test_the_default_bundle_is_botocores_own_choice(env: pytest.MonkeyPatch) -> None:
    from botocore.httpsession import get_cert_path

    assert resolve(botocore.session.get_session(), Config(), ENDPOINT).ca_bundle == get_cert_path(True)


def test_a_blank_ca_bundle_is_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("REQUESTS_CA_BUNDLE", " ")
    with pytest.raises(ValueError, match="CA bundle"):
        resolve(botocore.session.get_session(), Config(), ENDPOINT)


def test_environment_proxies_apply_unless_no_proxy_names_the_host(env: pytest.MonkeyPatch) -> None:
    env.setenv("HTTP_PROXY", "http://proxy.corp:3128")
    env.setenv("HTTPS_PROXY", "http://user:pw@proxy.corp:3129")
    settings = resolve(botocore.session.get_session(), Config(), ENDPOINT)
    assert settings.proxy_for(f"{ENDPOINT}/bucket/key") == "http://proxy.corp:3128"
    assert settings.proxy_for("https://s3.eu-west-1.amazonaws.com/b/k") == "http://user:pw@proxy.corp:3129"
    env.setenv("NO_PROXY", "s3.internal")
    assert resolve(botocore.session.get_session(), Config(), ENDPOINT).proxy_for(ENDPOINT) is None


def test_client_config_proxies_and_client_cert_win_over_the_environment(env: pytest.MonkeyPatch) -> None:
    env.setenv("HTTP_PROXY", "http://proxy.corp:3128")
    config = Config(
        proxies={"http": "http://other:8080"},
        proxies_config={"proxy_ca_bundle": "/etc/proxy.pem"},
        client_cert=("/etc/c.pem", "/etc/k.pem"),
    )
    settings = resolve(botocore.session.get_session(), config, ENDPOINT)
    assert settings.proxy_for(ENDPOINT) == "http://other:8080"
    assert settings.proxies_config == {"proxy_ca_bundle": "/etc/proxy.pem"}
    assert settings.client_cert == ("/etc/c.pem", "/etc/k.pem")
