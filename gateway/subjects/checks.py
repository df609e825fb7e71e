"""The per-request subject checks: pure functions from a route's requirements, the subject's status and
the transfer decision to "go on" or a refusal. No I/O, so they are tested without a registry or a server.

The order is fixed and documented (docs/subject-rights.md): a hold is checked first (a restricted subject
is refused whatever else holds), then minors, then consent, then the transfer. Every refusal carries a
bounded `reason` label for the ledger's refusal record and the metrics; no detail names a subject.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Protocol

from gateway.errors import (
    ConsentRequired,
    IdentifierInFreeText,
    LegalReferenceRequired,
    MinorWithoutGuardianConsent,
    SubjectOnHold,
    TransferNotAllowed,
    Violation,
)
from gateway.policy.freetext import scan_without_imsi
from gateway.subjects.model import SubjectStatus
from gateway.subjects.transfers import TransferDecision

# A Korean resident registration number (주민등록번호) as written: birth date YYMMDD, a dash, a 7-digit
# serial starting with the sex/century digit 1-8. Only the dashed spelling: 13 digits in a row are as
# often a barcode or an order number. (The free-text scanner does not look for national ID numbers; a
# legal reference is stored verbatim in the append-only ledger, and the Korean routes are the ones that
# require one.)
_RESIDENT_NUMBER = re.compile(r"(?<![0-9])[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
                              r"\s*[\-\u2010-\u2015\u2212]\s*[1-8][0-9]{6}(?![0-9])")
LEGAL_REFERENCE_MAX_CHARS = 200
LEGAL_REFERENCE_MIN_CHARS = 3


class SubjectRouteRequirements(Protocol):
    """What the subject checks read from a route (gateway.profiles.Route satisfies it)."""

    @property
    def consent_purpose(self) -> str | None: ...

    @property
    def essential(self) -> bool: ...

    @property
    def allowed_during_hold(self) -> bool: ...


class LegalReferenceRequirement(Protocol):
    @property
    def legal_reference_required(self) -> bool: ...


def check_subject(
    route: SubjectRouteRequirements, status: SubjectStatus, transfer: TransferDecision | None
) -> None:
    """Raise the refusal this subject gets on this route, or return.

    `transfer` is None only for a route that declares no residency (nothing to decide)."""
    if status.on_hold and not route.allowed_during_hold:
        raise SubjectOnHold(
            "processing of this data subject is restricted; this route is not allowed during a hold",
            reason="subject_on_hold",
        )
    if status.minor and not status.guardian_consent and not route.essential:
        raise MinorWithoutGuardianConsent(
            "the data subject is a minor without recorded guardian consent and this route is not essential",
            reason="minor_without_guardian_consent",
        )
    purpose = route.consent_purpose
    if purpose is not None and status.consent_granted is not True:
        # The consent purpose is a profile label, never a personal value, so it may be named.
        if status.consent_granted is False:
            raise ConsentRequired(f"consent for {purpose!r} was withdrawn", reason="consent_withdrawn")
        raise ConsentRequired(f"no consent recorded for {purpose!r}", reason="consent_missing")
    if transfer is not None and not transfer.allowed:
        label = transfer.reason or "transfer_not_allowed"
        raise TransferNotAllowed(_TRANSFER_DETAILS.get(label, "transfer not allowed"), reason=label)


_TRANSFER_DETAILS = {
    "residency_unknown": "the data subject's residency is missing or not an ISO 3166-1 alpha-2 code",
    "partner_jurisdiction_unknown": "the partner's jurisdiction is not an ISO 3166-1 alpha-2 code",
    "no_rule_for_residency": "no transfer rule covers the data subject's residency",
    "jurisdiction_not_allowed": "the transfer rules do not allow this partner's jurisdiction for the subject",
}


def check_legal_reference(route: LegalReferenceRequirement, header_value: str | None) -> str | None:
    """The cleaned `X-Legal-Reference` (a subpoena or case number) to record in the ledger, or None.

    Only a route that requires one reads the header: on any other route it is ignored, never recorded
    (privacy review F7: it is caller-chosen free text, and the ledger is append-only, so an e-mail or a
    name put there could never be erased). On a route that requires one, a missing, blank or implausible
    value is refused with 403: at most 200 printable characters (case numbers may be in Hangul or
    Vietnamese, so not only ASCII), at least 3, with a letter or digit. A reference in which the free-text
    scanner finds an identifier (an e-mail, a phone, an IMEI, an ICCID or a MAC; not a bare IMSI-shaped
    number, which case numbers often are), or a Korean resident registration number, is refused with
    422 naming only the kind: a case number carries no personal identifier, and the reference is stored
    verbatim."""
    if not route.legal_reference_required:
        return None
    cleaned = _clean_reference(header_value)
    if cleaned is not None:
        # IMSIs are left out: any 14-15 digits starting 2-7 or 9 pass the IMSI check, and year-led case
        # numbers ("Warrant 2024-000123-4567-89") are such digits; the kinds kept carry a check digit
        # (IMEI, ICCID) or a shape no case number has (e-mail, phone with '+'/'00', MAC).
        found = {hit.id_type for hit in scan_without_imsi(cleaned)}
        if _RESIDENT_NUMBER.search(cleaned) is not None:
            found.add("rrn")
        kinds = sorted(found)
        if kinds:
            raise IdentifierInFreeText(
                "X-Legal-Reference must name the legal instrument (subpoena or case number), not hold a "
                f"personal identifier ({', '.join(kinds)} found)",
                [Violation("header:X-Legal-Reference", f"holds an identifier: {', '.join(kinds)}")],
                reason="legal_reference_identifier",
            )
        return cleaned
    if header_value is None or not header_value.strip():
        raise LegalReferenceRequired(
            "this route requires an X-Legal-Reference header (subpoena or case number)",
            reason="legal_reference_missing",
        )
    raise LegalReferenceRequired(
        f"X-Legal-Reference must be {LEGAL_REFERENCE_MIN_CHARS} to {LEGAL_REFERENCE_MAX_CHARS} printable "
        "characters with at least one letter or digit",
        reason="legal_reference_invalid",
    )


def _clean_reference(value: str | None) -> str | None:
    if value is None:
        return None
    text = unicodedata.normalize("NFC", value.strip())
    if not LEGAL_REFERENCE_MIN_CHARS <= len(text) <= LEGAL_REFERENCE_MAX_CHARS:
        return None
    # isprintable() refuses control, format and separator characters other than the plain space; an
    # undecodable header byte (surrogate escape) is refused explicitly.
    if not text.isprintable() or any("\ud800" <= ch <= "\udfff" for ch in text):
        return None
    if not any(ch.isalnum() for ch in text):
        return None
    return text
