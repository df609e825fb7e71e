"""The gateway's secret material: where it lives, how it is created in development, and the keyed
references built from it.

`GATEWAY_KEYS_DIR` holds:
- `master.key`: 32 random bytes (hex), the root of every partner's pseudonym keys (see gateway.pseudonyms);
- `ledger-hmac.key`: 32 random bytes (hex), keys subject references and body digests in the ledger, so the
  ledger never holds a raw subject id or a raw body and a reader without the key cannot test guesses;
- `ledger-signing.pem` / `ledger-signing.pub.pem`: Ed25519 pair that signs ledger checkpoints; verifying
  needs only the public half;
- `jwt-dev.pem` / `jwt-dev.pub.pem`: Ed25519 pair for development caller tokens (`gateway token mint`).

In development mode missing files are created with a warning; otherwise a missing key is a ConfigError.
Outside development mode a key that is not secret is refused as well (`weak_key_reason`): the example
master key the project publishes, and keys anyone would guess (one byte repeated, a counting sequence,
a short pattern repeated). With the published key a partner could decrypt its own `fpe` pseudonyms and
test guesses against `hmac` ones.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import ConfigError, MalformedRequest, Violation

MASTER_KEY_FILE = "master.key"
LEDGER_HMAC_FILE = "ledger-hmac.key"
LEDGER_SIGNING_FILE = "ledger-signing.pem"
LEDGER_VERIFY_FILE = "ledger-signing.pub.pem"
JWT_DEV_PRIVATE_FILE = "jwt-dev.pem"
JWT_DEV_PUBLIC_FILE = "jwt-dev.pub.pem"


# bytes 0x00..0x1f: the key route examples run under, published in docs/profile-format.md (and
# gateway.profiles.EXAMPLE_MASTER_KEY) so that authors can write exact pseudonyms; never a real key.
EXAMPLE_MASTER_KEY = bytes(range(32))
# Every key value the project publishes, and where (for the refusal's reason).
PUBLISHED_EXAMPLE_KEYS = {EXAMPLE_MASTER_KEY: "the example key published in docs/profile-format.md"}
# A key made of one short pattern repeated (`deadbeef` x 8, a 16-hex-digit string pasted twice) is
# refused up to this period; a random 32-byte key has such a period with probability 2**-192.
_WEAK_PERIOD = 8


class DevelopmentKeyWarning(UserWarning):
    """Keys were generated on the fly, or a key is not secret: fine on a laptop, never in production."""


def _derive(root: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=b"partner-data-gateway/" + label).derive(root)


_SHA256_BLOCK = 64


class HmacSha256:
    """HMAC-SHA256 under one fixed key (RFC 2104), with the keyed inner and outer hash states computed
    once: each MAC copies two SHA-256 states instead of keying a new HMAC (about 1 µs less per call,
    and the pipeline computes two per request). Same output as `hmac.new(key, msg, sha256)`."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _SHA256_BLOCK:
            key = hashlib.sha256(key).digest()
        block = key.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def hexdigest(self, message: bytes) -> str:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


def normal_subject_id(subject_id: str) -> str | None:
    """The form of a data subject's id that its reference is computed from (NFC, surrounding white space
    removed), or None when the id is blank: empty, or only white space (U+3000, tab, newline...) and
    invisible format characters (U+200B, U+FEFF...). A blank id names nobody; every caller that checks a
    subject (the egress CheckSubject stage, the subject-rights API, the CLI) uses this one test, so the
    check and the reference always agree on what the id is. Format characters inside a real id are kept
    (and surrounding ones are not stripped): that keeps every existing non-blank id's reference unchanged."""
    normal = unicodedata.normalize("NFC", subject_id.strip())
    if all(char.isspace() or unicodedata.category(char) == "Cf" for char in normal):
        return None
    return normal


@dataclass(frozen=True)
class LedgerKeys:
    """Keys the ledger and the subject registry need. `hmac_key` never leaves the gateway."""

    hmac_key: bytes
    signing_key: Ed25519PrivateKey | None
    verify_key: Ed25519PublicKey

    def __post_init__(self) -> None:
        object.__setattr__(self, "_subject_mac", HmacSha256(_derive(self.hmac_key, b"subject-ref/v1")))
        object.__setattr__(self, "_digest_mac", HmacSha256(_derive(self.hmac_key, b"body-digest/v1")))

    def subject_ref(self, subject_id: str) -> str:
        """Keyed, stable reference for a data subject: the same for every spelling that only differs in
        surrounding white space or Unicode form. 64 hex characters (HMAC-SHA256). A blank id names nobody:
        refused (MalformedRequest) rather than mapped to the one reference every blank id would share."""
        normal = normal_subject_id(subject_id)
        if normal is None:
            raise MalformedRequest("a subject id is required", [Violation("subject_id", "empty")])
        mac: HmacSha256 = self._subject_mac  # type: ignore[attr-defined]
        return mac.hexdigest(normal.encode("utf-8"))

    def body_digest(self, body: bytes) -> str:
        """Keyed digest (HMAC-SHA256) of the exact bytes sent to a partner (proves what was sent without
        storing it)."""
        mac: HmacSha256 = self._digest_mac  # type: ignore[attr-defined]
        return mac.hexdigest(body)


@dataclass(frozen=True)
class GatewayKeys:
    master_key: bytes
    ledger: LedgerKeys
    jwt_dev_private: Ed25519PrivateKey | None
    jwt_dev_public: Ed25519PublicKey | None
    keys_dir: Path


def _read_hex_key(path: Path) -> bytes:
    text = path.read_text(encoding="ascii").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: expected 64 hex characters") from exc
    if len(key) != 32:
        raise ConfigError(f"{path}: expected a 32-byte key (64 hex characters), got {len(key)} bytes")
    return key


def weak_key_reason(key: bytes) -> str | None:
    """Why `key` is not a secret (a phrase without the key), or None. Refused: a key the project publishes,
    one byte value throughout (32 zero bytes), an arithmetic sequence of bytes (00 01 02 ..., ff fe fd ...,
    any constant step modulo 256) and a pattern of at most 8 bytes repeated. A key drawn at random is any of
    these with probability below 2**-190, so no real key is ever refused."""
    published = PUBLISHED_EXAMPLE_KEYS.get(key)
    if published is not None:
        return f"it is {published}"
    if len(set(key)) == 1:
        return "it is one byte value repeated"
    steps = {(b - a) % 256 for a, b in itertools.pairwise(key)}
    if len(steps) == 1:
        return "it is a counting sequence of bytes"
    for period in range(2, _WEAK_PERIOD + 1):
        if key == (key[:period] * (len(key) // period + 1))[: len(key)]:
            return f"it is a {period}-byte pattern repeated"
    return None


def _refuse_weak(path: Path, key: bytes, *, dev_mode: bool) -> None:
    """Outside development mode a weak key stops the start (ConfigError); in development mode it is
    accepted with a warning. Neither names the key, only the file and the reason."""
    reason = weak_key_reason(key)
    if reason is None:
        return
    if dev_mode:
        warnings.warn(
            f"development mode: {path.name} is not secret ({reason}); never use it in production",
            DevelopmentKeyWarning,
            stacklevel=3,
        )
        return
    raise ConfigError(
        f"{path}: refused outside development mode: {reason}, so it is no secret; "
        "put 32 random bytes there (docs/configuration.md, \"Keys\")"
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _ensure_pair(keys_dir: Path, private_name: str, public_name: str) -> bool:
    """Create the pair when the private half is missing (True); restore a missing public half from it."""
    priv = keys_dir / private_name
    pub = keys_dir / public_name
    if priv.exists():
        if not pub.exists():
            pub.write_bytes(_public_pem(load_ed25519_private(priv)))
        return False
    key = Ed25519PrivateKey.generate()
    _write_private(
        priv,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    pub.write_bytes(_public_pem(key))
    return True


def ensure_dev_keys(keys_dir: Path) -> list[str]:
    """Create whatever key is missing; return the names created (empty when all existed)."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    created: list[str] = []
    for name in (MASTER_KEY_FILE, LEDGER_HMAC_FILE):
        path = keys_dir / name
        if not path.exists():
            _write_private(path, secrets.token_hex(32).encode("ascii") + b"\n")
            created.append(name)
    for priv, pub in ((LEDGER_SIGNING_FILE, LEDGER_VERIFY_FILE), (JWT_DEV_PRIVATE_FILE, JWT_DEV_PUBLIC_FILE)):
        if _ensure_pair(keys_dir, priv, pub):
            created.append(priv)
    return created


def load_ed25519_private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: expected an Ed25519 private key")
    return key


def _ed25519_seed(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def load_ed25519_public(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: expected an Ed25519 public key")
    return key


def load_keys(keys_dir: Path, *, dev_mode: bool, create_missing: bool = True) -> GatewayKeys:
    """Load every key from `keys_dir`. In development mode create the missing ones first (unless
    `create_missing` is False: tools that must never invent a key, as a new one would match nothing already
    recorded) and accept a weak key with a warning; outside it refuse a missing or weak key (ConfigError,
    see `weak_key_reason`)."""
    if dev_mode and create_missing:
        created = ensure_dev_keys(keys_dir)
        if created:
            warnings.warn(
                f"development mode: created {', '.join(created)} in {keys_dir}; never use these in production",
                DevelopmentKeyWarning,
                stacklevel=2,
            )
    try:
        master = _read_hex_key(keys_dir / MASTER_KEY_FILE)
        ledger_hmac = _read_hex_key(keys_dir / LEDGER_HMAC_FILE)
        signing = load_ed25519_private(keys_dir / LEDGER_SIGNING_FILE)
    except FileNotFoundError as exc:
        raise ConfigError(f"missing key file {exc.filename} (GATEWAY_KEYS_DIR={keys_dir})") from exc
    _refuse_weak(keys_dir / MASTER_KEY_FILE, master, dev_mode=dev_mode)
    _refuse_weak(keys_dir / LEDGER_HMAC_FILE, ledger_hmac, dev_mode=dev_mode)
    _refuse_weak(keys_dir / LEDGER_SIGNING_FILE, _ed25519_seed(signing), dev_mode=dev_mode)
    jwt_priv: Ed25519PrivateKey | None = None
    jwt_pub: Ed25519PublicKey | None = None
    if (keys_dir / JWT_DEV_PUBLIC_FILE).exists():
        jwt_pub = load_ed25519_public(keys_dir / JWT_DEV_PUBLIC_FILE)
    if (keys_dir / JWT_DEV_PRIVATE_FILE).exists():
        jwt_priv = load_ed25519_private(keys_dir / JWT_DEV_PRIVATE_FILE)
    return GatewayKeys(
        master_key=master,
        ledger=LedgerKeys(hmac_key=ledger_hmac, signing_key=signing, verify_key=signing.public_key()),
        jwt_dev_private=jwt_priv,
        jwt_dev_public=jwt_pub,
        keys_dir=keys_dir,
    )
