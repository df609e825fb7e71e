"""`gateway pseudonymise` and `gateway reidentify` run as real subprocesses against a temporary key folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.keys import load_keys
from gateway.pseudonyms import PartnerKeyring, Pseudonymiser


def _gateway(keys_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GATEWAY_KEYS_DIR": str(keys_dir), "GATEWAY_DEV_MODE": "false"}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_pseudonymise_prints_what_the_partner_sees(keys_dir: Path) -> None:
    expected = Pseudonymiser(PartnerKeyring(load_keys(keys_dir, dev_mode=False).master_key)).pseudonymise(
        "dhl-kr", "imei", "hmac", "490154203237518"
    )
    done = _gateway(keys_dir, "pseudonymise", "--partner", "dhl-kr", "--type", "imei", "49-015420-323751-8")
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected + "\n"


def test_fpe_pseudonym_reidentifies_and_key_version_matters(keys_dir: Path) -> None:
    args = ("--partner", "dhl-kr", "--type", "phone")
    token = _gateway(keys_dir, "pseudonymise", *args, "--mode", "fpe", "-", stdin="+82 10-1234-5678\n").stdout.strip()
    assert token.startswith("+821")
    assert len(token) == len("+821012345678")
    back = _gateway(keys_dir, "reidentify", *args, token)
    assert (back.returncode, back.stdout) == (0, "+821012345678\n")
    v2 = _gateway(keys_dir, "pseudonymise", *args, "--mode", "fpe", "--key-version", "2", "+821012345678")
    assert v2.returncode == 0
    assert v2.stdout.strip() != token
    old = _gateway(keys_dir, "reidentify", *args, "--key-version", "2", v2.stdout.strip())
    assert old.stdout == "+821012345678\n"


def test_invalid_value_is_one_clear_line_without_the_value(keys_dir: Path) -> None:
    done = _gateway(keys_dir, "pseudonymise", "--partner", "p", "--type", "imei", "490154203237519")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "imei: check digit does not match" in done.stderr
    assert "490154203237519" not in done.stderr


def test_missing_keys_is_a_clear_error(tmp_path: Path) -> None:
    done = _gateway(tmp_path / "nowhere", "pseudonymise", "--partner", "p", "--type", "token", "abc")
    assert done.returncode == 2
    assert done.stderr.startswith("gateway: error: missing key file")
    assert done.stderr.count("\n") == 1


def test_keys_dir_flag_overrides_the_environment(keys_dir: Path, tmp_path: Path) -> None:
    args = ("pseudonymise", "--partner", "p", "--type", "token", "abc")
    from_env = _gateway(keys_dir, *args)
    from_flag = _gateway(tmp_path / "nowhere", *args[:1], "--keys-dir", str(keys_dir), *args[1:])
    assert from_env.returncode == from_flag.returncode == 0
    assert from_env.stdout == from_flag.stdout
