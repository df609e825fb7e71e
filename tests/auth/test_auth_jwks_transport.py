"""How a JWKS URL may be reached: plain http:// refused outside development mode unless the host is
loopback (a pure check on the settings, before any connection), the insecure opt-in, the development-mode
warning, `localhost` held to loopback addresses, TLS verified, and no redirect followed to another host or
from https to http. Servers are real aiohttp servers on 127.0.0.1 (TLS with a throw-away certificate)."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.connector
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from auth_token_helpers import Signer, bearer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.auth import CallerAuthenticator, _LoopbackResolver
from gateway.cli.main import main
from gateway.config import Settings, jwks_url_check, load_settings
from gateway.errors import ConfigError, Unauthenticated
from gateway.keys import GatewayKeys

PRODUCTION = {"GATEWAY_DEV_MODE": "false"}

REFUSED_IN_PRODUCTION = [
    "http://idp.example/.well-known/jwks.json",
    "http://10.0.0.5:8080/jwks.json",
    "http://192.0.2.1/jwks.json",
    "http://127.0.0.1:80@idp.example/jwks.json",  # userinfo: the host is idp.example
    "http://idp.example#@127.0.0.1/jwks.json",  # fragment: the host is idp.example
    "http://127.0.0.1%2f@idp.example/jwks.json",
    "http://localhost.idp.example/jwks.json",
    "http://127.0.0.1.idp.example/jwks.json",
    "http://localhost./jwks.json",  # a name other resolvers may look up; only `localhost` is taken
    "http://127.1/jwks.json",  # inet_aton shorthand: not an address as written, not taken
    "http://0x7f000001/jwks.json",
    "http://[::ffff:127.0.0.1]/jwks.json",  # IPv4-mapped; not listed, so refused
    "http://[fe80::1]/jwks.json",
]
ACCEPTED_IN_PRODUCTION = [
    "https://idp.example/.well-known/jwks.json",
    "https://10.0.0.5/jwks.json",
    "http://127.0.0.1:8080/jwks.json",
    "http://127.9.8.7/jwks.json",
    "http://[::1]:8080/jwks.json",
    "http://localhost:8080/jwks.json",
    "http://LOCALHOST/jwks.json",
]


@pytest.mark.parametrize("url", REFUSED_IN_PRODUCTION)
def test_plain_http_off_loopback_is_refused_outside_development_mode(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={**PRODUCTION, "GATEWAY_JWT_KEYS": url})
    message = str(info.value)
    assert message.startswith("GATEWAY_JWT_KEYS: plain http:// JWKS URL to ")
    assert "\n" not in message
    assert "GATEWAY_JWKS_ALLOW_INSECURE_HTTP" in message
    # Development mode accepts it (the caller warns); so does the explicit opt-in.
    dev = load_settings(environ={"GATEWAY_JWT_KEYS": url})
    checked = jwks_url_check(dev)
    assert checked is not None
    assert checked.insecure
    opted_in = load_settings(environ={**PRODUCTION, "GATEWAY_JWT_KEYS": url,
                                      "GATEWAY_JWKS_ALLOW_INSECURE_HTTP": "true"})
    checked = jwks_url_check(opted_in)
    assert checked is not None
    assert checked.insecure


@pytest.mark.parametrize("url", ACCEPTED_IN_PRODUCTION)
def test_https_and_loopback_http_are_accepted_outside_development_mode(url: str) -> None:
    settings = load_settings(environ={**PRODUCTION, "GATEWAY_JWT_KEYS": url})
    checked = jwks_url_check(settings)
    assert checked is not None
    assert not checked.insecure
    assert checked.loopback_name == (url.startswith("http://") and "localhost" in url.lower())


def test_the_url_rule_leaves_files_and_other_settings_alone(tmp_path: Path) -> None:
    assert jwks_url_check(load_settings(environ={**PRODUCTION, "GATEWAY_JWT_KEYS": str(tmp_path / "k.pem")})) is None
    assert jwks_url_check(load_settings(environ=PRODUCTION)) is None
    assert load_settings(environ={}).jwks_allow_insecure_http is False
    with pytest.raises(ConfigError, match="names no host"):
        load_settings(environ={**PRODUCTION, "GATEWAY_JWT_KEYS": "http:///jwks.json"})


def test_the_authenticator_refuses_before_any_connection(
    gateway_keys: GatewayKeys, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Settings built without load_settings (its check skipped): from_settings applies the rule itself,
    # synchronously, before a session or a socket exists.
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(aiohttp, "ClientSession", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    settings = replace(Settings(), dev_mode=False, jwt_keys="http://192.0.2.1/jwks.json")
    with pytest.raises(ConfigError, match=r"plain http:// JWKS URL to 192\.0\.2\.1 refused"):
        CallerAuthenticator.from_settings(settings, gateway_keys)


def test_serve_refuses_to_start_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GATEWAY_DEV_MODE", "false")
    monkeypatch.setenv("GATEWAY_JWT_KEYS", "http://user:secret@idp.example/jwks.json?token=abc")
    assert main(["serve", "--listen", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("gateway: error: GATEWAY_JWT_KEYS: plain http:// JWKS URL to idp.example refused")
    assert "secret" not in err
    assert "token=abc" not in err
    assert list(tmp_path.iterdir()) == []  # nothing created: no keys folder, no ledger


def test_development_mode_warns_about_plain_http(
    gateway_keys: GatewayKeys, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.auth")
    settings = load_settings(environ={"GATEWAY_JWT_KEYS": "http://user:pw@idp.example/jwks.json?x=1"})
    CallerAuthenticator.from_settings(settings, gateway_keys)  # not started: no fetch
    warned = [r for r in caplog.records if "plain http" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].key_source == "http://idp.example/jwks.json"  # type: ignore[attr-defined]
    assert warned[0].allowed_by == "dev_mode"  # type: ignore[attr-defined]
    caplog.clear()
    opted_in = load_settings(environ={**PRODUCTION, "GATEWAY_JWT_KEYS": "http://idp.example/jwks.json",
                                      "GATEWAY_JWKS_ALLOW_INSECURE_HTTP": "yes"})
    CallerAuthenticator.from_settings(opted_in, gateway_keys)
    assert [r.allowed_by for r in caplog.records if "plain http" in r.getMessage()] == [  # type: ignore[attr-defined]
        "jwks_allow_insecure_http"]
    caplog.clear()
    for url in ("http://127.0.0.1:9/jwks.json", "https://idp.example/jwks.json"):
        CallerAuthenticator.from_settings(load_settings(environ={"GATEWAY_JWT_KEYS": url}), gateway_keys)
    assert not [r for r in caplog.records if "plain http" in r.getMessage()]


# --- real servers ----------------------------------------------------------------------------------------


@dataclass
class Jwks:
    """One JWKS endpoint on 127.0.0.1 (plain or TLS); counts what it serves."""

    base: str = ""
    keys: list[dict[str, Any]] = field(default_factory=list)
    redirect_to: str = ""
    fetches: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        return web.json_response({"keys": self.keys})

    async def moved(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        raise web.HTTPFound(self.redirect_to)


async def _serve(tls: ssl.SSLContext | None = None) -> tuple[Jwks, web.AppRunner]:
    server = Jwks()
    app = web.Application()
    app.router.add_get("/jwks.json", server.handle)
    app.router.add_get("/moved", server.moved)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    server.base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    return server, runner


@pytest.fixture
async def plain() -> AsyncIterator[Jwks]:
    server, runner = await _serve()
    yield server
    await runner.cleanup()


@pytest.fixture
async def other_plain() -> AsyncIterator[Jwks]:
    server, runner = await _serve()
    yield server
    await runner.cleanup()


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    server_context: ssl.SSLContext


def _make_certificate(folder: Path, names: list[x509.GeneralName]) -> Certificate:
    """A self-signed certificate for `names`, and a server context holding it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jwks test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return Certificate(cert_file, context)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return _make_certificate(tmp_path_factory.mktemp("tls"), [
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])


@pytest.fixture
async def tls(certificate: Certificate) -> AsyncIterator[Jwks]:
    server, runner = await _serve(certificate.server_context)
    yield server
    await runner.cleanup()


def trust(certificate: Certificate, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust the test certificate as a CA the machine trusts (what SSL_CERT_FILE does at process start):
    aiohttp verifies with this context for ssl=True; verification itself stays on."""
    monkeypatch.setattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED",
                        ssl.create_default_context(cafile=str(certificate.cert_file)))


@pytest.fixture
def production(gateway_keys: GatewayKeys) -> Callable[..., CallerAuthenticator]:
    def build(url: str, **environ: str) -> CallerAuthenticator:
        settings = load_settings(environ={**PRODUCTION, "GATEWAY_JWT_KEYS": url, **environ},
                                 jwks_refresh_min_interval_seconds=30)
        return CallerAuthenticator.from_settings(settings, gateway_keys)

    return build


async def reason_of(auth: CallerAuthenticator, token: str) -> str:
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(bearer(token))
    return info.value.reason


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_loopback_jwks_over_http_serves_in_production(
    host: str, plain: Jwks, production: Callable[..., CallerAuthenticator], ed_signer: Signer,
) -> None:
    plain.keys = [ed_signer.jwk("k")]
    auth = production(plain.base.replace("127.0.0.1", host) + "/jwks.json")
    await auth.start()
    try:
        assert (await auth.authenticate(bearer(ed_signer.token(headers={"kid": "k"})))).service == "orders-service"
        assert plain.fetches == 1
    finally:
        await auth.close()


class _Answers(AbstractResolver):
    """A resolver that answers `localhost` with the given addresses (a tampered /etc/hosts or DNS)."""

    addresses: tuple[str, ...] = ()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=address, port=port, family=family, proto=0,
                              flags=socket.AI_NUMERICHOST) for address in self.addresses]

    async def close(self) -> None:
        pass


async def test_localhost_only_ever_connects_to_a_loopback_address(
    plain: Jwks, production: Callable[..., CallerAuthenticator], ed_signer: Signer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain.keys = [ed_signer.jwk("k")]
    monkeypatch.setattr("gateway.auth.DefaultResolver", _Answers)
    # localhost resolving elsewhere (here TEST-NET-1): the load fails before any connection is tried.
    monkeypatch.setattr(_Answers, "addresses", ("192.0.2.1",))
    auth = production(plain.base.replace("127.0.0.1", "localhost") + "/jwks.json")
    await auth.start()
    try:
        assert auth.keys.keyset is None
        assert await reason_of(auth, ed_signer.token(headers={"kid": "k"})) == "keys-unavailable"
    finally:
        await auth.close()
    # A mixed answer keeps only the loopback address, which is the one connected to.
    monkeypatch.setattr(_Answers, "addresses", ("192.0.2.1", "127.0.0.1"))
    resolver = _LoopbackResolver()
    assert [r["host"] for r in await resolver.resolve("localhost", 80)] == ["127.0.0.1"]
    auth = production(plain.base.replace("127.0.0.1", "localhost") + "/jwks.json")
    await auth.start()
    try:
        assert await auth.authenticate(bearer(ed_signer.token(headers={"kid": "k"})))
        assert plain.fetches == 1
    finally:
        await auth.close()


async def test_a_redirect_to_another_host_is_not_followed(
    plain: Jwks, other_plain: Jwks, production: Callable[..., CallerAuthenticator], ed_signer: Signer,
) -> None:
    other_plain.keys = [ed_signer.jwk("k")]
    plain.redirect_to = other_plain.base.replace("127.0.0.1", "localhost") + "/jwks.json"
    auth = production(plain.base + "/moved")
    await auth.start()
    try:
        assert await reason_of(auth, ed_signer.token(headers={"kid": "k"})) == "keys-unavailable"
        assert (plain.fetches, other_plain.fetches) == (1, 0)
    finally:
        await auth.close()


async def test_an_untrusted_certificate_is_refused(
    tls: Jwks, production: Callable[..., CallerAuthenticator], ed_signer: Signer,
) -> None:
    tls.keys = [ed_signer.jwk("k")]
    auth = production(tls.base + "/jwks.json")
    await auth.start()
    try:
        assert auth.keys.keyset is None
        assert await reason_of(auth, ed_signer.token(headers={"kid": "k"})) == "keys-unavailable"
        assert tls.fetches == 0  # the handshake failed: no request was sent
    finally:
        await auth.close()


async def test_a_certificate_for_another_name_is_refused(
    production: Callable[..., CallerAuthenticator], ed_signer: Signer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Trusted, but issued for idp.example, not for the 127.0.0.1 the URL names.
    other = _make_certificate(tmp_path, [x509.DNSName("idp.example")])
    trust(other, monkeypatch)
    server, runner = await _serve(other.server_context)
    server.keys = [ed_signer.jwk("k")]
    auth = production(server.base + "/jwks.json")
    try:
        await auth.start()
        assert auth.keys.keyset is None
        assert server.fetches == 0
    finally:
        await auth.close()
        await runner.cleanup()


async def test_https_to_http_redirect_is_not_followed(
    tls: Jwks, plain: Jwks, production: Callable[..., CallerAuthenticator], ed_signer: Signer,
    certificate: Certificate, monkeypatch: pytest.MonkeyPatch,
) -> None:
    trust(certificate, monkeypatch)
    tls.keys = [ed_signer.jwk("k")]
    plain.keys = [ed_signer.jwk("k")]
    auth = production(tls.base + "/jwks.json")
    await auth.start()
    try:
        # Trusted: the TLS endpoint serves (so the refusal below is the redirect's, not the handshake's).
        assert await auth.authenticate(bearer(ed_signer.token(headers={"kid": "k"})))
    finally:
        await auth.close()
    tls.redirect_to = plain.base + "/jwks.json"
    auth = production(tls.base + "/moved")
    await auth.start()
    try:
        assert await reason_of(auth, ed_signer.token(headers={"kid": "k"})) == "keys-unavailable"
        assert (tls.fetches, plain.fetches) == (2, 0)
    finally:
        await auth.close()
