"""The free-text scanner (gateway.policy.freetext): identifiers next to other numbers (privacy review
F5), every spelling the gateway's own validators accept and Unicode evasions (F1), what must survive,
and that the work stays linear on long texts."""

from __future__ import annotations

import itertools
import random
import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import IdentifierInFreeText
from gateway.policy import CompiledRoutePolicy, RoutePolicySpec, freetext, parse_action
from gateway.pseudonyms import PartnerKeyring, Pseudonymiser, is_valid, luhn_check_digit

IMEI = "490154203237518"
IMSI = "452040123456789"
ICCID = "8984040000123456781"
MAC = "00:1a:2b:3c:4d:5e"
EMAIL = "john.doe@example.org"
PHONE = "+84912345678"
ZWSP = "\u200b"
NBSP = "\u00a0"

PSEUDONYMISER = Pseudonymiser(PartnerKeyring(bytes(range(32))))


def _policy(mode: str) -> CompiledRoutePolicy:
    return CompiledRoutePolicy(
        RoutePolicySpec(request_body={"note": parse_action({"keep": {"free_text": True}})},
                        free_text=mode),  # type: ignore[arg-type]
        partner_id="carrier-freetext", pseudonymiser=PSEUDONYMISER,
    )


REDACT = _policy("redact")
REJECT = _policy("reject")


def redacted(text: str) -> str:
    return freetext.redact(text, freetext.scan(text))


def covered(text: str, start: int, end: int) -> bool:
    """Whether every character of text[start:end] lies inside a hit."""
    hits = freetext.scan(text)
    return all(any(hit.start <= index < hit.end for hit in hits) for index in range(start, end))


def assert_found(text: str, secret: str) -> None:
    start = text.index(secret)
    assert covered(text, start, start + len(secret)), (text, freetext.scan(text))
    assert secret not in redacted(text)


# --- F5: a neighbouring number or stray punctuation must not hide an identifier -----------------------

@pytest.mark.parametrize(("text", "secrets"), [
    (f"parcel 3 {IMEI}", [IMEI]),
    (f"box 12 {IMEI} thanks", [IMEI]),
    (f"Box 12 {IMEI}", [IMEI]),
    (f"{IMEI} 7", [IMEI]),
    (f"floor 2-{IMEI}", [IMEI]),
    (f"qty 1 imei {IMEI}", [IMEI]),
    (f"tel +84 912 345 678 {IMEI}", ["+84 912 345 678", IMEI]),
    (f"1 2 3 {IMSI} 4 5", [IMSI]),
    (f"sim 12 {ICCID} 3", [ICCID]),
    (f"sim 7 {' '.join(ICCID[i:i + 4] for i in range(0, len(ICCID), 4))} 7",
     [" ".join(ICCID[i:i + 4] for i in range(0, len(ICCID), 4))]),
    ("phone +84912345678 ext 12", ["+84912345678"]),
    ("call +1 212 555 0100 2 3 4 5", ["+1 212 555 0100"]),
    ("reach me at...john@example.org", ["john@example.org"]),
    ("mail .john@example.org", ["john@example.org"]),
    ("mail john.@example.org.", ["john.@example.org"]),
    ("(john@example.org)", ["john@example.org"]),
])
def test_identifier_next_to_numbers_or_punctuation_is_found(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert_found(text, secret)


def test_phone_followed_by_imei_gives_two_hits() -> None:
    text = f"tel +84 912 345 678 {IMEI}"
    assert redacted(text) == "tel [redacted:phone] [redacted:imei]"
    assert redacted(f"box 12 {IMEI} thanks") == "box 12 [redacted:imei] thanks"


# --- F1: every spelling the validators accept, and the Unicode evasions -------------------------------

def _fullwidth(digits: str) -> str:
    return "".join(chr(0xFF10 + int(d)) if d.isdigit() else d for d in digits)


def _arabic_indic(digits: str) -> str:
    return "".join(chr(0x0660 + int(d)) if d.isdigit() else d for d in digits)


VALIDATOR_SPELLINGS = [
    ("imei", "4901542\t03237518"),
    ("imei", "4901542\n03237518"),
    ("imei", f"490154{NBSP}203237518"),
    ("imei", "4901 5420  3237 518"),
    ("imei", "49-015420-323751-8"),
    ("imsi", "452 04 0123456789"),
    ("iccid", "8984 0400 0012 3456 781"),
    ("mac", "001a2b3c4d5e"),
    ("mac", "001A2B3C4D5E"),
    ("mac", "001a.2b3c.4d5e"),
    ("mac", "00-1A-2B-3C-4D-5E"),
    ("phone", "0084912345678"),
    ("phone", "0084 912 345 678"),
    ("phone", "+84/912/345/678"),
    ("phone", "+84.912.345.678"),
    ("phone", "+1 (212) 555-0100"),
    ("phone", "+44 (0)20 7946 0958"),
    ("phone", "+49 30 / 1234 5678"),
    ("email", "John+Shop@Example.ORG"),
]


@pytest.mark.parametrize(("id_type", "spelling"), VALIDATOR_SPELLINGS)
def test_every_spelling_the_validators_accept_is_found(id_type: str, spelling: str) -> None:
    assert is_valid(id_type, spelling)  # the premise: the gateway would pseudonymise this very string
    text = f"note {spelling} thanks"
    assert_found(text, spelling)
    assert f"[redacted:{id_type}]" in redacted(text)


EVASIONS = [
    f"4901{ZWSP}54203237518",
    "4901\u2060542\ufeff03237518",
    _fullwidth(IMEI),
    _arabic_indic(IMEI),
    "\uff0b84912345678",  # full-width plus
    "\uff0b" + _fullwidth("84912345678"),
    f"+8491{ZWSP}2345678",
    "john\uff20example.org",  # full-width at
    "jos\u00e9@example.org",
    "jose\u0301@example.org",  # combining accent
    "john@ex\u00e4mple.org",
    "\u4f60\u597d@example.org",
    f"4901{NBSP}5420{NBSP}3237{NBSP}518",
    "4901\u30005420\u30003237518",  # ideographic space
    "4901\u20135420\u20133237518",  # en dash
]


@pytest.mark.parametrize("spelling", EVASIONS)
def test_unicode_evasions_are_found_and_the_original_span_is_redacted(spelling: str) -> None:
    text = f"\u8acb\u806f\u7d61 {spelling} \uc218\uace0\ud558\uc138\uc694"
    out = redacted(text)
    assert_found(text, spelling)
    assert out.startswith("\u8acb\u806f\u7d61 [redacted:")
    assert out.endswith("] \uc218\uace0\ud558\uc138\uc694")


def test_devanagari_digits_map_to_their_values() -> None:
    devanagari = "".join(chr(0x0966 + int(d)) for d in IMEI)
    assert redacted(f"imei {devanagari}.") == "imei [redacted:imei]."


def test_every_format_character_is_dropped_from_the_shadow() -> None:
    format_characters = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf"]
    assert format_characters
    missing = [f"U+{ord(c):04X}" for c in format_characters if freetext._INVISIBLE_CHAR.match(c) is None]
    assert missing == []
    for char in format_characters[::7]:
        assert redacted(f"x {IMEI[:5]}{char}{IMEI[5:]} y") == "x [redacted:imei] y"


def test_hits_map_back_to_the_original_characters() -> None:
    text = f"\u00e9t\u00e9 {_fullwidth(IMEI)} fin"
    [hit] = freetext.scan(text)
    assert text[hit.start:hit.end] == _fullwidth(IMEI)


# --- what survives: ordinary numbers, dates, prices and times ----------------------------------------

@pytest.mark.parametrize("text", [
    "Please leave the parcel with the building manager if nobody answers the door.",
    "Leave at the door, gate code 4411.",
    "Order 123456789012345 is fine.",
    "deliver 25.12.2024 14.30-16.30",
    "deliver 2024-12-25 10:30, call first",
    "price 1.299.000 VND, 2 pcs, total 2.598.000",
    "Order 0012345",
    "tracking 92612901234567890123",
    "FedEx 123456789012",
    "between 09:00 and 17:30 on 12/25/2024",
    "call 0912 345 678",
    "uuid 38400000-8cf0-11bd-b23e-10b96e40000d",
    "hash 3f2a9c0e4b1d7a8e9f0c1b2a3d4e5f60",
    "a@b and x@y and @@@ and foo@bar",
    "\u8acb\u653e\u5728\u9580\u53e3\uff0c\u8b1d\u8b1d\uff01",  # full-width punctuation, no identifier
])
def test_ordinary_text_survives(text: str) -> None:
    assert freetext.scan(text) == []


def test_imsi_shortcut_equals_the_validator() -> None:
    """_digit_type answers the IMSI question itself (most windows of a long number run pass it); it must
    give the validators' answer, in their order of preference (ICCID, IMEI, IMSI)."""
    rng = random.Random(7)
    samples = [IMEI, IMSI, ICCID, "00123456789012", "001234567890123"]
    for length in (14, 15, 18, 19, 20, 21, 22):
        for _ in range(400):
            digits = "".join(rng.choice("0123456789") for _ in range(length))
            samples.append(digits)
            samples.append("89" + digits[2:-1] + luhn_check_digit("89" + digits[2:-1]))
            samples.append(digits[:-1] + luhn_check_digit(digits[:-1]))
    for digits in samples:
        expected = next((t for t in ("iccid", "imei", "imsi") if is_valid(t, digits)), None)
        assert freetext._digit_type(digits) == expected, digits


# --- the property: an identifier in any accepted spelling, between arbitrary words and numbers ---------

def _spaced(digits: str, cuts: list[int], separators: list[str]) -> str:
    out, previous = [], 0
    for cut, separator in zip(sorted(set(cuts)), separators, strict=False):
        if 0 < cut < len(digits):
            out.append(digits[previous:cut] + separator)
            previous = cut
    return "".join(out) + digits[previous:]


def _luhn(body: str) -> str:
    return body + luhn_check_digit(body)


digit_separators = st.sampled_from([" ", "-", "  ", "\t", "\n", NBSP, " - ", "\u2013"])
phone_separators = st.sampled_from([" ", "-", ".", "/", " / ", "\t"])
cuts = st.lists(st.integers(1, 21), max_size=5)

imeis = st.text("0123456789", min_size=14, max_size=14).map(_luhn)
imsis = st.tuples(st.sampled_from("2345679"), st.text("0123456789", min_size=13, max_size=14)).map("".join)
iccids = st.text("0123456789", min_size=15, max_size=19).map(lambda body: _luhn("89" + body))
digit_ids = st.tuples(st.one_of(imeis, imsis, iccids), cuts, st.lists(digit_separators, min_size=5, max_size=5)).map(
    lambda parts: _spaced(*parts))

def _mac(hex_digits: str, separator: str, upper: bool) -> str:
    if separator == ".":
        spelt = ".".join(hex_digits[i:i + 4] for i in (0, 4, 8))
    elif separator:
        spelt = separator.join(hex_digits[i:i + 2] for i in range(0, 12, 2))
    else:  # a bare MAC is found when it holds a letter a-f and two decimal digits
        spelt = "1" + hex_digits[1:10] + "2a"
    return spelt.upper() if upper else spelt


macs = st.builds(_mac, st.text("0123456789abcdef", min_size=12, max_size=12), st.sampled_from([":", "-", ".", ""]),
                 st.booleans())

PHONE_NUMBERS = ["84912345678", "886912345678", "12125550100", "442079460958", "493012345678", "821055501234",
                 "6591234567", "85291234567"]
phones = st.tuples(st.sampled_from(PHONE_NUMBERS), cuts, st.lists(phone_separators, min_size=5, max_size=5),
                   st.sampled_from(["+", "00", "\uff0b"])).map(
    lambda parts: parts[3] + _spaced(parts[0], parts[1], parts[2]))

locals_ = st.from_regex(r"[a-z0-9][a-z0-9_+\-]{0,8}(\.[a-z0-9_+\-]{1,6}){0,2}", fullmatch=True)
domains = st.from_regex(r"[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){0,2}\.[a-z]{2,6}", fullmatch=True)
emails = st.tuples(locals_, st.sampled_from(["@", "\uff20"]), domains).map("".join)

words = st.text("abcdefghijklmnopqrstuvwxyzABCXYZ\u00e9\uac00", min_size=1, max_size=8)
numbers = st.text("0123456789", min_size=1, max_size=6)
neighbours = st.lists(st.one_of(words, numbers), max_size=4)
separators_between = st.sampled_from([" ", "  ", "\n", " - ", ", "])


def _unicode_spelling(identifier: str, style: int) -> str:
    if style == 1:
        return _fullwidth(identifier)
    if style == 2 and len(identifier) > 2:  # a zero-width space inside
        return identifier[:2] + ZWSP + identifier[2:]
    return identifier


@settings(max_examples=500, deadline=None)
@given(st.one_of(digit_ids, macs, phones, emails), neighbours, neighbours, separators_between, st.integers(0, 2))
def test_identifier_between_words_and_numbers_is_always_found(identifier: str, before: list[str], after: list[str],
                                                              separator: str, style: int) -> None:
    spelt = _unicode_spelling(identifier, style)
    head = separator.join([*before, ""]) if before else ""
    tail = separator.join(["", *after]) if after else ""
    text = head + spelt + tail
    start = len(head)
    assert covered(text, start, start + len(spelt)), (text, freetext.scan(text))
    out = REDACT.minimise_request({"note": text}, (), {}, {}).body
    assert out is not None
    assert spelt not in out["note"]
    assert "[redacted:" in out["note"]
    with pytest.raises(IdentifierInFreeText):
        REJECT.minimise_request({"note": text}, (), {}, {})


# --- bounded work on long texts -------------------------------------------------------------------------

PATHOLOGICAL = [
    "1 " * 32768, "1-" * 32768, "+1 " * 21845, "+" * 65536, "00 " * 21845, "+84 " * 16384, "@" * 65536,
    "a" * 65535 + "@", "a@" * 32768, "a.b@c.d " * 8192, "1" * 65536, (IMEI[:14] + " 8 ") * 3855,
    "\u0661 " * 32768, (ZWSP + "1") * 32768, "0123456789abcdef" * 4096, "aa:" * 21845,
    " ".join(random.Random(3).choice("0123456789") for _ in range(32768)),
    "".join(random.Random(4).choice("0123456789 -+@.\t") for _ in range(65536)),
]


@pytest.mark.parametrize("text", PATHOLOGICAL, ids=range(len(PATHOLOGICAL)))
def test_long_texts_cost_a_bounded_number_of_validations(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """64 KB of digits and separators: each '@', '+'/'00' and digit group starts a bounded amount of work
    (see freetext._scan_shadow), so the number of validator calls is at most a small multiple of the
    number of characters; no timing assertion, the count is the structural bound."""
    calls = 0
    confirm = freetext._confirm

    def counting(id_type: str, candidate: str) -> bool:
        nonlocal calls
        calls += 1
        return confirm(id_type, candidate)

    monkeypatch.setattr(freetext, "_confirm", counting)
    hits = freetext.scan(text)
    assert calls <= len(text) // 2
    assert all(a.end <= b.start for a, b in itertools.pairwise(hits))
    assert all(0 <= hit.start < hit.end <= len(text) for hit in hits)


def test_digit_windows_per_group_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each digit group starts at most 7 windows (14, 15 and 18-22 digits), whatever the run's length,
    each judged in O(1) (tests/policy/test_freetext_fast_windows.py holds the answers to the old ones);
    only a window passing an IMEI's or ICCID's check digit reaches a validator, once per distinct number."""
    judged: list[str] = []
    confirm = freetext._confirm

    def counting(id_type: str, candidate: str) -> bool:
        judged.append(candidate)
        return confirm(id_type, candidate)

    monkeypatch.setattr(freetext, "_confirm", counting)
    rng = random.Random(5)
    text = " ".join(str(rng.randrange(10 ** rng.randint(1, 3))) for _ in range(20000))
    freetext.scan(text)
    assert 0 < len(judged) <= 7 * 20000 // 10 + 500  # about one window in ten passes a check digit
    assert len(judged) == len(set(judged))


# --- privacy review rv-privacy: spellings the patterns' edges missed ------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("mail john@example.org...thanks", "mail [redacted:email]...thanks"),
    ("mail john@example.org..thanks", "mail [redacted:email]..thanks"),
    ("mail john@example.org\u2026thanks", "mail [redacted:email]\u2026thanks"),
    ("mail john@example.org.-x", "mail [redacted:email].-x"),
    ("mail john@mail.example.org.1x", "mail [redacted:email].1x"),
    ("mail john@example.org-.x", "mail [redacted:email]-.x"),
    ("mail john@example.org.", "mail [redacted:email]."),
])
def test_email_before_an_ellipsis_or_dash_is_found(text: str, expected: str) -> None:
    """F1: the host is read greedily; it is cut at a label boundary to the longest host the validator
    accepts, so the next word after "..." or "…" neither hides the address nor is redacted with it."""
    assert redacted(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("router ID:00:1A:2B:3C:4D:5E", "router ID:[redacted:mac]"),
    ("MAC-00-1A-2B-3C-4D-5E", "MAC-[redacted:mac]"),
    ("My router is 001a.2b3c.4d5e.", "My router is [redacted:mac]."),
    ("mac 00:1A:2B:3C:4D:5E: ok", "mac [redacted:mac]: ok"),
    ("tel:00:1a:2b:3c:4d:5e", "tel:[redacted:mac]"),
    ("mailto:00-1a-2b-3c-4d-5e-1", "mailto:[redacted:mac]-1"),
    ("no.001a.2b3c.4d5e...", "no.[redacted:mac]..."),
    ("MAC:0a1b2c3d4e5f", "MAC:[redacted:mac]"),
    ("mac:0A1B2C3D4E5F router", "mac:[redacted:mac] router"),
    ("ID:0a1b2c3d4e5f", "ID:[redacted:mac]"),
    ("Device-0a1b2c3d4e5f", "Device-[redacted:mac]"),
    ("Router 0a1b2c3d4e5f.Bye", "Router [redacted:mac].Bye"),
    ("wifi 00:1a:2b:3c:4d:5e-ap", "wifi [redacted:mac]-ap"),
    ("wifi 00:1a:2b:3c:4d:5e-00 ok", "wifi [redacted:mac] ok"),
    ("fp 43:51:43:a1:b5:fc:8b:b7:0a:3a:a9:b1 ok", "fp [redacted:mac] ok"),
])
def test_mac_after_a_label_or_before_punctuation_is_found(text: str, expected: str) -> None:
    """F2: the MAC look-arounds refuse only a neighbouring hex digit, not a ':', '-' or '.' that ends a
    label or a sentence."""
    assert redacted(text) == expected


@pytest.mark.parametrize("text", [
    "meeting 12:30:45 - 13:45:00, 2024-12-24 10:30:00",
    "deliver 24-12-2024 between 10:30:00 and 12:00:00",
    "uuid 38400000-8cf0-11bd-b23e-10b96e40000d, UUID 38400000-8CF0-11BD-B23E-10B96E40000D.",
    "version 1.2.3.4, build 2024.12.24",
])
def test_times_dates_and_uuids_are_no_macs(text: str) -> None:
    assert freetext.scan(text) == []


@pytest.mark.parametrize("spelling", [
    "+44    20 7946 0958",
    "+    442079460958",
    "+(0)44 20 7946 0958",
    "+44 2\n\n\n\n079460958",
    "+44 - - - 20 / / 7946 0958",
    "0044 (0) 20  -  7946  -  0958",
])
def test_phone_with_long_separator_runs_or_leading_trunk_is_found(spelling: str) -> None:
    """F4: the validator strips any number of separators and every "(0)"; the scanner reads the same
    spellings (within 80 characters after the '+' or '00')."""
    assert is_valid("phone", spelling)
    assert redacted(f"call {spelling} thanks") == "call [redacted:phone] thanks"


@pytest.mark.parametrize("text", [
    "window 2024-12-24 - 2024-12-31",
    "window 24-12-2024 - 31-12-2024 - 01-01-2025",
    "from 12-24-2024 - 12-31-2024 please",
    "deliver 2024\u201312\u201324 \u2013 2024\u201312\u201331",
])
def test_date_ranges_written_with_dashes_are_no_imsi(text: str) -> None:
    """F7: a date written with dashes is no part of an identifier window; joined to the next date it
    read as an IMSI ("[redacted:imsi]-31")."""
    assert freetext.scan(text) == []


@pytest.mark.parametrize(("text", "expected"), [
    (f"2024-12-24 {IMEI}", "2024-12-24 [redacted:imei]"),
    (f"2024-12-24-{IMEI}", "2024-12-24-[redacted:imei]"),
    ("12-24-2024 4901 5420 3237 518", "12-24-2024 [redacted:imei]"),
    (f"window 2024-12-24 - 2024-12-31 sim {IMSI}", "window 2024-12-24 - 2024-12-31 sim [redacted:imsi]"),
])
def test_identifier_next_to_a_date_is_still_found(text: str, expected: str) -> None:
    assert redacted(text) == expected


def test_scan_without_imsi_keeps_every_other_kind() -> None:
    """F7: the legal-reference check leaves IMSI-shaped numbers out before hits are merged, so an IMEI
    overlapping an IMSI window is still reported as an IMEI."""
    text = "Ref 20 24 4901 5420 3237 518"
    assert {hit.id_type for hit in freetext.scan(text)} == {"imsi"}  # merged: the IMSI window starts first
    assert [hit.id_type for hit in freetext.scan_without_imsi(text)] == ["imei"]
    assert freetext.scan_without_imsi("Warrant 2024-000123-4567-89") == []
