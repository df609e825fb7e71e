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

_CANDIDATE = re.compile(
    r"""
    (?P<email>[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+)
  | (?P<mac>(?<![0-9A-Fa-f:\-])(?:[0-9A-Fa-f]{2}[:\-]){5}[0-9A-Fa-f]{2}(?![0-9A-Fa-f:\-])
          | (?<![0-9A-Fa-f.])[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}(?![0-9A-Fa-f.]))
  | (?P<phone>\+\d[\d \-().]{5,20}\d)
  | (?P<digits>(?<![\d])\d(?:[ \-]?\d){13,21}(?!\d))
    """,
    re.VERBOSE,
)
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


def scan(text: str) -> list[Hit]:
    """Every confirmed identifier in `text`, left to right."""
    hits: list[Hit] = []
    for match in _CANDIDATE.finditer(text):
        kind = match.lastgroup
        candidate = match.group()
        if kind == "digits":
            digits = candidate.translate(_SEPARATORS)
            for id_type in _DIGIT_TYPES:
                if _confirm(id_type, digits):
                    hits.append(Hit(match.start(), match.end(), id_type))
                    break
        elif kind is not None and _confirm(kind, candidate):
            hits.append(Hit(match.start(), match.end(), kind))
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
