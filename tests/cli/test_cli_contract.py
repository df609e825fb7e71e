"""The `gateway` command's contract: every command and sub-command has --help, and an expected failure is
one clear line on stderr with a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.main import build_parser, main
from gateway.config import load_settings
from gateway.errors import ConfigError


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found.extend(_commands(sub, (*prefix, name)))
    return found


COMMANDS = _commands(build_parser())


def test_the_design_commands_exist() -> None:
    expected = {
        ("serve",), ("demo",), ("profiles", "check"), ("profiles", "test"), ("profiles", "render"),
        ("ledger", "verify"), ("ledger", "query"), ("ledger", "prune"), ("ledger", "export"),
        ("token", "mint"), ("pseudonymise",), ("reidentify",), ("subject", "show"),
    }
    assert expected <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: gateway " + " ".join(command) in capsys.readouterr().out


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=cwd, env={**clean, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_missing_key_file_is_one_line(tmp_path: Path) -> None:
    result = _run(["ledger", "verify"], tmp_path, GATEWAY_KEYS_DIR=str(tmp_path / "no-keys"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gateway: error: ")
    assert "ledger-signing.pub.pem" in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_setting_is_one_line(tmp_path: Path) -> None:
    result = _run(["ledger", "verify"], tmp_path, GATEWAY_JWT_ALGORITHMS="HS256")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gateway: error: GATEWAY_JWT_ALGORITHMS: only asymmetric algorithms are allowed, got ['HS256']"]


def test_a_mistyped_variable_is_refused_with_the_setting_it_resembles(tmp_path: Path) -> None:
    # Left at its default without a word, a mistyped timeout or audience would be a silent misconfiguration.
    result = _run(["ledger", "verify"], tmp_path, GATEWAY_LEDGER_COMMIT_TIMEOUT_S="3")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gateway: error: unknown variable GATEWAY_LEDGER_COMMIT_TIMEOUT_S "
        "(did you mean GATEWAY_LEDGER_COMMIT_TIMEOUT_SECONDS?)"]


def test_variables_that_are_not_settings_are_left_alone() -> None:
    kubernetes = {  # what Kubernetes injects for a Service named "gateway"
        "GATEWAY_SERVICE_HOST": "10.0.0.7", "GATEWAY_SERVICE_PORT": "8080", "GATEWAY_SERVICE_PORT_HTTP": "8080",
        "GATEWAY_PORT": "tcp://10.0.0.7:8080", "GATEWAY_PORT_8080_TCP": "tcp://10.0.0.7:8080",
        "GATEWAY_PORT_8080_TCP_PROTO": "tcp", "GATEWAY_PORT_8080_TCP_PORT": "8080",
        "GATEWAY_PORT_8080_TCP_ADDR": "10.0.0.7",
    }
    others = {"GATEWAY_LEDGER_CHAIN_SUFFIX": "w9", "GATEWAY_TEST_POSTGRES_URL": "postgresql://127.0.0.1/test"}
    settings = load_settings(environ={**kubernetes, **others, "GATEWAY_LEDGER_COMMIT_TIMEOUT_SECONDS": "3"})
    assert settings.ledger_commit_timeout_seconds == 3.0
    for unknown in ("GATEWAY_EXTRA", "GATEWAY_PORTS", "GATEWAY_NOT_A_SETTING"):
        with pytest.raises(ConfigError, match=f"unknown variable {unknown}"):
            load_settings(environ={unknown: "1"})


def test_bad_identifier_is_one_line_without_the_value(tmp_path: Path) -> None:
    result = _run(["pseudonymise", "--partner", "carrier-tw-hct", "--type", "imei", "490154203237519"], tmp_path,
                  GATEWAY_KEYS_DIR=str(tmp_path / "keys"))
    assert result.returncode != 0
    assert "490154203237519" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("gateway: error: ")]
    assert "Traceback" not in result.stderr
