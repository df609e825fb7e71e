"""Values of the subject registry: a subject's current status, the events that change it, and the
validation of the few labels an operator types (consent purposes, hold reasons, sources).

Every value here is keyed by the keyed subject reference (`LedgerKeys.subject_ref`), never by the raw
subject id, and every label is a bounded machine label, so none of them can carry a personal value into a
log line, a ledger record or an error body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gateway.errors import MalformedRequest, Violation

# Consent purposes and hold reasons are slugs: they appear in refusal records and problem details.
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# A source names who recorded a change (a service, an admin, a channel); no '@' so it cannot be an email.
_SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_SUBJECT_REF_RE = re.compile(r"^[0-9a-f]{64}$")

# Hold reasons the source policies name; any other slug is accepted (an operator's own label).
KNOWN_HOLD_REASONS = (
    "correction_pending",  # QXPRESS §6: "we do not use or provide ... until completion of such correction"
    "processing_suspended",  # QXPRESS §6: a request for suspension of processing
    "deletion_pending",  # Clever Group / Onebox: deletion on request
    "dispute",  # Onebox §7(2): a dispute with the delivery unit
    "legal_claim",
)


class EventKind(StrEnum):
    """What one registry event did. The value is the ledger `reason` of the `registry` record."""

    CONSENT_GRANTED = "consent_granted"
    CONSENT_WITHDRAWN = "consent_withdrawn"
    HOLD_PLACED = "hold_placed"
    HOLD_LIFTED = "hold_lifted"
    MINOR_SET = "minor_set"


@dataclass(frozen=True, slots=True)
class SubjectStatus:
    """What the per-request checks need to know about one subject, read in one query.

    `consent_granted` is None when no consent purpose was asked for or nothing was ever recorded for it,
    True for a current grant and False after a withdrawal."""

    consent_granted: bool | None
    on_hold: bool
    hold_reason: str | None
    minor: bool
    guardian_consent: bool

    @classmethod
    def unknown_subject(cls) -> SubjectStatus:
        """A subject the registry has never heard of: no consent, no hold, not known to be a minor.
        One shared instance (the value is immutable; building it cost ~1 µs on every request)."""
        return _UNKNOWN_SUBJECT


_UNKNOWN_SUBJECT = SubjectStatus(
    consent_granted=None, on_hold=False, hold_reason=None, minor=False, guardian_consent=False
)


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """One change requested of the registry: what, to whom (by reference), when, and whether it changed the
    stored state (a repeated grant is recorded but changes nothing)."""

    subject_ref: str
    kind: EventKind
    at: datetime
    source: str
    consent_purpose: str | None = None
    hold_reason: str | None = None
    minor: bool | None = None
    guardian_consent: bool | None = None
    changed: bool = True

    def as_detail(self) -> dict[str, str | bool | None]:
        """Labels only (no personal value), for the ledger record's detail and the admin API."""
        return {
            "event": self.kind.value,
            "at": self.at.isoformat(),
            "source": self.source,
            "consent_purpose": self.consent_purpose,
            "hold_reason": self.hold_reason,
            "minor": self.minor,
            "guardian_consent": self.guardian_consent,
            "changed": self.changed,
        }


@dataclass(frozen=True, slots=True)
class ConsentState:
    consent_purpose: str
    granted: bool
    changed_at: datetime
    source: str


@dataclass(frozen=True, slots=True)
class SubjectRecord:
    """Everything the registry holds about one subject: for the access report and the admin API."""

    subject_ref: str
    consents: tuple[ConsentState, ...]
    on_hold: bool
    hold_reason: str | None
    hold_since: datetime | None
    minor: bool
    guardian_consent: bool
    minor_since: datetime | None
    events: tuple[RegistryEvent, ...]


def require_slug(field: str, value: str) -> str:
    """A consent purpose or hold reason: lower-case label, at most 64 characters."""
    if not isinstance(value, str) or not _SLUG_RE.fullmatch(value):
        raise MalformedRequest(
            f"{field} must be a lower-case label ([a-z0-9_-], 1 to 64 characters)",
            [Violation(field, "not a label")],
        )
    return value


def require_source(value: str) -> str:
    if not isinstance(value, str) or not _SOURCE_RE.fullmatch(value):
        raise MalformedRequest(
            "source must name a service, channel or operator ([A-Za-z0-9._:/-], 1 to 128 characters)",
            [Violation("source", "not a source label")],
        )
    return value


def require_subject_ref(value: str) -> str:
    """Guards the registry API against being handed a raw subject id by mistake."""
    if not isinstance(value, str) or not _SUBJECT_REF_RE.fullmatch(value):
        raise MalformedRequest(
            "expected a keyed subject reference (64 lower-case hex characters), not a raw subject id",
            [Violation("subject_ref", "not a subject reference")],
        )
    return value
