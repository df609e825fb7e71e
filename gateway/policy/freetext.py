"""Free-text scanning: finds identifiers (IMEI, IMSI, ICCID, MAC, email, phone) a person typed into a
field the policy keeps as free text (a delivery note, a support message).

A regular expression proposes candidates cheaply; each is confirmed by the identifier validators of
gateway.pseudonyms (check digits, MCC, address syntax), so an order number that merely has 15 digits is
not redacted unless it really is a valid IMEI or IMSI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.pseudonyms import is_valid

SCANNED_TYPES = ("imei", "imsi", "iccid", "mac", "email", "phone")

# One pattern per trigger character, run only when the text holds that character: a combined
# alternation is tried at every position and costs ~10 µs on a sentence with no identifier at all.
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
_PHONE = re.compile(r"\+\d[\d \-().]{5,20}\d")
_MAC = re.compile(r"(?<![0-9A-Fa-f:\-])(?:[0-9A-Fa-f]{2}[:\-]){5}[0-9A-Fa-f]{2}(?![0-9A-Fa-f:\-])"
                  r"|(?<![0-9A-Fa-f.])[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}(?![0-9A-Fa-f.])")
_DIGITS = re.compile(r"(?<!\d)\d(?:[ \-]?\d){13,21}(?!\d)")
_HAS_DIGIT = re.compile(r"\d")
_SEPARATORS = str.maketrans("", "", " -")
# Order matters: an ICCID is longer and starts with 89; a 15-digit run is an IMEI only with a valid Luhn
# digit, otherwise maybe an IMSI.
_DIGIT_TYPES = ("iccid", "imei", "imsi")


@dataclass(frozen=True, slots=True)
class Hit:
    start: int
    end: int
    id_type: str


def _confirm(id_type: str, candidate: str) -> bool:
    try:
        return is_valid(id_type, candidate)
    except Exception:  # a validator that cannot judge a candidate never lets it pass as clean text
        return True


def may_hold_mac(text: str) -> bool:
    """False only when `_MAC` cannot match: a MAC holds five ':' or '-' separators, or two dots. Most
    sentences have neither, and the MAC pattern (with its look-arounds) costs ~5 µs on a sentence."""
    # `in` first: most sentences have neither separator, and two `in` tests cost less than two counts.
    return (((":" in text or "-" in text) and text.count(":") + text.count("-") >= 5)
            or text.count(".") >= 2)


_ASCII_DIGITS = b"0123456789"


def has_digit(text: str) -> bool:
    """Whether `_HAS_DIGIT` (`\\d`, any Unicode digit) finds a digit in `text`. ASCII text holds only
    ASCII digits, which one bytes translate finds faster than the regex engine's per-character test."""
    if text.isascii():
        return len(text.encode("ascii").translate(None, _ASCII_DIGITS)) != len(text)
    return _HAS_DIGIT.search(text) is not None


# Every pattern needs at least two of these characters: an address '@' and a dot, a phone '+' and digits,
# a digit run 14 digits, a MAC five ':'/'-' or two dots. In ASCII text `\d` is an ASCII digit.
_MARKS = b"@+:-.0123456789"


def scan(text: str) -> list[Hit]:
    """Every confirmed identifier in `text`, left to right, without overlaps."""
    # An ASCII sentence with fewer than two of the characters every pattern needs (most delivery notes)
    # cannot hold an identifier: one translate answers what the trigger tests below would ask one by one.
    # (Deleting the 15 marks sets up a shorter table than deleting the other 241 bytes.)
    if text.isascii() and len(text) - len(text.encode("ascii").translate(None, _MARKS)) < 2:
        return []
    return _scan(text)


def _scan(text: str) -> list[Hit]:
    """`scan` without its ASCII pre-check."""
    found: list[Hit] = []
    if "@" in text:
        found.extend(Hit(m.start(), m.end(), "email") for m in _EMAIL.finditer(text) if _confirm("email", m.group()))
    if ("+" in text or ":" in text or "-" in text or "." in text or len(text) >= 14) and has_digit(text):
        if "+" in text:
            found.extend(Hit(m.start(), m.end(), "phone") for m in _PHONE.finditer(text)
                         if _confirm("phone", m.group()))
        for match in _DIGITS.finditer(text):
            digits = match.group().translate(_SEPARATORS)
            for id_type in _DIGIT_TYPES:
                if _confirm(id_type, digits):
                    found.append(Hit(match.start(), match.end(), id_type))
                    break
    if may_hold_mac(text):
        found.extend(Hit(m.start(), m.end(), "mac") for m in _MAC.finditer(text) if _confirm("mac", m.group()))
    if len(found) < 2:
        return found
    found.sort(key=lambda hit: (hit.start, -hit.end))
    hits: list[Hit] = []
    for hit in found:
        if not hits or hit.start >= hits[-1].end:
            hits.append(hit)
    return hits


def redact(text: str, hits: list[Hit]) -> str:
    """`text` with each hit replaced by `[redacted:TYPE]`."""
    parts: list[str] = []
    position = 0
    for hit in hits:
        parts.append(text[position:hit.start])
        parts.append(f"[redacted:{hit.id_type}]")
        position = hit.end
    parts.append(text[position:])
    return "".join(parts)
