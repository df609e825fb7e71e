"""Development keys: created once, never replaced, and a lost public half is restored from its private key."""

from __future__ import annotations

import warnings
from pathlib import Path

from gateway.keys import JWT_DEV_PUBLIC_FILE, LEDGER_VERIFY_FILE, ensure_dev_keys, load_keys


def test_keys_are_created_once_and_kept(tmp_path: Path) -> None:
    created = ensure_dev_keys(tmp_path)
    assert set(created) == {"master.key", "ledger-hmac.key", "ledger-signing.pem", "jwt-dev.pem"}
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert ensure_dev_keys(tmp_path) == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_missing_public_half_is_restored_from_the_private_key(tmp_path: Path) -> None:
    ensure_dev_keys(tmp_path)
    originals = {name: (tmp_path / name).read_bytes() for name in (LEDGER_VERIFY_FILE, JWT_DEV_PUBLIC_FILE)}
    for name in originals:
        (tmp_path / name).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is created, so no development-key warning either
        keys = load_keys(tmp_path, dev_mode=True)
    assert {name: (tmp_path / name).read_bytes() for name in originals} == originals
    assert keys.jwt_dev_public is not None
