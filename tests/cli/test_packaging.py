"""A wheel built from the checkout works without the checkout: it carries the profile schema, the OpenAPI
document, the shipped profiles and the transfer rules, and the code finds them inside the package.

The wheel is installed with `pip install --target` into a temporary folder and run from an empty working
directory, so nothing can be read from the repository by accident (the test asserts that the imported
package is the installed copy).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

PROBE = """
import gateway, json, sys
from pathlib import Path
from gateway.profiles import load_profiles
from gateway.profiles.examples import example_pseudonymiser
from gateway.profiles.loader import SCHEMA_PATH
from gateway.proxy.app import _openapi_document
from gateway.resources import shipped
from gateway.subjects import TransferRules
from gateway.config import Settings

target = Path(sys.argv[1]).resolve()
assert Path(gateway.__file__).resolve().is_relative_to(target), gateway.__file__
assert SCHEMA_PATH.resolve().is_relative_to(target), SCHEMA_PATH
profiles = load_profiles(shipped("partner_profiles"), pseudonymiser=example_pseudonymiser())
rules = TransferRules.load(Settings().transfer_rules)
document = json.loads(_openapi_document())
print(json.dumps({"partners": len(profiles.profiles), "paths": len(document["paths"]), "rules": rules is not None}))
"""


def test_a_wheel_runs_without_the_checkout(tmp_path: Path) -> None:
    # Build from a copy, so the build's own output (build/, *.egg-info) never lands in the checkout; the
    # relative symlinks in gateway/shipped/ are copied as links and resolve inside the copy.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "data", "keys", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
    ))
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "gateway/shipped/schemas/partner_profile.schema.json",
        "gateway/shipped/schemas/disclosure_record.schema.json",
        "gateway/shipped/schemas/openapi.yaml",
        "gateway/subjects/transfer_rules.yaml",
    ):
        assert expected in names
    shipped_profiles = {n for n in names if n.startswith("gateway/shipped/partner_profiles/")}
    assert len(shipped_profiles) == len(list((ROOT / "partner_profiles").glob("*.yaml")))

    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("GATEWAY_PROFILES_DIR", None)
    env.pop("GATEWAY_TRANSFER_RULES", None)
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(target)], cwd=empty, env=env, capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    summary = probe.stdout.strip().splitlines()[-1]
    assert f'"partners": {len(shipped_profiles)}' in summary
    assert '"rules": true' in summary
    assert '"paths": 1,' not in summary  # the full document, not the minimal fallback
