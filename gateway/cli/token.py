"""CLI command group `token`: `gateway token mint` prints a development caller token.

The token is signed with the development Ed25519 key in the keys folder (created in development mode),
carries `typ: JWT` and the key's RFC 7638 thumbprint as `kid`, and the issuer and audience the gateway
checks by default, so `gateway serve` in development mode accepts it as is.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.auth import SCOPE_TOKEN_RE, SERVICE_NAME_RE, key_thumbprint
from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.keys import load_keys

DEFAULT_TTL_SECONDS = 3600
# A development token should not outlive a working day; longer lifetimes belong to a real issuer.
MAX_TTL_SECONDS = 86_400


def register(sub: argparse._SubParsersAction[Any]) -> None:
    token = sub.add_parser("token", help="development caller tokens", description="Development caller tokens.")
    token_sub = token.add_subparsers(dest="token_command", metavar="SUBCOMMAND", required=True)
    mint = token_sub.add_parser(
        "mint",
        help="print a development token signed with the dev key",
        description="Print a caller token signed with the development Ed25519 key in the keys folder "
        "(created in development mode). For development and tests only.",
    )
    mint.add_argument("--sub", required=True, metavar="SERVICE", help="the calling service (claim sub)")
    mint.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="SCOPES",
        help='space-separated scopes, e.g. "disclose:carrier-tw-hct:delivery gateway:audit"; repeatable',
    )
    mint.add_argument("--ttl", type=int, default=DEFAULT_TTL_SECONDS, metavar="SECONDS",
                      help=f"lifetime in seconds (default {DEFAULT_TTL_SECONDS}, at most {MAX_TTL_SECONDS})")
    mint.add_argument("--audience", help="claim aud (default: GATEWAY_JWT_AUDIENCE)")
    mint.add_argument("--issuer", help="claim iss (default: GATEWAY_JWT_ISSUER)")
    mint.add_argument("--keys-dir", type=Path, help="keys folder (default: GATEWAY_KEYS_DIR)")
    mint.add_argument("--config", help="settings file (default: GATEWAY_CONFIG)")
    mint.set_defaults(handler=mint_command)


def _check_scopes(scopes: list[str]) -> None:
    for scope in scopes:
        if not SCOPE_TOKEN_RE.fullmatch(scope):
            raise ConfigError(
                "--scope: a scope is printable ASCII without space, '\"' or '\\'; scopes are separated by spaces"
            )


def mint_token(
    private_key: Ed25519PrivateKey,
    *,
    subject: str,
    scopes: list[str],
    issuer: str,
    audience: str,
    ttl_seconds: int,
    now: float | None = None,
) -> str:
    """A signed EdDSA token for `subject` with `scopes` (the helper behind `gateway token mint`). Each
    scope must be one RFC 6749 scope token, the gateway's own rule: never mint what it would refuse or
    read as other scopes."""
    _check_scopes(scopes)
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
        "jti": uuid.uuid4().hex,
        "scope": " ".join(scopes),
    }
    headers = {"typ": "JWT", "kid": key_thumbprint(private_key.public_key())}
    return jwt.encode(claims, private_key, algorithm="EdDSA", headers=headers)


def mint_command(args: argparse.Namespace) -> int:
    if not 1 <= args.ttl <= MAX_TTL_SECONDS:
        raise ConfigError(f"--ttl: expected 1 to {MAX_TTL_SECONDS} seconds, got {args.ttl}")
    if not SERVICE_NAME_RE.fullmatch(args.sub):
        raise ConfigError("--sub: a service name is letters, digits and . _ : / @ + - (at most 200)")
    # SP only, as the gateway reads the claim: a tab or NBSP inside a group is refused, not split.
    scopes = [scope for group in args.scope for scope in group.split(" ") if scope]
    _check_scopes(scopes)
    settings = load_settings(args.config, keys_dir=args.keys_dir)
    keys = load_keys(settings.keys_dir, dev_mode=settings.dev_mode)
    if keys.jwt_dev_private is None:
        raise ConfigError(f"no development JWT key in {settings.keys_dir} (it is created in development mode)")
    token = mint_token(
        keys.jwt_dev_private,
        subject=args.sub,
        scopes=scopes,
        issuer=args.issuer or settings.jwt_issuer,
        audience=args.audience or settings.jwt_audience,
        ttl_seconds=args.ttl,
    )
    sys.stdout.write(token + "\n")
    return 0
