"""Property tests: the already-normalised fast paths of the phone and IMEI formats (the pseudonyms on the
policy hot path) against the general normalisation they skip, copied here as it was before them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import InvalidIdentifier
from gateway.pseudonyms import PartnerKeyring, Pseudonymiser
from gateway.pseudonyms.formats import (
    _PHONE_MIN_NATIONAL,
    _PHONE_NOISE,
    FORMATS,
    _ascii_digits,
    _digits,
    _imei_luhn_valid,
    _invalid,
    _luhn_valid,
    _text,
    _without_separators,
    keyed_sha256,
    luhn_check_digit,
)
from gateway.pseudonyms.tables import COUNTRY_CALLING_CODES, country_calling_code

PSEUDONYMISER = Pseudonymiser(PartnerKeyring(bytes(range(32))))


def reference_imei(value: str) -> str:
    digits = _without_separators(_text("imei", value))
    if len(digits) != 15 or not _ascii_digits(digits):
        raise _invalid("imei", "expected 15 digits")
    if luhn_check_digit(digits[:14]) != digits[14]:
        raise _invalid("imei", "check digit does not match")
    return digits


def reference_phone(value: str) -> str:
    text = _text("phone", value)
    digits = _PHONE_NOISE.sub("", text.replace("(0)", ""))
    if digits.startswith("+"):
        digits = digits[1:]
    elif digits.startswith("00"):
        digits = digits[2:]
    else:
        raise _invalid("phone", "expected international form (+ or 00 and the country code)")
    if not _ascii_digits(digits):
        raise _invalid("phone", "expected digits")
    code = country_calling_code(digits)
    if code is None:
        raise _invalid("phone", "unknown country calling code")
    if len(digits) > 15 or len(digits) - len(code) < _PHONE_MIN_NATIONAL:
        raise _invalid("phone", "expected 4 or more national digits and at most 15 digits in all (E.164)")
    return "+" + digits


def outcome(normalise: object, value: str) -> tuple[str, str]:
    try:
        return "ok", normalise(value)  # type: ignore[operator]
    except InvalidIdentifier as error:
        return "refused", str(error)


ascii_digits = st.text("0123456789", min_size=0, max_size=18)
odd_digits = st.text("0123456789٣²߃ -+()./", min_size=0, max_size=18)
codes = st.sampled_from(sorted(COUNTRY_CALLING_CODES))
phones = st.one_of(
    st.tuples(codes, st.text("0123456789", min_size=0, max_size=14)).map(lambda p: "+" + p[0] + p[1]),
    st.tuples(st.sampled_from(["+", "00", " +", "+ ", ""]), odd_digits).map("".join),
    st.text(max_size=20),
)
imeis = st.one_of(ascii_digits, st.text("0123456789", min_size=15, max_size=15), odd_digits, st.text(max_size=20))


@settings(max_examples=600, deadline=None)
@given(phones)
def test_phone_normalise_equals_the_general_path(value: str) -> None:
    assert outcome(FORMATS["phone"].normalise, value) == outcome(reference_phone, value)


@settings(max_examples=600, deadline=None)
@given(imeis)
def test_imei_normalise_equals_the_general_path(value: str) -> None:
    assert outcome(FORMATS["imei"].normalise, value) == outcome(reference_imei, value)


@settings(max_examples=300, deadline=None)
@given(st.tuples(codes, st.text("0123456789", min_size=4, max_size=12)).map(lambda p: "+" + p[0] + p[1]))
def test_phone_pseudonym_is_the_same_for_every_spelling(value: str) -> None:
    """The fast path (E.164 as given) and the general one (the same number spelt with 00 and spaces) must
    give the same pseudonym in both modes, or the same refusal."""
    respelt = " 00 " + " ".join(value[1:])
    for mode in ("hmac", "fpe"):
        bound = PSEUDONYMISER.bind("p", "phone", mode)
        assert outcome(bound, value) == outcome(bound, respelt)



HMAC_KEY = bytes(range(100, 132))
valid_imeis = st.text("0123456789", min_size=14, max_size=14).map(lambda body: body + luhn_check_digit(body))


def reference_imei_pseudonym(value: str) -> str:
    """The IMEI's hmac pseudonym as documented: 14 digits drawn from HMAC-SHA256 of the normalised value,
    then their Luhn digit (the bound function computes the digit on the integer)."""
    body = _digits(keyed_sha256(HMAC_KEY)(reference_imei(value).encode()), 14)
    return body + luhn_check_digit(body)


def reference_phone_pseudonym(value: str) -> str:
    number = reference_phone(value)
    cut = 2 + len(country_calling_code(number[1:]) or "")
    return number[:cut] + _digits(keyed_sha256(HMAC_KEY)(number.encode()), len(number) - cut)


@settings(max_examples=600, deadline=None)
@given(st.one_of(valid_imeis, imeis))
def test_imei_hmac_pseudonym_equals_the_documented_construction(value: str) -> None:
    bound = FORMATS["imei"].bind_hmac(HMAC_KEY)
    assert outcome(bound, value) == outcome(reference_imei_pseudonym, value)


@settings(max_examples=600, deadline=None)
@given(phones)
def test_phone_hmac_pseudonym_equals_the_documented_construction(value: str) -> None:
    bound = FORMATS["phone"].bind_hmac(HMAC_KEY)
    assert outcome(bound, value) == outcome(reference_phone_pseudonym, value)


@settings(max_examples=1000, deadline=None)
@given(st.text("0123456789", min_size=15, max_size=15))
def test_imei_luhn_on_the_integer_equals_the_text_test(digits: str) -> None:
    assert _imei_luhn_valid(digits.encode()) == _luhn_valid(digits)
