"""`gateway token mint` in a subprocess: creates the development keys, prints one token that the
gateway's own authenticator accepts with the requested subject, scopes, lifetime, issuer and audience."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from gateway.auth import CallerAuthenticator, key_thumbprint
from gateway.config import load_settings
from gateway.errors import Unauthenticated
from gateway.keys import load_keys


def run_gateway(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60,
        check=False,
    )


def segment(token: str, index: int) -> dict[str, object]:
    part = token.split(".")[index]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


async def test_minted_token_is_accepted_by_the_gateway(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    result = run_gateway(
        "token", "mint", "--sub", "orders-service",
        "--scope", "disclose:carrier-tw-hct:delivery disclose:maps-x:routing", "--scope", "gateway:audit",
        "--ttl", "120", "--keys-dir", str(keys_dir), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    token = lines[0]
    assert "development mode" in result.stderr  # the dev keys were created, with a warning
    assert (keys_dir / "jwt-dev.pem").exists()

    keys = load_keys(keys_dir, dev_mode=False)
    assert keys.jwt_dev_public is not None
    header, claims = segment(token, 0), segment(token, 1)
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": key_thumbprint(keys.jwt_dev_public)}
    assert isinstance(claims["exp"], int)
    assert isinstance(claims["iat"], int)
    assert claims["exp"] - claims["iat"] == 120
    assert abs(claims["iat"] - time.time()) < 30

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the keys exist now: nothing is created a second time
        settings = load_settings(environ={}, keys_dir=keys_dir)
    auth = CallerAuthenticator.from_settings(settings, keys)
    caller = await auth.authenticate([f"Bearer {token}"])
    assert caller.service == "orders-service"
    assert caller.scopes == {"disclose:carrier-tw-hct:delivery", "disclose:maps-x:routing", "gateway:audit"}
    assert caller.may_disclose("carrier-tw-hct", "delivery")
    assert caller.token_id

    # A second mint reuses the same key (same kid) and gets a different token id.
    again = run_gateway("token", "mint", "--sub", "orders-service", "--keys-dir", str(keys_dir), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "development mode" not in again.stderr
    assert segment(again.stdout.strip(), 0)["kid"] == header["kid"]
    assert segment(again.stdout.strip(), 1)["jti"] != claims["jti"]
    assert (await auth.authenticate([f"Bearer {again.stdout.strip()}"])).scopes == frozenset()


async def test_minted_issuer_and_audience_are_checked(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    result = run_gateway(
        "token", "mint", "--sub", "svc", "--audience", "someone-else", "--issuer", "elsewhere",
        "--keys-dir", str(keys_dir), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    claims = segment(result.stdout.strip(), 1)
    assert (claims["aud"], claims["iss"]) == ("someone-else", "elsewhere")
    auth = CallerAuthenticator.from_settings(
        load_settings(environ={}, keys_dir=keys_dir), load_keys(keys_dir, dev_mode=False)
    )
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate([f"Bearer {result.stdout.strip()}"])
    assert info.value.reason == "issuer"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sub", "orders service"], "--sub"),
        (["--sub", "svc", "--ttl", "0"], "--ttl"),
        (["--sub", "svc", "--ttl", "999999"], "--ttl"),
        # review-auth F3: split on SP only, as the gateway reads the claim; other white space or a
        # character outside RFC 6749's scope-token alphabet is refused, not split or minted.
        (["--sub", "svc", "--scope", "reports:read\u00a0gateway:admin"], "--scope"),
        (["--sub", "svc", "--scope", "reports:read\tgateway:admin"], "--scope"),
        (["--sub", "svc", "--scope", "reports:read\u3000gateway:admin"], "--scope"),
        (["--sub", "svc", "--scope", 'say:"hi"'], "--scope"),
        (["--sub", "svc", "--scope", "caf\u00e9"], "--scope"),
    ],
)
def test_mint_refuses_bad_arguments_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_gateway("token", "mint", *args, "--keys-dir", str(tmp_path / "keys"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("gateway: error:")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_mint_without_keys_outside_development_mode(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("dev_mode: false\n")
    result = run_gateway(
        "token", "mint", "--sub", "svc", "--keys-dir", str(tmp_path / "none"), "--config", str(config), cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "missing key file" in result.stderr
    assert not (tmp_path / "none").exists()


def test_help_lists_mint(tmp_path: Path) -> None:
    result = run_gateway("token", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "mint" in result.stdout
