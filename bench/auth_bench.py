"""Microbenchmark of `CallerAuthenticator.authenticate`: µs per call for a token seen for the first time
(full verification) and for a repeated token (verified-token cache), per algorithm, next to a bare
`jwt.decode` of the same tokens as the baseline.

Run:  .venv/bin/python bench/auth_bench.py [--tokens 1000] [--repeats 100000]
Bounded: about 10-20 s on the project's 2-core machines (minting the RSA tokens is the slow part).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth import CallerAuthenticator, key_thumbprint
from gateway.config import load_settings
from gateway.keys import load_keys

AUDIENCE = "partner-data-gateway"
ISSUER = "partner-data-gateway-dev"


def mint(private: object, alg: str, count: int) -> list[str]:
    kid = key_thumbprint(private.public_key())  # type: ignore[attr-defined]
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "orders-service", "iat": now, "exp": now + 3600,
              "scope": "disclose:carrier-tw-hct:delivery disclose:maps-x:routing"}
    return [jwt.encode({**claims, "jti": f"t{n}"}, private, algorithm=alg,  # type: ignore[arg-type]
                       headers={"kid": kid, "typ": "JWT"}) for n in range(count)]


async def per_call_us(auth: CallerAuthenticator, tokens: list[str]) -> float:
    started = time.perf_counter()
    for token in tokens:
        await auth.authenticate([f"Bearer {token}"])
    return (time.perf_counter() - started) / len(tokens) * 1e6


def bare_decode_us(public: object, alg: str, tokens: list[str]) -> float:
    started = time.perf_counter()
    for token in tokens:
        jwt.decode(token, public, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER)  # type: ignore[arg-type]
    return (time.perf_counter() - started) / len(tokens) * 1e6


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1000, help="distinct tokens per algorithm (cold calls)")
    parser.add_argument("--repeats", type=int, default=100_000, help="calls with one repeated token (cached)")
    args = parser.parse_args()
    keys_dir = Path(tempfile.mkdtemp(prefix="auth-bench-")) / "keys"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gateway_keys = load_keys(keys_dir, dev_mode=True)
    print(f"tokens per algorithm: {args.tokens} cold, {args.repeats} cached; best of 3 rounds (µs per call)")
    print(f"{'alg':7} {'bare jwt.decode':>16} {'authenticate cold':>18} {'authenticate cached':>20}")
    for alg, private in (
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
        ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ):
        public = private.public_key()
        pem = keys_dir.parent / f"{alg}.pub.pem"
        pem.write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo))
        settings = load_settings(environ={}, jwt_keys=str(pem))
        tokens = mint(private, alg, args.tokens * 3)
        bare = min(bare_decode_us(public, alg, tokens[r::3]) for r in range(3))
        cold = []
        for r in range(3):  # a fresh authenticator per round: every call misses the cache
            auth = CallerAuthenticator.from_settings(settings, gateway_keys)
            cold.append(await per_call_us(auth, tokens[r::3]))
        auth = CallerAuthenticator.from_settings(settings, gateway_keys)
        await auth.authenticate([f"Bearer {tokens[0]}"])
        cached = [await per_call_us(auth, [tokens[0]] * args.repeats) for _ in range(3)]
        print(f"{alg:7} {bare:16.1f} {min(cold):18.1f} {min(cached):20.2f}"
              f"   (cold median {statistics.median(cold):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
