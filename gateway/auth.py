"""Caller authentication: who is calling the gateway, and what the caller may disclose.

This module owns the verification of the caller's JWT (`Authorization: Bearer ...`), the sources of the
verification keys (a PEM public key file, a JWKS file, a JWKS URL, or the development key), the cache of
verified tokens, and the caller's scopes. Everything the proxy needs is `CallerAuthenticator.authenticate`,
which returns a `Caller` or raises `Unauthenticated` with a short `reason` label from `REFUSAL_REASONS`.

Security choices (see docs/authentication.md):
- the token header is checked by this module before pyjwt sees the token: `alg: none` in any casing, an
  algorithm outside the allowlist, a missing or unexpected `typ`, any `crit`, and key-carrying headers
  (`jku`, `x5u`, `jwk`, `x5c`) are refused before any key lookup or signature check;
- every key is bound to the algorithms its type can verify (an RSA key never verifies ES/EdDSA, no HMAC
  ever), intersected with the allowlist and the JWK's own `alg`;
- `kid` is only a dictionary key; it never names a file, a URL or a query;
- `iss` and `aud` are compared exactly (an `aud` array containing ours is accepted, RFC 7519 4.1.3);
  `exp`, `iss`, `aud` and `sub` are required; `exp`, `nbf` and `iat` are honoured with the configured
  leeway (a token is accepted until `exp` plus the leeway);
- a JWKS URL is fetched over verified TLS without following redirects; plain `http://` is refused outside
  development mode unless its host is loopback (`gateway.config.jwks_url_check`), and a loopback URL
  naming `localhost` only ever connects to a loopback address.

Each load of the key set is reported to a `KeyLoadObserver` (the metrics), which this module does not import.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import json
import logging
import math
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import jwt
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import (
    SECP256R1,
    SECP384R1,
    SECP521R1,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.config import ASYMMETRIC_ALGORITHMS, JwksUrlCheck, Settings, jwks_url_check, redacted_url
from gateway.errors import ConfigError, Unauthenticated
from gateway.keys import GatewayKeys

log = logging.getLogger(__name__)

PublicKey = Ed25519PublicKey | Ed448PublicKey | EllipticCurvePublicKey | RSAPublicKey

# The short labels `Unauthenticated.reason` takes: a bounded set, safe as a metric label.
REFUSAL_REASONS = frozenset({
    "missing",  # no Authorization header
    "header-count",  # more than one Authorization header
    "scheme",  # not `Bearer`
    "too-large",  # token longer than MAX_TOKEN_CHARS
    "malformed",  # not three base64url segments, bad JSON, bad claim types
    "algorithm",  # alg none, outside the allowlist, or not usable with the key
    "typ",  # typ missing or not accepted
    "crit",  # a critical header extension (none is understood)
    "key-header",  # jku, x5u, jwk or x5c: a token never chooses its own key
    "unknown-key",  # no key with that kid (after a rate-limited refresh), or no kid and no single key
    "keys-unavailable",  # no key set obtained yet, or the source lists no usable key: fail closed
    "bad-signature",
    "expired",
    "not-yet-valid",  # nbf or iat in the future beyond the leeway
    "issuer",
    "audience",
    "missing-claim",  # exp, iss, aud or sub absent
    "sub",  # sub not a usable service name
    "scope",  # scope claim not a string of RFC 6749 scope tokens separated by spaces
})

# Accepted `typ` values, compared case-insensitively with an optional "application/" prefix
# (RFC 7515 4.1.9). "at+jwt" is the OAuth access-token type of RFC 9068.
DEFAULT_ACCEPTED_TYPES = frozenset({"jwt", "at+jwt"})
# Headers through which a token could name or carry its own verification key.
KEY_CARRYING_HEADERS = ("jku", "x5u", "jwk", "x5c")
# A real caller token is well under 2 KiB; the bound keeps parsing and the cache's memory small.
MAX_TOKEN_CHARS = 8192
MAX_KID_CHARS = 256
DEFAULT_CACHE_ENTRIES = 4096
MIN_RSA_BITS = 2048
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
MAX_JWKS_BYTES = 1 << 20

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# Service names: also SPIFFE-like ids ("spiffe://prod/ns/orders/sa/api"); no space, quote or control char.
SERVICE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")
_MAX_JTI_CHARS = 200
# RFC 6749 3.3: scope = scope-token *( SP scope-token ), scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
# Only SP separates scopes: a claim with any other character (tab, NBSP, U+3000, U+001E, any non-ASCII
# or control character) is refused, since splitting on other white space would read one scope the
# issuer granted (say `reports:read<NBSP>gateway:admin`) as several here.
SCOPE_TOKEN_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_SCOPE_CLAIM_RE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")

_EC_CURVE_ALGORITHMS: Mapping[type, str] = {SECP256R1: "ES256", SECP384R1: "ES384", SECP521R1: "ES512"}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})


# --- callers ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated calling service and the scopes its token grants."""

    service: str
    scopes: frozenset[str]
    token_id: str | None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def may_disclose(self, partner_id: str, purpose: str) -> bool:
        return f"disclose:{partner_id}:{purpose}" in self.scopes


def parse_scope(claim: str) -> frozenset[str]:
    """The scopes of a `scope` claim already checked against the RFC 6749 alphabet: split on SP only
    (never on other white space), repeated or surrounding spaces tolerated."""
    return frozenset(token for token in claim.split(" ") if token)


def disclose_scope(partner_id: str, purpose: str) -> str:
    """The scope a caller needs to disclose to `partner_id` for `purpose`."""
    return f"disclose:{partner_id}:{purpose}"


# --- keys --------------------------------------------------------------------------------------------------


def algorithms_for_key(key: PublicKey) -> frozenset[str]:
    """Every JWS algorithm that can correctly verify with this key type (RFC 7518 / RFC 8037)."""
    if isinstance(key, Ed25519PublicKey | Ed448PublicKey):
        return frozenset({"EdDSA"})
    if isinstance(key, EllipticCurvePublicKey):
        # ES256 is defined on P-256 only, and so on: the curve fixes the algorithm.
        alg = _EC_CURVE_ALGORITHMS.get(type(key.curve))
        return frozenset({alg}) if alg else frozenset()
    if isinstance(key, RSAPublicKey):
        return _RSA_ALGORITHMS
    return frozenset()  # pragma: no cover - PublicKey is exhaustive


def public_jwk(key: PublicKey) -> dict[str, Any]:
    """The public JWK members of a key (no kid, no alg)."""
    if isinstance(key, Ed25519PublicKey | Ed448PublicKey):
        return OKPAlgorithm.to_jwk(key, as_dict=True)
    if isinstance(key, EllipticCurvePublicKey):
        return ECAlgorithm.to_jwk(key, as_dict=True)
    return RSAAlgorithm.to_jwk(key, as_dict=True)


def key_thumbprint(key: PublicKey) -> str:
    """RFC 7638 JWK SHA-256 thumbprint: the kid of a key that has no kid of its own (a PEM file, the
    development key, a JWK without `kid`). `gateway token mint` puts it in the token header."""
    jwk_members = public_jwk(key)
    required = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}
    canonical = {name: jwk_members[name] for name in required[jwk_members["kty"]]}
    digest = hashlib.sha256(json.dumps(canonical, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key, its kid and the algorithms it may verify (already intersected with the allowlist)."""

    kid: str
    key: PublicKey
    algorithms: frozenset[str]


@dataclass(frozen=True, slots=True)
class SkippedKey:
    """A member of a JWKS that a reload could not use: its index and a fixed reason label (never a value
    of the member), for the log line."""

    index: int
    reason: str


@dataclass(frozen=True)
class KeySet:
    """The verification keys in force, by kid. Replaced whole on refresh, never mutated. May be empty:
    a source that now lists no usable key withdraws every key (every token is refused)."""

    by_kid: Mapping[str, VerificationKey]
    # The members of the document this set was read from that could not be used (logged on install).
    skipped: tuple[SkippedKey, ...] = ()

    @property
    def fingerprint(self) -> frozenset[tuple[str, str, frozenset[str]]]:
        """Identity of the set: unchanged on a refresh that returns the same keys."""
        return frozenset((k.kid, key_thumbprint(k.key), k.algorithms) for k in self.by_kid.values())

    def for_algorithm(self, alg: str) -> list[VerificationKey]:
        return [k for k in self.by_kid.values() if alg in k.algorithms]


def _bind_key(key: object, kid: str | None, allowed: frozenset[str], jwk_alg: str | None, where: str
              ) -> VerificationKey:
    if not isinstance(key, Ed25519PublicKey | Ed448PublicKey | EllipticCurvePublicKey | RSAPublicKey):
        raise ConfigError(f"{where}: not a supported public key (Ed25519, Ed448, EC P-256/384/521 or RSA)")
    if isinstance(key, RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ConfigError(f"{where}: RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} required")
    algorithms = algorithms_for_key(key) & allowed
    if jwk_alg is not None:
        algorithms &= {jwk_alg}
    if not algorithms:
        raise ConfigError(
            f"{where}: key type is usable with none of the allowed algorithms {sorted(allowed)}"
            + (f" (JWK alg {jwk_alg!r})" if jwk_alg else "")
        )
    return VerificationKey(kid=kid if kid is not None else key_thumbprint(key), key=key, algorithms=algorithms)


def keyset_from_pem(data: bytes, allowed: frozenset[str], where: str, *, strict: bool = True) -> KeySet:
    """A PEM public key (SubjectPublicKeyInfo) or certificate; its kid is its RFC 7638 thumbprint.
    Data that is not PEM is always a ConfigError (the key could not be read, e.g. a half-written file).
    A key the gateway cannot use is a ConfigError when `strict` (at start); on a reload (`strict=False`)
    it gives an empty set: the file no longer names a usable key, so the old one is withdrawn."""
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(f"{where}: not a PEM public key or certificate") from exc
    try:
        bound = _bind_key(key, None, allowed, None, where)
    except ConfigError:
        if strict:
            raise
        return KeySet(by_kid={}, skipped=(SkippedKey(0, "unusable-key"),))
    return KeySet(by_kid={bound.kid: bound})


class _MemberRefused(Exception):
    """A JWKS member that cannot be used: `reason` is a fixed label (logs), `message` the start error."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _jwks_member(member: object, allowed: frozenset[str], label: str) -> VerificationKey | None:
    """The verification key of one JWKS member; None for a member that is not for us (another use, an
    algorithm outside the allowlist, an unknown key type); _MemberRefused for one we cannot use."""
    if not isinstance(member, dict):
        raise _MemberRefused("not-an-object", f"{label}: not an object")
    kty = member.get("kty")
    if kty == "oct":
        raise _MemberRefused("symmetric-key", f"{label}: symmetric (oct) keys are never accepted")
    if any(name in member for name in ("d", "p", "q", "dp", "dq", "qi", "k")):
        raise _MemberRefused(
            "private-key-material", f"{label}: holds private key material; publish public keys only")
    if member.get("use", "sig") != "sig":
        return None
    key_ops = member.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    jwk_alg = member.get("alg")
    if jwk_alg is not None and (not isinstance(jwk_alg, str) or jwk_alg not in allowed):
        return None
    kid = member.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS):
        raise _MemberRefused(
            "bad-kid", f"{label}: kid must be a non-empty string of at most {MAX_KID_CHARS} characters")
    try:
        if kty == "OKP":
            key: object = OKPAlgorithm.from_jwk(member)
        elif kty == "EC":
            key = ECAlgorithm.from_jwk(member)
        elif kty == "RSA":
            key = RSAAlgorithm.from_jwk(member)
        else:
            return None  # an unknown key type is not ours to verify with
    except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
        raise _MemberRefused("invalid-key", f"{label}: invalid {kty} key: {exc}") from exc
    try:
        return _bind_key(key, kid, allowed, jwk_alg, label)
    except ConfigError as exc:
        if jwk_alg is None:
            return None  # e.g. an RSA key while only EdDSA is allowed: not usable here, not an error
        raise _MemberRefused("unusable-key", str(exc)) from exc


def keyset_from_jwks(document: object, allowed: frozenset[str], where: str, *, strict: bool = True) -> KeySet:
    """A JWKS document. Keys for another use (`use` other than "sig") or of an algorithm outside the
    allowlist are skipped. A document that is not a JWKS object is always a ConfigError (nothing usable
    was obtained). When `strict` (a file at start), a member that cannot be used (symmetric or private key
    material, a bad kid or key, a duplicate kid) or no usable key at all is a ConfigError naming the
    member's index. Otherwise (every reload) the set is what the document yields: such members are left
    out and listed in `skipped` by index, both members of a duplicate kid are left out (neither can be
    told apart), and the set may be empty, so that a key the document no longer lists is never kept."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ConfigError(f"{where}: expected a JWKS object with a 'keys' array")
    by_kid: dict[str, VerificationKey] = {}
    index_of: dict[str, int] = {}
    duplicates: set[str] = set()
    skipped: list[SkippedKey] = []
    for index, member in enumerate(document["keys"]):
        label = f"{where}: keys[{index}]"
        try:
            bound = _jwks_member(member, allowed, label)
        except _MemberRefused as exc:
            if strict:
                raise ConfigError(exc.message) from exc
            skipped.append(SkippedKey(index, exc.reason))
            continue
        if bound is None:
            continue
        if bound.kid in by_kid or bound.kid in duplicates:
            if strict:
                raise ConfigError(f"{label}: duplicate kid")
            if bound.kid in by_kid:
                del by_kid[bound.kid]
                duplicates.add(bound.kid)
                skipped.append(SkippedKey(index_of[bound.kid], "duplicate-kid"))
            skipped.append(SkippedKey(index, "duplicate-kid"))
            continue
        by_kid[bound.kid] = bound
        index_of[bound.kid] = index
    if not by_kid and strict:
        raise ConfigError(f"{where}: no usable signing key for the allowed algorithms {sorted(allowed)}")
    return KeySet(by_kid=by_kid, skipped=tuple(sorted(skipped, key=lambda s: s.index)))


class KeyLoadObserver(Protocol):
    """Told about each load of the key set (gateway.metrics feeds its JWKS metrics from this)."""

    def loaded(self, keys: int) -> None:
        """A load obtained the key set, now in force with `keys` usable keys (0: every token is refused)."""

    def failed(self) -> None:
        """A load could not obtain the key set; the last good set (if any) stays in force."""


class KeyProvider:
    """Holds the key set in force and refreshes it: when it is older than `cache_seconds` (in the
    background; requests keep using the current set), and when a token names an unknown kid (awaited),
    never more often than `min_refresh_interval` seconds. A load that could not obtain the document
    (the loader raises: I/O, timeout, non-200, truncated or not JSON, a half-written file) keeps the last
    good set; a load that obtained one installs what it yields, even an empty set, so a withdrawn key is
    never kept. With no set, or an empty one, every token is refused ("keys-unavailable")."""

    def __init__(
        self,
        loader: Callable[[], Awaitable[KeySet]] | None,
        initial: KeySet | None,
        *,
        cache_seconds: float,
        min_refresh_interval: float,
        description: str,
        close_loader: Callable[[], Awaitable[None]] | None = None,
        observer: KeyLoadObserver | None = None,
    ) -> None:
        # loader raises ConfigError/OSError/aiohttp errors; None means a static set (the development key).
        self._loader = loader
        self._keyset = initial
        self._cache_seconds = cache_seconds
        self._min_interval = min_refresh_interval
        self.description = description
        now = time.monotonic()
        self._loaded_at = now if initial is not None else -math.inf  # end of the last load that obtained a set
        # End of the last load, obtained or not: the interval is measured from here, so a load slower than
        # the interval cannot be followed at once by another.
        self._finished_at = now if initial is not None else -math.inf
        # The load in flight: every caller arriving while it runs awaits this one, none starts another.
        self._load: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._close_loader = close_loader
        self._observer = observer
        if observer is not None and initial is not None:
            observer.loaded(len(initial.by_kid))  # the file (or development key) read at start

    @property
    def keyset(self) -> KeySet | None:
        return self._keyset

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _due(self) -> bool:
        return time.monotonic() - self._finished_at >= self._min_interval

    def refresh_if_stale(self) -> None:
        """Cheap check for the per-request path: start a background load when the set is old (and none
        runs, and the interval since the last one has passed)."""
        if (
            self._loader is not None
            and self._load is None
            and time.monotonic() - self._loaded_at > self._cache_seconds
            and self._due()
        ):
            self._start_load()

    async def refresh(self) -> None:
        """Reload the set unless a load ended less than `min_refresh_interval` ago. A caller arriving
        while a load runs waits for that load (it never starts another); cancelling the caller does not
        cancel the load the others wait for."""
        if self._loader is None:
            return
        load = self._load
        if load is None:
            if not self._due():
                return
            load = self._start_load()
        await asyncio.shield(load)

    def _start_load(self) -> asyncio.Task[None]:
        load = asyncio.get_running_loop().create_task(self._run_load())
        self._load = load
        load.add_done_callback(self._load_done)
        return load

    def _load_done(self, load: asyncio.Task[None]) -> None:
        if self._load is load:  # a load cancelled before it ran never reached its own `finally`
            self._load = None
        if not load.cancelled():
            # Marks an unexpected exception as retrieved even when every waiter was cancelled (the
            # waiters that remain get it from their await).
            load.exception()

    async def _run_load(self) -> None:
        assert self._loader is not None
        try:
            keyset: KeySet = await self._loader()
        except (ConfigError, OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if self._observer is not None:
                self._observer.failed()
            log.warning(
                "jwt key refresh failed; keeping the last good key set",
                extra={"key_source": self.description, "error": type(exc).__name__,
                       # an empty set in force (every key withdrawn) counts as no keys
                       "have_keys": self._keyset is not None and bool(self._keyset.by_kid)},
            )
            return
        except Exception:
            if self._observer is not None:
                self._observer.failed()  # unexpected, but still a load that obtained nothing
            raise
        finally:
            self._finished_at = time.monotonic()
            self._load = None
        # No await from here on: callers see the old state or the new one, never a mix.
        self._loaded_at = self._finished_at
        previous = self._keyset
        changed = previous is None or keyset.fingerprint != previous.fingerprint
        if previous is None or changed or keyset.skipped != previous.skipped:
            self._report(keyset)  # once per change, not at every reload
        self._keyset = keyset
        if self._observer is not None:
            self._observer.loaded(len(keyset.by_kid))
        if changed:
            for listener in self._listeners:
                listener()

    def _report(self, keyset: KeySet) -> None:
        for skipped in keyset.skipped:
            log.warning(
                "jwt key skipped: this member of the key set cannot be used",
                extra={"key_source": self.description, "index": skipped.index, "reason": skipped.reason},
            )
        if not keyset.by_kid:
            log.warning(
                "jwt key set has no usable key; every token is refused",
                extra={"key_source": self.description, "skipped": len(keyset.skipped)},
            )

    async def close(self) -> None:
        load = self._load
        if load is not None:
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)
        if self._close_loader is not None:
            await self._close_loader()


class _LoopbackResolver(AbstractResolver):
    """aiohttp's resolver keeping only loopback addresses: a plain-HTTP JWKS URL accepted because it names
    `localhost` never reaches another machine, whatever /etc/hosts or DNS answer for that name."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = [r for r in await self._inner.resolve(host, port, family)
                   if ipaddress.ip_address(r["host"]).is_loopback]
        if not results:
            raise OSError(f"{host} resolves to no loopback address")
        return results

    async def close(self) -> None:
        await self._inner.close()


class _JwksUrlLoader:
    """Fetches a JWKS over HTTP(S) with one pooled session: no redirects (any 3xx is a failed load, so a
    redirect to http:// or to another host is never followed), TLS certificates verified, no proxy from
    the environment, bounded time and size."""

    def __init__(self, checked: JwksUrlCheck, allowed: frozenset[str]) -> None:
        self.url = checked.url
        self._loopback_only = checked.loopback_name
        self._allowed = allowed
        self._session: aiohttp.ClientSession | None = None
        self._resolver: _LoopbackResolver | None = None

    async def __call__(self) -> KeySet:
        if self._session is None or self._session.closed:
            if self._loopback_only and self._resolver is None:
                self._resolver = _LoopbackResolver()  # closed by close(): the connector does not own it
            self._session = aiohttp.ClientSession(
                # ssl=True: the default, spelled out; certificate and host name are verified.
                connector=aiohttp.TCPConnector(ssl=True, resolver=self._resolver),
                timeout=aiohttp.ClientTimeout(total=JWKS_FETCH_TIMEOUT_SECONDS),
                headers={"Accept": "application/jwk-set+json, application/json"},
                trust_env=False,
            )
        async with self._session.get(self.url, allow_redirects=False) as response:
            if response.status != 200:
                raise ConfigError(f"JWKS URL answered {response.status}")
            declared = response.content_length
            if declared is not None and declared > MAX_JWKS_BYTES:
                raise ConfigError("JWKS document too large")  # refused before reading any of it
            # read(n) returns what has arrived so far, not n bytes: a body that comes in several pieces
            # (chunked, or TCP segments / TLS records spread over time) is read to its end, never more
            # than one byte beyond the bound. A body cut short raises ClientPayloadError.
            body = bytearray()
            while len(body) <= MAX_JWKS_BYTES:
                chunk = await response.content.read(MAX_JWKS_BYTES + 1 - len(body))
                if not chunk:
                    break
                body += chunk
        if len(body) > MAX_JWKS_BYTES:
            raise ConfigError("JWKS document too large")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise ConfigError("JWKS URL: not JSON") from exc
        return keyset_from_jwks(document, self._allowed, "JWKS URL", strict=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None


def _read_key_file(path: Path, allowed: frozenset[str], *, strict: bool) -> KeySet:
    """The key set of a PEM or JWKS file: strict at start, as a reload (see keyset_from_jwks) after."""
    where = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"GATEWAY_JWT_KEYS: cannot read {where}: {exc.strerror}") from exc
    if data.lstrip().startswith(b"-----BEGIN"):
        return keyset_from_pem(data, allowed, where, strict=strict)
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{where}: neither a PEM public key nor a JWKS (JSON) document") from exc
    return keyset_from_jwks(document, allowed, where, strict=strict)


# --- token checks ------------------------------------------------------------------------------------------


def _refuse(reason: str, detail: str) -> Unauthenticated:
    return Unauthenticated(detail, reason=reason)


def _bearer_credentials(authorization: Sequence[str]) -> str:
    """The credentials of exactly one `Authorization: Bearer ...` header (not yet checked as a JWS)."""
    if not authorization:
        raise _refuse("missing", "an Authorization: Bearer token is required")
    if len(authorization) != 1:
        raise _refuse("header-count", "exactly one Authorization header is allowed")
    scheme, _, rest = authorization[0].strip(" \t").partition(" ")
    if scheme.lower() != "bearer":
        raise _refuse("scheme", "the Authorization scheme must be Bearer")
    token = rest.strip(" \t")
    if len(token) > MAX_TOKEN_CHARS:
        raise _refuse("too-large", f"token longer than {MAX_TOKEN_CHARS} characters")
    return token


def _check_compact_jws(token: str) -> None:
    if not _TOKEN_RE.fullmatch(token):
        raise _refuse("malformed", "token is not a compact JWS (three base64url segments)")


def bearer_token(authorization: Sequence[str]) -> str:
    """The token of exactly one `Authorization: Bearer <token>` header, or Unauthenticated."""
    token = _bearer_credentials(authorization)
    _check_compact_jws(token)
    return token


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            # Two `alg` (or `kid`) members could be read differently by another parser: refuse.
            raise ValueError("duplicate member")
        result[name] = value
    return result


def _decode_header(token: str) -> dict[str, Any]:
    segment = token.partition(".")[0]
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        # Non-canonical encodings (stray low bits) decode too; refuse them like pyjwt does.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
            raise ValueError("non-canonical base64url")
        header = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise _refuse("malformed", "token header is not base64url-encoded JSON") from exc
    if not isinstance(header, dict):
        raise _refuse("malformed", "token header is not a JSON object")
    return header


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class _CachedCaller:
    caller: Caller
    valid_from: float  # nbf (or iat) minus leeway: before it, a hit is ignored
    expires: float  # exp: at it the entry is gone


class CallerAuthenticator:
    """Verifies caller tokens. Build with `from_settings`; `await start()` before serving (fetches a
    JWKS URL), `await close()` at shutdown."""

    def __init__(
        self,
        provider: KeyProvider,
        *,
        issuer: str,
        audience: str,
        algorithms: Iterable[str],
        leeway_seconds: float,
        accepted_types: Iterable[str] = DEFAULT_ACCEPTED_TYPES,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> None:
        allowed = frozenset(algorithms)
        # config.py already refuses these; repeated so no other construction path can allow HMAC or none.
        if not allowed or not allowed <= ASYMMETRIC_ALGORITHMS:
            raise ConfigError(f"JWT algorithms: only asymmetric algorithms are allowed, got {sorted(allowed)}")
        if not issuer or not audience:
            raise ConfigError("JWT issuer and audience must be set")
        if cache_entries < 1:
            raise ConfigError("verified-token cache needs at least one entry")
        self._provider = provider
        self._issuer = issuer
        self._audience = audience
        self._allowed = allowed
        self._leeway = float(leeway_seconds)
        self._accepted_types = frozenset(t.lower() for t in accepted_types)
        self._cache_entries = cache_entries
        self._cache: dict[str, _CachedCaller] = {}
        self._jwt = jwt.PyJWT(options={
            "require": ["exp", "iss", "aud", "sub"],
            "verify_signature": True, "verify_exp": True, "verify_nbf": True, "verify_iat": True,
            "verify_aud": True, "verify_iss": True, "verify_sub": True, "verify_jti": True,
            "strict_aud": False,  # an aud array holding our audience is valid (RFC 7519 4.1.3)
            "enforce_minimum_key_length": True,
        })
        provider.on_change(self._cache.clear)

    @classmethod
    def from_settings(cls, settings: Settings, keys: GatewayKeys, *, observer: KeyLoadObserver | None = None
                      ) -> CallerAuthenticator:
        """Key source from `settings.jwt_keys`: an http(s) URL is a JWKS URL (fetched by `start()`; a
        plain-HTTP one is refused here, before any connection, when `jwks_url_check` refuses it); a file is
        read now (PEM when it starts with `-----BEGIN`, otherwise a JWKS document). Unset: the development
        public key, only in development mode. `observer` is told about every load of the set."""
        allowed = frozenset(settings.jwt_algorithms)
        source = settings.jwt_keys
        # load_settings already applies it; repeated so that no other construction path skips it.
        checked = jwks_url_check(settings)
        if source is None:
            if not settings.dev_mode:
                raise ConfigError("GATEWAY_JWT_KEYS must be set outside development mode")
            if keys.jwt_dev_public is None:
                raise ConfigError(f"no development JWT public key in {keys.keys_dir}; set GATEWAY_JWT_KEYS")
            bound = _bind_key(keys.jwt_dev_public, None, allowed, None, "development JWT key")
            provider = KeyProvider(None, KeySet(by_kid={bound.kid: bound}), cache_seconds=math.inf,
                                   min_refresh_interval=math.inf, description="development key",
                                   observer=observer)
        elif checked is not None:
            description = redacted_url(source)
            if checked.insecure:
                log.warning(
                    "jwt keys fetched over plain http: anyone on the network path can replace them",
                    extra={"key_source": description,
                           "allowed_by": "jwks_allow_insecure_http" if not settings.dev_mode else "dev_mode"},
                )
            url_loader = _JwksUrlLoader(checked, allowed)
            provider = KeyProvider(url_loader, None, cache_seconds=settings.jwks_cache_seconds,
                                   min_refresh_interval=settings.jwks_refresh_min_interval_seconds,
                                   description=description, close_loader=url_loader.close, observer=observer)
        else:
            path = Path(source)
            initial = _read_key_file(path, allowed, strict=True)

            async def reload_file() -> KeySet:
                return await asyncio.to_thread(_read_key_file, path, allowed, strict=False)

            provider = KeyProvider(reload_file, initial, cache_seconds=settings.jwks_cache_seconds,
                                   min_refresh_interval=settings.jwks_refresh_min_interval_seconds,
                                   description=str(path), observer=observer)
        return cls(
            provider,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            algorithms=allowed,
            leeway_seconds=settings.jwt_leeway_seconds,
        )

    @property
    def keys(self) -> KeyProvider:
        return self._provider

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens the cache holds (for tests and metrics)."""
        return len(self._cache)

    async def start(self) -> None:
        """Fetch a JWKS URL once. A failure is logged, not raised: tokens are refused until a fetch
        succeeds, so a slow identity provider does not keep the gateway (and /readyz) down."""
        if self._provider.keyset is None:
            await self._provider.refresh()

    async def close(self) -> None:
        await self._provider.close()

    async def authenticate(self, authorization: Sequence[str]) -> Caller:
        """The caller of a request, given all its Authorization header values."""
        token = _bearer_credentials(authorization)
        # Only tokens that passed every check are cache keys, so a hit needs no syntax check either.
        cached = self._cache.get(token)
        if cached is not None:
            now = time.time()
            if cached.valid_from <= now < cached.expires:
                self._provider.refresh_if_stale()
                return cached.caller
            if now >= cached.expires:
                del self._cache[token]
        _check_compact_jws(token)
        return await self._verify(token)

    async def _verify(self, token: str) -> Caller:
        header = _decode_header(token)
        alg = self._check_header(header)
        verification_key = await self._select_key(header, alg)
        try:
            decoded = self._jwt.decode_complete(
                token,
                key=verification_key.key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
            )
        except jwt.InvalidSignatureError as exc:
            raise _refuse("bad-signature", "token signature does not verify") from exc
        except jwt.ExpiredSignatureError as exc:
            raise _refuse("expired", "token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise _refuse("not-yet-valid", "token is not valid yet (nbf or iat in the future)") from exc
        except jwt.InvalidIssuerError as exc:
            raise _refuse("issuer", "token issuer is not accepted") from exc
        except jwt.InvalidAudienceError as exc:
            raise _refuse("audience", "token audience is not this gateway") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise _refuse("missing-claim", f"token lacks the required claim {exc.claim}") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise _refuse("algorithm", "token algorithm not accepted") from exc
        except jwt.exceptions.InvalidSubjectError as exc:
            raise _refuse("sub", "token sub is not a valid service name") from exc
        except (jwt.InvalidTokenError, jwt.InvalidKeyError) as exc:
            raise _refuse("malformed", "token is malformed") from exc
        return self._admit(token, decoded["payload"])

    def _check_header(self, header: Mapping[str, Any]) -> str:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.strip().lower() == "none":
            raise _refuse("algorithm", "unsigned tokens are refused")
        if alg not in self._allowed:
            raise _refuse("algorithm", "token algorithm not accepted")
        typ = header.get("typ")
        if not isinstance(typ, str):
            raise _refuse("typ", "token header must name its typ")
        typ = typ.lower()
        typ = typ.removeprefix("application/")
        if typ not in self._accepted_types:
            raise _refuse("typ", "token typ not accepted")
        if "crit" in header:
            raise _refuse("crit", "token has critical header extensions this gateway does not understand")
        if "b64" in header:
            raise _refuse("malformed", "unencoded payloads are not accepted")
        if any(name in header for name in KEY_CARRYING_HEADERS):
            raise _refuse("key-header", "tokens may not name or carry their own key (jku, x5u, jwk, x5c)")
        return alg

    async def _select_key(self, header: Mapping[str, Any], alg: str) -> VerificationKey:
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS):
            raise _refuse("malformed", "token kid must be a short string")
        keyset = self._provider.keyset
        if keyset is None or not keyset.by_kid:
            # Never loaded, or the source now lists no usable key: try a (rate-limited) load.
            await self._provider.refresh()
            keyset = self._provider.keyset
            if keyset is None or not keyset.by_kid:
                raise _refuse("keys-unavailable", "verification keys are not available")
        else:
            self._provider.refresh_if_stale()
        if kid is None:
            # Without a kid only an unambiguous key will do; during a rotation issuers must send kid.
            candidates = keyset.for_algorithm(alg)
            if len(candidates) == 1:
                return candidates[0]
            if not candidates:
                raise _refuse("algorithm", "no verification key for the token's algorithm")
            raise _refuse("unknown-key", "token has no kid and several keys could verify it")
        found = keyset.by_kid.get(kid)
        if found is None:
            # Maybe a key rotated in at the issuer: reload (rate-limited), then look again.
            await self._provider.refresh()
            refreshed = self._provider.keyset
            found = refreshed.by_kid.get(kid) if refreshed is not None else None
        if found is None:
            raise _refuse("unknown-key", "token kid names no known key")
        if alg not in found.algorithms:
            raise _refuse("algorithm", "token algorithm does not match its key")
        return found

    def _admit(self, token: str, claims: Mapping[str, Any]) -> Caller:
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _is_number(claims[name]):
                # pyjwt would accept "1700000000" as a string; a numeric date is required (RFC 7519 2).
                raise _refuse("malformed", f"token claim {name} is not a NumericDate")
        sub = claims["sub"]
        if not isinstance(sub, str) or not SERVICE_NAME_RE.fullmatch(sub):
            raise _refuse("sub", "token sub is not a valid service name")
        scope = claims.get("scope", "")
        if not isinstance(scope, str) or not _SCOPE_CLAIM_RE.fullmatch(scope):
            raise _refuse("scope", "token scope must be a space-separated string of RFC 6749 scope tokens")
        jti = claims.get("jti")
        if jti is not None and len(jti) > _MAX_JTI_CHARS:
            raise _refuse("malformed", "token jti too long")
        caller = Caller(service=sub, scopes=parse_scope(scope), token_id=jti)
        valid_from = max(float(claims.get("nbf", -math.inf)), float(claims.get("iat", -math.inf))) - self._leeway
        self._remember(token, _CachedCaller(caller, valid_from, float(claims["exp"])))
        return caller

    def _remember(self, token: str, entry: _CachedCaller) -> None:
        if len(self._cache) >= self._cache_entries:
            now = time.time()
            for stale in [t for t, e in self._cache.items() if e.expires <= now]:
                del self._cache[stale]
            while len(self._cache) >= self._cache_entries:
                # Oldest insertion first (dicts keep order): a flood of fresh tokens cannot grow memory.
                del self._cache[next(iter(self._cache))]
        self._cache[token] = entry
