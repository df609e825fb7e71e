"""`gateway profiles check|test|render` in a subprocess against a temporary profile folder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from profile_texts import ENV, VALID_PROFILE


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **ENV, **(env or {})}
    return subprocess.run([sys.executable, "-m", "gateway", "profiles", *args], capture_output=True, text=True,
                          env=environment, timeout=60, check=False)


def test_check_passes_and_summarises(write_profile: Callable[..., Path]) -> None:
    result = run("check", str(write_profile()))
    assert result.returncode == 0, result.stderr
    assert "ok   carrier-xx-test: carrier, VN, 2 route(s), 2 example(s)" in result.stdout
    assert "1 profile(s), 2 route(s): all valid" in result.stdout


def test_check_reports_file_line_reason_and_fails(write_profile: Callable[..., Path]) -> None:
    folder = write_profile(VALID_PROFILE.replace("consent: null", "consent: marketing"))
    result = run("check", str(folder))
    assert result.returncode == 1
    line = VALID_PROFILE.splitlines().index("    consent: null") + 1
    expected = f"{folder / 'carrier-xx-test.yaml'}:{line}: route create-shipment: consent purpose 'marketing'"
    assert expected in result.stderr
    assert "1 invalid" in result.stdout


def test_test_prints_one_line_per_example(write_profile: Callable[..., Path]) -> None:
    result = run("test", str(write_profile()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS carrier-xx-test/create-shipment: a shipment" in result.stdout
    assert "PASS carrier-xx-test/create-shipment: a bad phone is refused" in result.stdout
    assert "2 passed, 0 failed" in result.stdout


def test_test_fails_on_a_wrong_expectation(write_profile: Callable[..., Path]) -> None:
    folder = write_profile(VALID_PROFILE.replace("paths: [recipient.phone]", "paths: [order_id]"))
    result = run("test", str(folder))
    assert result.returncode == 1
    assert "FAIL carrier-xx-test/create-shipment: a bad phone is refused" in result.stdout
    assert "1 passed, 1 failed" in result.stdout


def test_directory_defaults_to_the_settings(write_profile: Callable[..., Path]) -> None:
    folder = write_profile()
    result = run("check", env={"GATEWAY_PROFILES_DIR": str(folder)})
    assert result.returncode == 0, result.stderr
    assert "carrier-xx-test" in result.stdout


def test_render_writes_the_table(write_profile: Callable[..., Path], tmp_path: Path) -> None:
    output = tmp_path / "sharing.md"
    result = run("render", str(write_profile()), "--format", "md", "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert "Test carrier" in output.read_text()


def test_missing_folder_fails(tmp_path: Path) -> None:
    result = run("check", str(tmp_path / "nothing"))
    assert result.returncode == 1
    assert "does not exist" in result.stderr
