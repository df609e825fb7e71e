"""FF1 against NIST SP 800-38G's published samples (a copy of shared/vectors/ff1_nist_samples.json lives
next to this file, so the test does not depend on where the shared folder is checked out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.pseudonyms.ff1 import ALPHABET, FF1

SAMPLES: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "ff1_nist_samples.json").read_text(encoding="utf-8")
)["samples"]


def test_all_nine_samples_are_present() -> None:
    assert sorted(s["n"] for s in SAMPLES) == list(range(1, 10))


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"sample{s['n']}")
def test_encrypt_reproduces_nist_sample(sample: dict[str, Any]) -> None:
    ff1 = FF1(bytes.fromhex(sample["key"]), sample["radix"])
    assert ff1.encrypt(sample["plaintext"], bytes.fromhex(sample["tweak"])) == sample["ciphertext"]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"sample{s['n']}")
def test_decrypt_reproduces_nist_sample(sample: dict[str, Any]) -> None:
    ff1 = FF1(bytes.fromhex(sample["key"]), sample["radix"])
    assert ff1.decrypt(sample["ciphertext"], bytes.fromhex(sample["tweak"])) == sample["plaintext"]


@given(
    radix=st.sampled_from([2, 10, 16, 36]),
    data=st.data(),
    tweak=st.binary(max_size=40),
    key=st.binary(min_size=32, max_size=32),
)
def test_round_trip_any_length_and_tweak(radix: int, data: st.DataObject, tweak: bytes, key: bytes) -> None:
    ff1 = FF1(key, radix)
    digits = data.draw(st.text(alphabet=ALPHABET[:radix], min_size=ff1.min_length, max_size=140))
    cipher = ff1.encrypt(digits, tweak)
    assert len(cipher) == len(digits)
    assert set(cipher) <= set(ALPHABET[:radix])
    assert ff1.decrypt(cipher, tweak) == digits


def test_tweak_changes_the_ciphertext() -> None:
    ff1 = FF1(bytes(32), 10)
    assert ff1.encrypt("0123456789", b"a") != ff1.encrypt("0123456789", b"b")


@pytest.mark.parametrize(
    ("radix", "digits"),
    [(10, "12345"), (10, "12a456789"), (10, "１２３４５６７８"), (2, "0101010101010101012"), (10, "+1234567")],
)
def test_refuses_short_or_foreign_input(radix: int, digits: str) -> None:
    with pytest.raises(ValueError):
        FF1(bytes(16), radix).encrypt(digits)


@pytest.mark.parametrize(("key_length", "radix"), [(15, 10), (32, 1), (32, 37)])
def test_refuses_bad_key_or_radix(key_length: int, radix: int) -> None:
    with pytest.raises(ValueError):
        FF1(bytes(key_length), radix)
