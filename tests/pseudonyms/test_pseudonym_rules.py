"""Per-type rules: what is refused and why (without echoing the value), fpe restrictions, the all-zero
advertising ID, key derivation, and the numbering-plan tables cross-checked against python-stdnum."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st
from pseudonym_strategies import IMSI_NETWORKS
from stdnum import luhn, numdb

from gateway.errors import InvalidIdentifier
from gateway.pseudonyms import (
    ID_TYPES,
    MODES,
    ZERO_UUID,
    PartnerKeyring,
    Pseudonymiser,
    is_valid,
    luhn_check_digit,
    normalise,
)
from gateway.pseudonyms.formats import keyed_sha256
from gateway.pseudonyms.tables import COUNTRY_CALLING_CODES, country_calling_code, mnc_length

MASTER = bytes(range(32))
PSEUDONYMISER = Pseudonymiser(PartnerKeyring(MASTER))

INVALID = [
    ("imei", "490154203237519", "check digit"),
    ("imei", "49015420323751", "15 digits"),
    ("imei", "4901542032375188", "15 digits"),
    ("imei", "49015420323751x", "15 digits"),
    ("imei", "٤٩٠١٥٤٢٠٣٢٣٧٥١٨", "15 digits"),  # Arabic-Indic digits
    ("imsi", "3101501234567", "14 or 15"),
    ("imsi", "110150123456789", "mobile country code"),
    ("iccid", "8944500102198304827", "check digit"),
    ("iccid", "8844500102198304825", "89"),
    ("iccid", "89445001021983", "18 to 22"),
    ("mac", "00:1a:2b:3c:4d", "12 hex"),
    ("mac", "00:1a-2b:3c:4d:5e", "12 hex"),
    ("mac", "00:1a:2b:3c:4d:5g", "12 hex"),
    ("android_id", "9774d56d682e549", "16 hex"),
    ("android_id", "9774d56d682e549z", "16 hex"),
    ("advertising_id", "38400000-8cf0-11bd-b23e-10b96e40000", "UUID"),
    ("phone", "020 7946 0958", "international"),
    ("phone", "+999 123456", "country calling code"),
    ("phone", "+44 12", "national digits"),
    ("phone", "+44 2079460958 12345", "15 digits"),
    ("phone", "+44 20 7946 O958", "digits"),
    ("email", "alice.example.org", "local@domain"),
    ("email", "alice@@example.org", "dot-atom"),
    ("email", "alice..b@example.org", "dot-atom"),
    ("email", "alice@example", "host name"),
    ("email", "alice@-example.org", "host name"),
    ("email", "élise@example.org", "ASCII"),
    ("email", "a" * 65 + "@example.org", "length"),
    ("token", "", "1 to 256"),
    ("token", "x" * 257, "1 to 256"),
    ("token", "abc\x00def", "control"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("id_type", "value", "reason"), INVALID)
def test_invalid_input_is_refused_without_echoing_it(id_type: str, value: str, reason: str, mode: str) -> None:
    assert not is_valid(id_type, value)
    with pytest.raises(InvalidIdentifier) as refused:
        PSEUDONYMISER.pseudonymise("carrier-a", id_type, mode, value)
    detail = refused.value.detail
    assert detail.startswith(f"{id_type}: ")
    assert reason in detail
    if len(value.strip()) >= 4:
        assert value.strip() not in detail
        assert value.strip() not in str(refused.value.to_problem())
    assert refused.value.status == 422


@pytest.mark.parametrize("id_type", ID_TYPES)
def test_non_string_is_refused(id_type: str) -> None:
    with pytest.raises(InvalidIdentifier, match="expected a string"):
        PSEUDONYMISER.pseudonymise("carrier-a", id_type, "hmac", 490154203237518)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("id_type", "value", "reason"),
    [
        ("mac", "02:1a:2b:3c:4d:5e", "universally administered unicast"),  # locally administered
        ("mac", "01:00:5e:00:00:fb", "universally administered unicast"),  # multicast
        ("mac", "ff:ff:ff:ff:ff:ff", "universally administered unicast"),  # broadcast
        ("advertising_id", "38400000-8cf0-11bd-b23e-10b96e40000d", "version-4"),  # version 1
        ("phone", "+683 4002", "at least 7"),  # Niue: 4-digit numbers
        ("phone", "+44 20 794", "at least 7"),
        ("email", "a" * 50 + "@example.org", "at most 56"),
        ("token", "é" * 200, "256 UTF-8 bytes"),
    ],
)
def test_fpe_refuses_what_it_cannot_reverse(id_type: str, value: str, reason: str) -> None:
    assert is_valid(id_type, value)
    PSEUDONYMISER.pseudonymise("carrier-a", id_type, "hmac", value)  # one-way mode takes it
    with pytest.raises(InvalidIdentifier, match=reason):
        PSEUDONYMISER.pseudonymise("carrier-a", id_type, "fpe", value)


@pytest.mark.parametrize(
    ("id_type", "token"),
    [
        ("mac", "00:1a:2b:3c:4d:5e"),  # universally administered: never an fpe pseudonym
        ("email", "alice@example.org"),  # not on the pseudonym domain
        ("email", "a-b@example.com"),  # not base 36
        ("token", "ABC-DEF"),
        ("imei", "490154203237519"),
    ],
)
def test_reidentify_refuses_what_is_not_a_pseudonym(id_type: str, token: str) -> None:
    with pytest.raises(InvalidIdentifier):
        PSEUDONYMISER.reidentify("carrier-a", id_type, token)


def test_reidentify_with_another_partner_does_not_return_the_value() -> None:
    value = "+82 10 1234 5678"
    token = PSEUDONYMISER.pseudonymise("carrier-a", "phone", "fpe", value)
    assert PSEUDONYMISER.reidentify("carrier-a", "phone", token) == "+821012345678"
    assert PSEUDONYMISER.reidentify("carrier-b", "phone", token) != "+821012345678"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spelling", [ZERO_UUID, ZERO_UUID.upper(), "0" * 32, f" {ZERO_UUID} "])
def test_limit_ad_tracking_uuid_passes_unchanged(mode: str, spelling: str) -> None:
    assert PSEUDONYMISER.pseudonymise("carrier-a", "advertising_id", mode, spelling) == ZERO_UUID
    assert PSEUDONYMISER.reidentify("carrier-a", "advertising_id", ZERO_UUID) == ZERO_UUID


def test_phone_keeps_country_code_and_first_national_digit() -> None:
    for value, prefix in (("+1 (415) 555-2671", "+14"), ("0044 7911 123456", "+447"), ("+82-10-1234-5678", "+821")):
        for mode in MODES:
            pseudonym = PSEUDONYMISER.pseudonymise("carrier-a", "phone", mode, value)
            assert pseudonym.startswith(prefix)
            assert len(pseudonym) == len(normalise("phone", value))


def test_unknown_type_or_mode_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown identifier type"):
        PSEUDONYMISER.bind("carrier-a", "ssn", "hmac")
    with pytest.raises(ValueError, match="unknown pseudonym mode"):
        PSEUDONYMISER.bind("carrier-a", "imei", "sha1")
    with pytest.raises(ValueError, match="unknown identifier type"):
        normalise("ssn", "123")


# --- keys ---------------------------------------------------------------------------------------------------


def test_partner_key_is_hkdf_over_partner_type_and_version() -> None:
    """Re-derives a key from the documented construction (docs/pseudonyms.md), independently."""
    info = b"partner-data-gateway/pseudonym-key/v1"
    for field in (b"carrier-a", b"imei"):
        info += struct.pack(">H", len(field)) + field
    info += struct.pack(">I", 3)
    expected = HKDF(algorithm=SHA256(), length=32, salt=None, info=info).derive(MASTER)
    assert PartnerKeyring(MASTER).key_for("carrier-a", "imei", 3) == expected
    assert PartnerKeyring(MASTER, version=3).key_for("carrier-a", "imei") == expected


def test_imei_hmac_pseudonym_follows_the_documented_construction() -> None:
    partner_key = PartnerKeyring(MASTER).key_for("carrier-a", "imei")
    subkey = hmac.new(partner_key, b"pseudonym/hmac-sha256", hashlib.sha256).digest()
    drawn = int.from_bytes(hmac.new(subkey, b"490154203237518", hashlib.sha256).digest(), "big")
    body = f"{drawn % 10**14:014d}"
    expected = body + luhn.calc_check_digit(body)
    assert PSEUDONYMISER.pseudonymise("carrier-a", "imei", "hmac", "49 015420 323751 8") == expected


def _documented_digits(partner: str, id_type: str, message: str, count: int) -> str:
    partner_key = PartnerKeyring(MASTER).key_for(partner, id_type)
    subkey = hmac.new(partner_key, b"pseudonym/hmac-sha256", hashlib.sha256).digest()
    drawn = int.from_bytes(hmac.new(subkey, message.encode(), hashlib.sha256).digest(), "big")
    return f"{drawn % 10**count:0{count}d}"


@settings(max_examples=300, deadline=None)
@given(st.text("0123456789", min_size=14, max_size=14))
def test_imei_hmac_pseudonyms_follow_the_documented_construction(body: str) -> None:
    """The bound function's written-out digit encoding and Luhn digit against the construction itself."""
    imei = body + luhn.calc_check_digit(body)
    digits = _documented_digits("carrier-a", "imei", imei, 14)
    assert PSEUDONYMISER.pseudonymise("carrier-a", "imei", "hmac", imei) == digits + luhn.calc_check_digit(digits)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(COUNTRY_CALLING_CODES)), st.text("0123456789", min_size=4, max_size=14))
def test_phone_hmac_pseudonyms_follow_the_documented_construction(code: str, national: str) -> None:
    """"+CC" and the first national digit stay; the other national digits are the keyed digits."""
    number = f"+{code}{national}"[:16]
    if len(number) - 1 - len(code) < 4:
        return
    kept = number[: 2 + len(code)]
    expected = kept + _documented_digits("carrier-a", "phone", number, len(number) - len(kept))
    assert PSEUDONYMISER.pseudonymise("carrier-a", "phone", "hmac", number) == expected
    assert PSEUDONYMISER.pseudonymise("carrier-a", "phone", "hmac", "00" + number[1:]) == expected


def test_keys_differ_by_partner_type_and_version_and_are_unambiguous() -> None:
    keyring = PartnerKeyring(MASTER)
    keys = {
        keyring.key_for(partner, id_type, version)
        for partner in ("a", "ab", "b")
        for id_type in ID_TYPES
        for version in (1, 2)
    }
    assert len(keys) == 3 * len(ID_TYPES) * 2
    assert PartnerKeyring(bytes(32)).key_for("a", "imei") != keyring.key_for("a", "imei")


@pytest.mark.parametrize("version", [0, -1, True, 2**32, 1.0])
def test_bad_key_version_is_refused(version: object) -> None:
    with pytest.raises(ValueError, match="key version"):
        PartnerKeyring(MASTER, version=version)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key version"):
        PartnerKeyring(MASTER).key_for("a", "imei", version)  # type: ignore[arg-type]


def test_keyring_refuses_short_master_and_bad_partner_and_hides_the_key() -> None:
    with pytest.raises(ValueError):
        PartnerKeyring(bytes(16))
    with pytest.raises(ValueError):
        PartnerKeyring(MASTER).key_for("", "imei")
    with pytest.raises(ValueError):
        PartnerKeyring(MASTER).key_for(" a", "imei")
    assert MASTER.hex() not in repr(PartnerKeyring(MASTER))
    assert "hidden" in repr(PartnerKeyring(MASTER))


# --- tables and helpers -------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789", min_size=1, max_size=25))
def test_luhn_matches_stdnum(body: str) -> None:
    assert luhn_check_digit(body) == luhn.calc_check_digit(body)


@settings(max_examples=500, deadline=None)
@given(st.text("0123456789", max_size=6) | st.text(max_size=5) | st.sampled_from(sorted(COUNTRY_CALLING_CODES)))
def test_calling_code_table_equals_the_search(digits: str) -> None:
    from gateway.pseudonyms.tables import _calling_code_by_search

    assert country_calling_code(digits) == _calling_code_by_search(digits)
    for code in COUNTRY_CALLING_CODES:
        assert country_calling_code(code + digits) == _calling_code_by_search(code + digits) == code


@settings(max_examples=300, deadline=None)
@given(st.text("0123456789", min_size=1, max_size=25))
def test_luhn_validity_matches_stdnum(number: str) -> None:
    from gateway.pseudonyms.formats import _luhn_valid

    assert _luhn_valid(number) == luhn.is_valid(number)
    fixed = number[:-1] + luhn.calc_check_digit(number[:-1]) if len(number) > 1 else number
    assert _luhn_valid(fixed) == luhn.is_valid(fixed)


def test_country_calling_codes_form_a_prefix_code() -> None:
    for code in COUNTRY_CALLING_CODES:
        assert code.isdigit()
        assert 1 <= len(code) <= 3
        assert code[0] != "0"
        assert not any(code != other and other.startswith(code) for other in COUNTRY_CALLING_CODES)
    assert country_calling_code("821012345678") == "82"
    assert country_calling_code("14155552671") == "1"
    assert country_calling_code("8522123456") == "852"
    assert country_calling_code("28123456") is None  # 28x is spare


def _stdnum_mncs() -> list[tuple[str, str, bool]]:
    """(MCC, MNC, ambiguous): every single MNC in stdnum's IMSI data; ambiguous when a 3-digit MNC of
    the same MCC starts with this 2-digit one, or the reverse."""
    out = []
    for _length, mcc, mcc_high, _props, children in numdb.get("imsi").prefixes:
        if mcc != mcc_high:
            continue
        singles = [low for _l, low, high, _p, _c in children if low == high and len(low) in (2, 3)]
        for mnc in singles:
            clash = any(o != mnc and (o.startswith(mnc) or mnc.startswith(o)) for o in singles)
            out.append((mcc, mnc, clash))
    return out


def test_mnc_length_agrees_with_stdnum() -> None:
    """Every 3-digit MNC is kept whole; every unambiguous 2-digit MNC keeps exactly 2 digits, except in
    the all-3-digit MCCs, where the few 2-digit entries are historic (and keeping 3 still keeps them)."""
    disagreements = []
    for mcc, mnc, ambiguous in _stdnum_mncs():
        imsi = mcc + mnc + "0" * (15 - len(mcc) - len(mnc))
        length = mnc_length(imsi)
        if len(mnc) == 3 and length != 3:
            disagreements.append((mcc, mnc))
        if len(mnc) == 2 and length != 2 and not ambiguous and mcc not in ("310", "338", "722"):
            disagreements.append((mcc, mnc))
    assert disagreements == []
    assert len(IMSI_NETWORKS) > 1000  # the cross-check covered the real data


def test_normalise_gives_canonical_forms() -> None:
    assert normalise("imei", " 49-015420-323751-8 ") == "490154203237518"
    assert normalise("mac", "001A.2B3C.4D5E") == "00:1a:2b:3c:4d:5e"
    assert normalise("android_id", "9774D56D682E549C") == "9774d56d682e549c"
    assert normalise("advertising_id", "F47AC10B58CC4372A5670E02B2C3D479") == "f47ac10b-58cc-4372-a567-0e02b2c3d479"
    assert normalise("phone", "+44 (0)20 7946 0958") == "+442079460958"
    assert normalise("email", "  Alice@Example.ORG ") == "alice@example.org"
    assert normalise("token", "  ab c ") == "ab c"


@settings(max_examples=200, deadline=None)
@given(key=st.binary(max_size=130), message=st.binary(max_size=200))
def test_keyed_sha256_is_hmac_sha256(key: bytes, message: bytes) -> None:
    assert keyed_sha256(key)(message) == hmac.new(key, message, hashlib.sha256).digest()
