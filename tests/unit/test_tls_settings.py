"""TLS settings (cag.rpc.tls): what the environment turns on, per service, and the errors that say what to set
before anything listens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cag.errors import InvalidInputError
from cag.registry.settings import RegistrySettings
from cag.router.settings import RouterSettings
from cag.rpc.tls import ClientTls, client_tls, server_tls
from cag.settings import CagSettings
from tests.support.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No TLS variable set; what a registry and a router need to build their settings."""
    for name in list(os.environ):
        if "_TLS_" in name or name.startswith("CAG_TLS"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CAG_DATABASE_URL", "postgresql+psycopg://db/cag")
    monkeypatch.setenv("CAG_NATS_URL", "nats://nats:4222")
    monkeypatch.setenv("CAG_AUTH_KEY_FILE", str(tmp_path / "auth.key"))
    return monkeypatch


def platform_tls(env: pytest.MonkeyPatch, pki: Pki) -> None:
    """What the chart sets in every pod."""
    env.setenv("CAG_TLS_CERT_FILE", str(pki.server_cert_file))
    env.setenv("CAG_TLS_KEY_FILE", str(pki.server_key_file))
    env.setenv("CAG_TLS_CA_FILE", str(pki.ca_file))
    env.setenv("CAG_TLS_SERVER_NAME", "cag-internal")


def test_nothing_set_is_plaintext(env: pytest.MonkeyPatch) -> None:
    settings = RegistrySettings()
    assert (server_tls(settings), client_tls(settings)) == (None, None)


def test_the_shared_variables_give_every_service_mutual_tls(env: pytest.MonkeyPatch, pki: Pki) -> None:
    platform_tls(env, pki)
    listen, dial = server_tls(RegistrySettings()), client_tls(RegistrySettings())
    assert listen is not None and dial is not None
    assert (listen.cert_file, listen.key_file) == (pki.server_cert_file, pki.server_key_file)
    assert listen.client_ca_file == pki.ca_file  # client certificates are asked for
    assert (dial.ca, dial.certificate_chain) == (pki.ca_file.read_bytes(), pki.server_cert_file.read_bytes())
    assert dial.options() == [("grpc.ssl_target_name_override", "cag-internal")]


def test_one_service_turns_client_certificates_off_for_itself(env: pytest.MonkeyPatch, pki: Pki) -> None:
    """The router facing callers outside the platform; the registry keeps asking."""
    platform_tls(env, pki)
    env.setenv("CAG_ROUTER_TLS_CLIENT_AUTH", "false")
    router, registry = server_tls(RouterSettings()), server_tls(RegistrySettings())
    assert router is not None and router.client_ca_file is None
    assert registry is not None and registry.client_ca_file is not None
    assert client_tls(RouterSettings()) is not None  # the router still dials the registry with its certificate


def test_the_command_line_needs_only_the_ca(env: pytest.MonkeyPatch, pki: Pki) -> None:
    env.setenv("CAG_TLS_CA_FILE", str(pki.ca_file))
    settings = CagSettings()
    dial = client_tls(settings)
    assert dial is not None and (dial.ca, dial.certificate_chain, dial.private_key) == (
        pki.ca_file.read_bytes(),
        None,
        None,
    )
    assert "tls_client_auth" not in settings.infra_given  # a default is not something the user set


def test_a_server_with_only_a_ca_says_what_to_set(env: pytest.MonkeyPatch, pki: Pki) -> None:
    env.setenv("CAG_TLS_CA_FILE", str(pki.ca_file))
    with pytest.raises(InvalidInputError, match="CAG_REGISTRY_TLS_CERT_FILE or CAG_TLS_CERT_FILE"):
        server_tls(RegistrySettings())


def test_mutual_tls_without_a_ca_says_what_to_set(env: pytest.MonkeyPatch, pki: Pki) -> None:
    env.setenv("CAG_TLS_CERT_FILE", str(pki.server_cert_file))
    env.setenv("CAG_TLS_KEY_FILE", str(pki.server_key_file))
    with pytest.raises(InvalidInputError, match="CAG_REGISTRY_TLS_CA_FILE or CAG_TLS_CA_FILE.*TLS_CLIENT_AUTH=false"):
        server_tls(RegistrySettings())
    env.setenv("CAG_REGISTRY_TLS_CLIENT_AUTH", "false")
    listen = server_tls(RegistrySettings())
    assert listen is not None and listen.client_ca_file is None


def test_a_certificate_without_its_key_is_refused(env: pytest.MonkeyPatch, pki: Pki) -> None:
    env.setenv("CAG_TLS_CA_FILE", str(pki.ca_file))
    env.setenv("CAG_TLS_CERT_FILE", str(pki.client_cert_file))
    with pytest.raises(InvalidInputError, match="needs its key"):
        client_tls(RegistrySettings())
    with pytest.raises(InvalidInputError, match="needs its certificate and key"):
        server_tls(RegistrySettings())


def test_files_are_read_and_checked_to_be_pem(env: pytest.MonkeyPatch, pki: Pki, tmp_path: Path) -> None:
    platform_tls(env, pki)
    env.setenv("CAG_REGISTRY_TLS_KEY_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(InvalidInputError, match=r"cannot read .*missing.key \(CAG_REGISTRY_TLS_KEY_FILE"):
        server_tls(RegistrySettings())
    der = tmp_path / "ca.der"
    der.write_bytes(b"\x30\x82\x01\x0a")
    env.setenv("CAG_REGISTRY_TLS_KEY_FILE", str(pki.server_key_file))
    env.setenv("CAG_REGISTRY_TLS_CA_FILE", str(der))
    with pytest.raises(InvalidInputError, match="ca.der .*is not PEM"):
        server_tls(RegistrySettings())


def test_the_sdk_builds_tls_from_files(pki: Pki, tmp_path: Path) -> None:
    tls = ClientTls.from_files(pki.ca_file, pki.client_cert_file, pki.client_key_file, server_name="cag-internal")
    assert (tls.ca, tls.private_key) == (pki.ca_file.read_bytes(), pki.client_key_file.read_bytes())
    assert "BEGIN" not in repr(tls)  # keys and certificates stay out of logs
    with pytest.raises(InvalidInputError, match="needs its key"):
        ClientTls.from_files(pki.ca_file, pki.client_cert_file)
    with pytest.raises(InvalidInputError, match="cannot read"):
        ClientTls.from_files(tmp_path / "missing.crt")
