"""Fixtures for the loader and CLI tests: a valid profile as text, written into a temporary folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from profile_texts import VALID_PROFILE

from gateway.pseudonyms import PartnerKeyring, Pseudonymiser


@pytest.fixture(scope="session")
def pseudonymiser() -> Pseudonymiser:
    return Pseudonymiser(PartnerKeyring(bytes(range(50, 82))))


@pytest.fixture
def write_profile(tmp_path: Path) -> Callable[..., Path]:
    folder = tmp_path / "profiles"
    folder.mkdir()

    def write(text: str = VALID_PROFILE, name: str = "carrier-xx-test.yaml") -> Path:
        path = folder / name
        path.write_text(text, encoding="utf-8")
        return folder
    return write
