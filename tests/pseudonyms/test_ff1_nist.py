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


def _reference_ff1_encrypt(key: bytes, radix: int, digits: str, tweak: bytes) -> str:
    """SP 800-38G Algorithm 7, transcribed step by step with no caching (PRF = AES-CBC-MAC, zero IV)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    def prf(data: bytes) -> bytes:
        encryptor = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
        return (encryptor.update(data) + encryptor.finalize())[-16:]

    def ciph(block: bytes) -> bytes:
        encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        return encryptor.update(block) + encryptor.finalize()

    def num(x: str) -> int:
        return int(x, radix) if x else 0

    def string(x: int, m: int) -> str:
        out = ""
        for _ in range(m):
            x, r = divmod(x, radix)
            out = ALPHABET[r] + out
        return out

    n, t = len(digits), len(tweak)
    u, v = n // 2, n - n // 2
    a, b_half = digits[:u], digits[u:]
    import math

    b = math.ceil(math.ceil(v * math.log2(radix)) / 8)
    d = 4 * math.ceil(b / 4) + 4
    p = bytes([1, 2, 1]) + radix.to_bytes(3, "big") + bytes([10, u % 256]) + n.to_bytes(4, "big") + t.to_bytes(4, "big")
    for i in range(10):
        q = tweak + bytes((-t - b - 1) % 16) + bytes([i]) + num(b_half).to_bytes(b, "big")
        r = prf(p + q)
        s = r
        j = 1
        while len(s) < d:
            s += ciph(bytes(x ^ y for x, y in zip(r, j.to_bytes(16, "big"), strict=True)))
            j += 1
        y = int.from_bytes(s[:d], "big")
        m = u if i % 2 == 0 else v
        c = (num(a) + y) % radix**m
        a, b_half = b_half, string(c, m)
    return a + b_half


@given(
    radix=st.sampled_from([2, 10, 16, 36]),
    data=st.data(),
    tweak=st.binary(max_size=40),
    key=st.sampled_from([bytes(range(16)), bytes(range(24)), bytes(range(32))]),
)
def test_matches_a_plain_transcription_of_the_standard(
    radix: int, data: st.DataObject, tweak: bytes, key: bytes
) -> None:
    """Covers what the NIST samples do not: long inputs whose [i] || NUM(B) spans two blocks of Q and S
    longer than one block, and long tweaks."""
    ff1 = FF1(key, radix)
    digits = data.draw(st.text(alphabet=ALPHABET[:radix], min_size=ff1.min_length, max_size=140))
    assert ff1.encrypt(digits, tweak) == _reference_ff1_encrypt(key, radix, digits, tweak)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"sample{s['n']}")
def test_the_transcription_itself_reproduces_nist(sample: dict[str, Any]) -> None:
    key, tweak = bytes.fromhex(sample["key"]), bytes.fromhex(sample["tweak"])
    assert _reference_ff1_encrypt(key, sample["radix"], sample["plaintext"], tweak) == sample["ciphertext"]


@pytest.mark.parametrize(("radix", "length"), [(36, 140), (36, 63), (2, 122), (10, 80)])
def test_long_inputs_match_the_transcription(radix: int, length: int) -> None:
    digits = (ALPHABET[:radix] * 200)[:length]
    ff1 = FF1(bytes(range(32)), radix)
    cipher = ff1.encrypt(digits, b"tweak")
    assert cipher == _reference_ff1_encrypt(bytes(range(32)), radix, digits, b"tweak")
    assert ff1.decrypt(cipher, b"tweak") == digits
