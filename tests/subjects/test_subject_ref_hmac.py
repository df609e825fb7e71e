"""LedgerKeys' keyed references are plain HMAC-SHA256 under keys derived from the ledger HMAC key."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.errors import MalformedRequest
from gateway.keys import HmacSha256, LedgerKeys, _derive, normal_subject_id


@pytest.mark.parametrize("key_length", [0, 1, 32, 63, 64, 65, 200])
def test_hmac_sha256_matches_the_standard_library(key_length: int) -> None:
    key = os.urandom(key_length)
    mac = HmacSha256(key)
    for message in (b"", b"C-000123456", os.urandom(1000)):
        assert mac.hexdigest(message) == hmac.new(key, message, hashlib.sha256).hexdigest()
    # The precomputed states are copied, never consumed: the same message gives the same MAC again.
    assert mac.hexdigest(b"again") == mac.hexdigest(b"again")


def test_subject_ref_and_body_digest_are_hmac_under_derived_keys() -> None:
    signing = Ed25519PrivateKey.generate()
    root = os.urandom(32)
    keys = LedgerKeys(hmac_key=root, signing_key=signing, verify_key=signing.public_key())
    subject_key = _derive(root, b"subject-ref/v1")
    digest_key = _derive(root, b"body-digest/v1")
    # Surrounding white space and the Unicode form do not change the reference (NFC before the MAC).
    expected = hmac.new(subject_key, "K\u00edm".encode(), hashlib.sha256).hexdigest()
    assert keys.subject_ref(" Ki\u0301m ") == expected
    assert keys.subject_ref("K\u00edm") == expected
    assert keys.body_digest(b'{"a":1}') == hmac.new(digest_key, b'{"a":1}', hashlib.sha256).hexdigest()


@pytest.mark.parametrize("blank", ["", "   ", "\u3000", "\t\n", "\u200b", "\ufeff \u2060"])
def test_a_blank_subject_id_has_no_reference(blank: str) -> None:
    # One helper decides what a subject id is for the egress check, the rights API and the CLI: a blank id
    # names nobody, so it gets no reference (HMAC("") would be shared by every blank spelling).
    signing = Ed25519PrivateKey.generate()
    keys = LedgerKeys(hmac_key=os.urandom(32), signing_key=signing, verify_key=signing.public_key())
    assert normal_subject_id(blank) is None
    with pytest.raises(MalformedRequest):
        keys.subject_ref(blank)


def test_the_normal_id_keeps_inner_format_characters() -> None:
    # Only a wholly blank id is refused; a real id keeps its reference (no existing ledger entry moves).
    assert normal_subject_id(" Ki\u0301m\n") == "K\u00edm"
    assert normal_subject_id("a\u200bb") == "a\u200bb"
