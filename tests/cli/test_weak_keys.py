"""Keys that are no secret (the published example master key, one byte repeated, a counting sequence, a
short repeated pattern) stop the gateway and the key-loading commands outside development mode, with one
line that names the file and never the key; development mode accepts them with a warning."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.cli.main import main
from gateway.errors import ConfigError
from gateway.keys import (
    EXAMPLE_MASTER_KEY,
    JWT_DEV_PUBLIC_FILE,
    LEDGER_HMAC_FILE,
    LEDGER_SIGNING_FILE,
    MASTER_KEY_FILE,
    DevelopmentKeyWarning,
    ensure_dev_keys,
    load_keys,
    weak_key_reason,
)
from gateway.profiles import EXAMPLE_MASTER_KEY as PROFILES_EXAMPLE_KEY

WEAK = {
    "published example (docs/profile-format.md)": bytes(range(32)),
    "32 zero bytes": bytes(32),
    "32 ff bytes": b"\xff" * 32,
    "counting down": bytes(range(255, 223, -1)),
    "counting in steps of 3, wrapping": bytes((200 + 3 * i) % 256 for i in range(32)),
    "deadbeef x 8": bytes.fromhex("deadbeef" * 8),
    "0123456789abcdef pasted four times": bytes.fromhex("0123456789abcdef" * 4),
}


def _dev_keys(tmp_path: Path) -> Path:
    keys_dir = tmp_path / "keys"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ensure_dev_keys(keys_dir)
    return keys_dir


def _write_hex(path: Path, key: bytes) -> None:
    path.write_text(key.hex() + "\n", encoding="ascii")


def _write_signing_seed(path: Path, seed: bytes) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _assert_one_line_without_key(text: str, key: bytes) -> None:
    assert text.count("\n") <= 1, text
    for spelling in (key.hex(), key.hex().upper(), key.hex()[:16]):
        assert spelling not in text


def test_the_published_example_key_is_the_one_profiles_use() -> None:
    assert EXAMPLE_MASTER_KEY == PROFILES_EXAMPLE_KEY == bytes(range(32))
    assert weak_key_reason(EXAMPLE_MASTER_KEY) == "it is the example key published in docs/profile-format.md"


@pytest.mark.parametrize("key", WEAK.values(), ids=WEAK.keys())
def test_a_weak_master_key_is_refused_outside_development_mode(tmp_path: Path, key: bytes) -> None:
    keys_dir = _dev_keys(tmp_path)
    _write_hex(keys_dir / MASTER_KEY_FILE, key)
    with pytest.raises(ConfigError) as caught:
        load_keys(keys_dir, dev_mode=False)
    message = str(caught.value)
    assert message.startswith(f"{keys_dir / MASTER_KEY_FILE}: refused outside development mode: it is ")
    _assert_one_line_without_key(message, key)


@pytest.mark.parametrize("key", WEAK.values(), ids=WEAK.keys())
def test_development_mode_accepts_a_weak_master_key_with_a_warning(tmp_path: Path, key: bytes) -> None:
    keys_dir = _dev_keys(tmp_path)
    _write_hex(keys_dir / MASTER_KEY_FILE, key)
    with pytest.warns(DevelopmentKeyWarning, match="master.key is not secret") as caught:
        keys = load_keys(keys_dir, dev_mode=True)
    assert keys.master_key == key
    assert len(caught) == 1
    _assert_one_line_without_key(str(caught[0].message), key)


def test_a_weak_ledger_hmac_key_and_signing_seed_are_refused(tmp_path: Path) -> None:
    keys_dir = _dev_keys(tmp_path)
    _write_hex(keys_dir / LEDGER_HMAC_FILE, bytes(32))
    with pytest.raises(ConfigError, match=r"ledger-hmac\.key: refused outside development mode: it is one byte"):
        load_keys(keys_dir, dev_mode=False)
    _write_hex(keys_dir / LEDGER_HMAC_FILE, secrets.token_bytes(32))
    _write_signing_seed(keys_dir / LEDGER_SIGNING_FILE, bytes(range(32)))
    with pytest.raises(ConfigError, match=r"ledger-signing\.pem: refused outside development mode"):
        load_keys(keys_dir, dev_mode=False)


def test_random_keys_are_never_weak(tmp_path: Path) -> None:
    assert all(weak_key_reason(secrets.token_bytes(32)) is None for _ in range(2000))
    keys_dir = _dev_keys(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either
        load_keys(keys_dir, dev_mode=False)
        load_keys(keys_dir, dev_mode=True)


def _production_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys_dir: Path) -> None:
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GATEWAY_DEV_MODE", "false")
    monkeypatch.setenv("GATEWAY_KEYS_DIR", str(keys_dir))
    # Everything else a production start needs is in place, so the key is the only reason to stop.
    monkeypatch.setenv("GATEWAY_JWT_KEYS", str(keys_dir / JWT_DEV_PUBLIC_FILE))
    monkeypatch.setenv("GATEWAY_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")


def test_serve_refuses_to_start_with_the_example_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    keys_dir = _dev_keys(tmp_path)
    _write_hex(keys_dir / MASTER_KEY_FILE, EXAMPLE_MASTER_KEY)
    _production_env(monkeypatch, tmp_path, keys_dir)
    assert main(["serve", "--listen", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gateway: error: {keys_dir / MASTER_KEY_FILE}: refused outside development mode: "
                          "it is the example key published in docs/profile-format.md")
    _assert_one_line_without_key(err, EXAMPLE_MASTER_KEY)
    assert not (tmp_path / "ledger.db").exists()  # stopped before the ledger was opened


def test_serve_process_exits_2_with_the_example_key(tmp_path: Path) -> None:
    keys_dir = _dev_keys(tmp_path)
    _write_hex(keys_dir / MASTER_KEY_FILE, EXAMPLE_MASTER_KEY)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env = {**clean, "GATEWAY_DEV_MODE": "false", "GATEWAY_KEYS_DIR": str(keys_dir),
           "GATEWAY_JWT_KEYS": str(keys_dir / JWT_DEV_PUBLIC_FILE),
           "GATEWAY_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}"}
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--listen", "127.0.0.1:0"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gateway: error: ")
    assert "master.key: refused outside development mode" in lines[0]
    _assert_one_line_without_key(result.stderr, EXAMPLE_MASTER_KEY)


COMMANDS: dict[str, Callable[[Path], list[str]]] = {
    "subject show": lambda keys: ["subject", "show", "--keys-dir", str(keys), "customer-1"],
    "ledger query --subject": lambda keys: ["ledger", "query", "--subject", "customer-1"],
    "ledger prune": lambda keys: ["ledger", "prune", "--before", "2000-01-01T00:00:00Z"],
    "pseudonymise": lambda keys: ["pseudonymise", "--partner", "p", "--type", "token", "--keys-dir", str(keys), "x"],
}


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_commands_that_load_keys_refuse_the_example_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    command: Callable[[Path], list[str]],
) -> None:
    keys_dir = _dev_keys(tmp_path)
    _write_hex(keys_dir / MASTER_KEY_FILE, EXAMPLE_MASTER_KEY)
    _production_env(monkeypatch, tmp_path, keys_dir)
    assert main(command(keys_dir)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gateway: error: {keys_dir / MASTER_KEY_FILE}: refused outside development mode")
    _assert_one_line_without_key(err, EXAMPLE_MASTER_KEY)


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_commands_in_development_mode_warn_and_create_nothing_new(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    command: Callable[[Path], list[str]],
) -> None:
    keys_dir = _dev_keys(tmp_path)
    _write_hex(keys_dir / MASTER_KEY_FILE, EXAMPLE_MASTER_KEY)
    _production_env(monkeypatch, tmp_path, keys_dir)
    monkeypatch.setenv("GATEWAY_DEV_MODE", "true")
    before = sorted(p.name for p in keys_dir.iterdir())
    main(command(keys_dir))
    err = capsys.readouterr().err
    assert "gateway: warning: development mode: master.key is not secret" in err
    assert "refused outside development mode" not in err
    assert sorted(p.name for p in keys_dir.iterdir()) == before
