"""Fixtures for the caller-authentication tests: real key pairs of every supported type, key files in a
temporary folder, and settings that ignore the environment."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from auth_token_helpers import Signer
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth import key_thumbprint
from gateway.config import Settings, load_settings


@pytest.fixture(scope="session")
def ed_signer() -> Signer:
    key = ed25519.Ed25519PrivateKey.generate()
    return Signer(key, "EdDSA", key_thumbprint(key.public_key()))


@pytest.fixture(scope="session")
def other_ed_signer() -> Signer:
    key = ed25519.Ed25519PrivateKey.generate()
    return Signer(key, "EdDSA", key_thumbprint(key.public_key()))


@pytest.fixture(scope="session")
def es_signer() -> Signer:
    key = ec.generate_private_key(ec.SECP256R1())
    return Signer(key, "ES256", key_thumbprint(key.public_key()))


@pytest.fixture(scope="session")
def rsa_signer() -> Signer:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Signer(key, "RS256", key_thumbprint(key.public_key()))


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    """Settings from defaults and the given overrides only (the environment is ignored)."""

    def build(**overrides: Any) -> Settings:
        return load_settings(environ={}, **overrides)

    return build


@pytest.fixture
def write_pem(tmp_path: Path) -> Callable[[Signer], Path]:
    def write(signer: Signer) -> Path:
        path = tmp_path / f"caller-{signer.kid[:8]}.pub.pem"
        path.write_bytes(signer.public_pem())
        return path

    return write


@pytest.fixture
def write_jwks(tmp_path: Path) -> Callable[[list[dict[str, Any]]], Path]:
    def write(keys: list[dict[str, Any]]) -> Path:
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps({"keys": keys}), encoding="utf-8")
        return path

    return write
