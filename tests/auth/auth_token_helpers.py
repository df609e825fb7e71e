"""Helpers for the caller-authentication tests: a signer per key type and token forging (including tokens
pyjwt refuses to make)."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "partner-data-gateway-dev"
AUDIENCE = "partner-data-gateway"

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Signer:
    """A private key, the algorithm it signs with and the kid the gateway knows its public half by."""

    private: PrivateKey
    alg: str
    kid: str

    @property
    def public(self) -> Any:
        return self.private.public_key()

    def public_pem(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self, kid: str | None = None, **extra: Any) -> dict[str, Any]:
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            members = OKPAlgorithm.to_jwk(self.public, as_dict=True)
        elif isinstance(self.private, ec.EllipticCurvePrivateKey):
            members = ECAlgorithm.to_jwk(self.public, as_dict=True)
        else:
            members = RSAAlgorithm.to_jwk(self.public, as_dict=True)
        members["kid"] = kid or self.kid
        members.update(extra)
        return members

    def token(
        self,
        claims: dict[str, Any] | None = None,
        *,
        headers: dict[str, Any] | None = None,
        alg: str | None = None,
        **overrides: Any,
    ) -> str:
        """A token signed by this key: valid claims by default, `overrides` replace or (None) remove one."""
        body = valid_claims() if claims is None else dict(claims)
        for name, value in overrides.items():
            if value is None:
                body.pop(name, None)
            else:
                body[name] = value
        head: dict[str, Any] = {"kid": self.kid, "typ": "JWT"}
        head.update(headers or {})
        for name in [n for n, v in head.items() if v is None and n != "typ"]:
            del head[name]
        if any(not isinstance(body.get(name, ""), str) for name in ("iss",)):
            # pyjwt refuses to encode a non-string iss; sign such a token by hand.
            return self.sign_raw({"alg": alg or self.alg, **{k: v for k, v in head.items() if v is not None}}, body)
        return jwt.encode(body, self.private, algorithm=alg or self.alg, headers=head)

    def sign_raw(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        """Sign an arbitrary header and claims (pyjwt refuses some, e.g. an unknown `crit`)."""
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = jwt.get_algorithm_by_name(self.alg).sign(signing_input.encode(), self.private)
        return f"{signing_input}.{b64url(signature)}"


def valid_claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "orders-service",
        "iat": now,
        "exp": now + 600,
        "jti": "token-1",
        "scope": "disclose:carrier-tw-hct:delivery gateway:audit",
    }
    claims.update(changes)
    return claims


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"not-a-signature") -> str:
    """A token assembled by hand, for headers and algorithms no honest library would produce."""
    return ".".join((
        b64url(json.dumps(header).encode()),
        b64url(json.dumps(claims).encode()),
        b64url(signature),
    ))


def bearer(token: str) -> list[str]:
    return [f"Bearer {token}"]
