"""Export bundles: a self-contained copy of the ledger that verifies on another machine without the
database.

A bundle is a directory holding `records.jsonl` (every record, ordered by chain and sequence, exactly
the fields that were hashed plus `hash`), `checkpoints.jsonl` (the stored checkpoint copies), the
Ed25519 public key `ledger-signing.pub.pem`, and `manifest.json` (when, how many, the heads). Nothing
in it is secret: subject references and body digests are keyed, and the HMAC key is never exported.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.errors import ConfigError
from gateway.keys import load_ed25519_public
from gateway.ledger.records import now_text
from gateway.ledger.store import LedgerStore

RECORDS_FILE = "records.jsonl"
CHECKPOINTS_FILE = "checkpoints.jsonl"
PUBLIC_KEY_FILE = "ledger-signing.pub.pem"
MANIFEST_FILE = "manifest.json"
BUNDLE_FORMAT = "partner-data-gateway-ledger-bundle/1"


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: Path
    records: int
    checkpoints: int
    heads: dict[str, dict[str, Any]]


async def export_bundle(store: LedgerStore, output: Path, public_key: Ed25519PublicKey) -> ExportResult:
    """Write the bundle into the new directory `output` from one consistent snapshot of `store`."""
    _prepare_output(output)
    heads: dict[str, dict[str, Any]] = {}
    records = 0
    async with store.snapshot() as snap:
        checkpoints = await snap.fetch_checkpoints()
        with _durable_open(output / CHECKPOINTS_FILE) as fh:
            for entry in checkpoints:
                fh.write(orjson.dumps(entry) + b"\n")
        with _durable_open(output / RECORDS_FILE) as fh:
            async for record in snap.iter_records():
                fh.write(orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n")
                heads[record["chain"]] = {"sequence": record["sequence"], "hash": record["hash"]}
                records += 1
    (output / PUBLIC_KEY_FILE).write_bytes(
        public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    manifest = {"format": BUNDLE_FORMAT, "exported_at": now_text(), "records": records,
                "checkpoints": len(checkpoints), "heads": heads}
    (output / MANIFEST_FILE).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return ExportResult(output, records, len(checkpoints), heads)


def _prepare_output(output: Path) -> None:
    if output.exists() and any(output.iterdir()):
        raise ConfigError(f"export: {output} exists and is not empty")
    output.mkdir(parents=True, exist_ok=True)


class _durable_open:
    """Open for writing; flush and fsync on close so a finished export survives a crash."""

    def __init__(self, path: Path) -> None:
        self._fh: IO[bytes] = path.open("xb")

    def __enter__(self) -> IO[bytes]:
        return self._fh

    def __exit__(self, *exc: object) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


class BundleSnapshot:
    """A bundle read back as a LedgerSnapshot, so the same verifier checks it."""

    def __init__(self, path: Path) -> None:
        if not (path / RECORDS_FILE).is_file() or not (path / CHECKPOINTS_FILE).is_file():
            raise ConfigError(f"bundle {path}: expected {RECORDS_FILE} and {CHECKPOINTS_FILE} in a directory")
        self.path = path

    def public_key(self) -> Ed25519PublicKey:
        return load_ed25519_public(self.path / PUBLIC_KEY_FILE)

    def _lines(self, name: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with (self.path / name).open("rb") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        value = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise ConfigError(f"bundle {name}:{number}: not valid JSON") from exc
                    if not isinstance(value, dict):
                        raise ConfigError(f"bundle {name}:{number}: expected a JSON object")
                    out.append(value)
        return out

    async def fetch_checkpoints(self) -> list[dict[str, Any]]:
        return self._lines(CHECKPOINTS_FILE)

    async def fetch_kind(self, kind: str) -> list[dict[str, Any]]:
        found = [r for r in self._lines(RECORDS_FILE) if r.get("kind") == kind]
        return sorted(found, key=lambda r: str(r.get("time")))

    async def iter_records(self) -> AsyncIterator[dict[str, Any]]:
        with (self.path / RECORDS_FILE).open("rb") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise ConfigError(f"bundle {RECORDS_FILE}:{number}: not valid JSON") from exc
                yield value
