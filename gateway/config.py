"""Gateway settings: defaults, an optional YAML/JSON config file, and `GATEWAY_*` variables (which win).

Settings are read once into a frozen `Settings`; a bad value raises `ConfigError` naming the setting,
so the gateway never starts half-configured. Every setting is documented in docs/configuration.md.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml
from yarl import URL

from gateway.errors import ConfigError

DEFAULT_ALGORITHMS = ("EdDSA", "ES256", "RS256")
ASYMMETRIC_ALGORITHMS = frozenset(
    {"EdDSA", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:8080"
    profiles_dir: Path = Path("partner_profiles")
    ledger_url: str = "sqlite:///data/ledger.sqlite3"
    keys_dir: Path = Path("keys")
    # Development mode creates missing keys on first run (with a warning); production refuses to start.
    dev_mode: bool = True
    jwt_keys: str | None = None  # PEM public key file, JWKS file or JWKS URL; default: dev key in keys_dir
    jwt_issuer: str = "partner-data-gateway-dev"
    jwt_audience: str = "partner-data-gateway"
    jwt_algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    jwt_leeway_seconds: int = 30
    jwks_refresh_min_interval_seconds: float = 30.0
    jwks_cache_seconds: float = 300.0
    # Outside development mode a plain-HTTP JWKS URL is refused unless its host is loopback; this lets any
    # http:// URL through (a path protected some other way, e.g. a service mesh's mTLS). See jwks_url_check.
    jwks_allow_insecure_http: bool = False
    transfer_rules: Path | None = None  # YAML; default: the shipped rules in gateway/subjects
    max_body_bytes: int = 1_048_576
    max_json_depth: int = 32
    checkpoint_every_records: int = 1000
    checkpoint_every_seconds: float = 60.0
    # A ledger commit not durable within this many seconds fails its requests (503, nothing forwarded).
    ledger_commit_timeout_seconds: float = 15.0
    workers: int = 1
    log_level: str = "info"
    shutdown_grace_seconds: float = 10.0
    # A client must send a request's whole head within this many seconds of its first byte (408 after).
    request_head_timeout_seconds: float = 30.0
    # ... and a request's whole body within this many seconds of the gateway starting to read it (408 after).
    request_body_timeout_seconds: float = 30.0
    # An idle keep-alive connection (no request in progress) is closed after this many seconds.
    keepalive_timeout_seconds: float = 75.0
    subject_cache_seconds: float = 0.0  # 0: every request reads the registry (no stale consent)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"GATEWAY_LISTEN: expected HOST:PORT, got {self.listen!r}")
        return host.strip("[]"), int(port)


_ENV_PREFIX = "GATEWAY_"
# GATEWAY_* variables that are not settings: read elsewhere (the ledger's chain suffix, the test suite's
# PostgreSQL) or the config file's own path.
_OTHER_VARIABLES = frozenset({"GATEWAY_CONFIG", "GATEWAY_LEDGER_CHAIN_SUFFIX", "GATEWAY_TEST_POSTGRES_URL"})
# What Kubernetes injects for a Service named "gateway" (GATEWAY_SERVICE_HOST, GATEWAY_PORT_8080_TCP_ADDR, ...).
_SERVICE_LINK = re.compile(
    r"GATEWAY_(SERVICE_(HOST|PORT)(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)"
)
_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off"}


def _coerce(name: str, raw: Any, annotation: str) -> Any:
    try:
        if "tuple" in annotation:
            if isinstance(raw, str):
                return tuple(p.strip() for p in raw.split(",") if p.strip())
            return tuple(str(p) for p in raw)
        if "bool" in annotation:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _BOOL_TRUE:
                return True
            if text in _BOOL_FALSE:
                return False
            raise ValueError("expected true or false")
        if "Path" in annotation:
            return None if raw in (None, "") else Path(str(raw))
        if annotation.startswith("int"):
            return int(raw)
        if annotation.startswith("float"):
            return float(raw)
        if "Mapping" in annotation:
            if not isinstance(raw, Mapping):
                raise ValueError("expected a mapping")
            return dict(raw)
        return None if raw is None else str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: {exc} (got {raw!r})") from exc


def _validate(settings: Settings) -> Settings:
    settings.listen_host_port  # noqa: B018 - raises on a bad value
    bad = [a for a in settings.jwt_algorithms if a not in ASYMMETRIC_ALGORITHMS]
    if bad or not settings.jwt_algorithms:
        raise ConfigError(
            f"GATEWAY_JWT_ALGORITHMS: only asymmetric algorithms are allowed, got {list(settings.jwt_algorithms)}"
        )
    if not (settings.ledger_url.startswith("sqlite://") or settings.ledger_url.startswith("postgresql://")
            or settings.ledger_url.startswith("postgres://")):
        raise ConfigError("GATEWAY_LEDGER_URL: expected sqlite:///PATH or postgresql://...")
    for name in ("max_body_bytes", "max_json_depth", "checkpoint_every_records", "workers"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"setting {name}: must be at least 1")
    # The JWKS intervals too: 0 or less would let every unknown-kid token load the key set again (and a
    # set older than 0 s is always stale); an infinite one would never drop a withdrawn key.
    for name in ("request_head_timeout_seconds", "request_body_timeout_seconds", "keepalive_timeout_seconds",
                 "ledger_commit_timeout_seconds", "jwks_refresh_min_interval_seconds", "jwks_cache_seconds"):
        value = getattr(settings, name)
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"setting {name}: must be a positive number of seconds")
    jwks_url_check(settings)
    return settings


@dataclass(frozen=True, slots=True)
class JwksUrlCheck:
    """What `jwks_url_check` found about a JWKS URL accepted for use."""

    url: URL  # parsed once: the URL the fetch uses is the one that was checked
    # Plain HTTP to a host that is not loopback: anyone on the network path can replace the key set.
    insecure: bool
    # Plain HTTP to `localhost`: the fetch must connect to a loopback address only, whatever it resolves to.
    loopback_name: bool


def redacted_url(url: str) -> str:
    """`url` without user, password, query or fragment, for messages and log lines: a password (or a token
    in a query) must not reach a terminal or a log."""
    return str(URL(url).with_user(None).with_password(None).with_query(None).with_fragment(None))


def is_loopback_host(host: str | None) -> bool:
    """An IP literal in 127.0.0.0/8 or ::1, or the name `localhost` (not `localhost.`, not a subdomain)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def jwks_url_check(settings: Settings) -> JwksUrlCheck | None:
    """The rule for a JWKS URL (None when `jwt_keys` is not an http(s) URL). Pure: it parses the URL and
    looks at nothing else, so a refused URL is never connected to. Over plain HTTP anyone on the path can
    substitute the key set and mint tokens with any scope, so an `http://` URL whose host is not loopback
    is a ConfigError outside development mode unless `jwks_allow_insecure_http` is set; when accepted
    (development mode, or that setting) `insecure` is True and the caller logs a warning."""
    source = settings.jwt_keys
    if source is None or not source.startswith(("http://", "https://")):
        return None
    try:
        url = URL(source)
    except ValueError as exc:
        raise ConfigError("GATEWAY_JWT_KEYS: not a valid URL") from exc
    if not url.host:
        raise ConfigError("GATEWAY_JWT_KEYS: the JWKS URL names no host")
    if url.scheme == "https":
        return JwksUrlCheck(url, insecure=False, loopback_name=False)
    if is_loopback_host(url.host):
        # A loopback host is `localhost` or an IP literal (is_loopback_host): only the name needs resolving.
        return JwksUrlCheck(url, insecure=False, loopback_name=url.host.lower() == "localhost")
    if not settings.dev_mode and not settings.jwks_allow_insecure_http:
        raise ConfigError(
            f"GATEWAY_JWT_KEYS: plain http:// JWKS URL to {url.host} refused outside development mode (anyone "
            "on the network path could replace the keys and mint any token); use https://, a loopback host "
            "(127.0.0.0/8, ::1, localhost), or set GATEWAY_JWKS_ALLOW_INSECURE_HTTP=true if the path is "
            "protected otherwise"
        )
    return JwksUrlCheck(url, insecure=True, loopback_name=False)


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Defaults, then the config file (`--config` or GATEWAY_CONFIG), then GATEWAY_* variables, then
    explicit overrides (command-line flags)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    annotations = {f.name: str(f.type) for f in fields(Settings)}
    path = config_file or env.get("GATEWAY_CONFIG")
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping of settings")
        for key, raw in loaded.items():
            name = str(key).lower().replace("-", "_")
            if name not in annotations:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[name] = _coerce(name, raw, annotations[name])
    for key, raw in env.items():
        if not key.startswith(_ENV_PREFIX) or key in _OTHER_VARIABLES or _SERVICE_LINK.fullmatch(key):
            continue
        name = key[len(_ENV_PREFIX):].lower()
        if name in annotations and name != "extra":
            values[name] = _coerce(key, raw, annotations[name])
        else:
            # A mistyped variable would leave its setting at the default (an audience, a timeout) without a
            # word: refuse to start instead, as the config file does for an unknown key.
            raise ConfigError(f"unknown variable {key}{_did_you_mean(key, annotations)}")
    for name, raw in overrides.items():
        if raw is None:
            continue
        if name not in annotations:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _coerce(name, raw, annotations[name])
    return _validate(replace(Settings(), **values))


def _did_you_mean(key: str, annotations: Mapping[str, str]) -> str:
    known = [_ENV_PREFIX + name.upper() for name in annotations if name != "extra"]
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]}?)" if close else " (not a setting; see docs/configuration.md)"


_SQLITE_RE = re.compile(r"^sqlite:///(?P<path>.+)$")


def sqlite_path(url: str) -> Path:
    """`sqlite:///relative/path` or `sqlite:////absolute/path` to a filesystem path."""
    match = _SQLITE_RE.match(url)
    if not match:
        raise ConfigError(f"ledger URL {url!r}: expected sqlite:///PATH")
    return Path(match.group("path"))
