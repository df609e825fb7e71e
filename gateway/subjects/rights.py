"""Changes to a data subject's registry entry, each recorded in the disclosure ledger: the one service the
admin API and the `gateway subject` commands go through.

Ordering: validate and time-stamp the change, append the `registry` ledger record and wait until it is
durable, then apply the change to the registry. Why this order, and why it fails closed:
- a change is never in effect without its ledger record ("every change to the registry is itself
  recorded in the ledger"); if the ledger cannot record it (LedgerUnavailable), nothing changes and the
  caller is told so;
- a withdrawal or hold that cannot be recorded is not applied either, but that opens no gap: with the
  ledger unavailable the gateway forwards nothing at all (a disclosure needs a durable record first);
- if the registry write fails after the record, the caller gets the error and retries; the ledger then
  holds a record of a change that did not take effect. The registry's own append-only event history is
  the proof of what did (its `at` equals the record's `detail.at`), and a retry writes a second record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.errors import MalformedRequest, Violation
from gateway.keys import LedgerKeys, normal_subject_id
from gateway.ledger.records import AppendedRecord, RecordDraft
from gateway.subjects.model import EventKind, RegistryEvent
from gateway.subjects.registry import SubjectRegistry

if TYPE_CHECKING:
    from gateway.profiles import ProfileSet

REGISTRY_RECORD_KIND = "registry"


class LedgerAppender(Protocol):
    """The part of gateway.ledger.Ledger this service uses."""

    async def append(self, draft: RecordDraft) -> AppendedRecord: ...


@dataclass(frozen=True, slots=True)
class RegistryChange:
    """A change that took effect: the registry event and the ledger record that proves it."""

    event: RegistryEvent
    record: AppendedRecord


def registry_draft(event: RegistryEvent, caller: str) -> RecordDraft:
    """The ledger record of a registry change: labels only, never the raw subject id."""
    return RecordDraft(
        kind=REGISTRY_RECORD_KIND,
        caller=caller,
        subject_ref=event.subject_ref,
        action=event.kind.value,
        reason=event.hold_reason,
        detail={k: v for k, v in event.as_detail().items() if k != "changed" and v is not None},
    )


def consent_purposes_of(profiles: ProfileSet) -> frozenset[str]:
    """Every consent purpose a loaded profile declares or a route requires: what a consent change should
    name (a withdrawal of anything else changes no route's consent)."""
    purposes = {p for profile in profiles.profiles.values() for p in profile.consent_purposes}
    purposes.update(
        route.consent_purpose for profile in profiles.profiles.values() for route in profile.routes
        if route.consent_purpose
    )
    return frozenset(purposes)


class SubjectRights:
    """Consent, holds and minor status by raw subject id: computes the keyed reference, records the change
    in the ledger, then applies it (see the module docstring for the order)."""

    def __init__(self, registry: SubjectRegistry, ledger: LedgerAppender, keys: LedgerKeys) -> None:
        self.registry = registry
        self.ledger = ledger
        self.keys = keys

    def subject_ref(self, subject_id: str) -> str:
        if not isinstance(subject_id, str) or normal_subject_id(subject_id) is None:
            raise MalformedRequest("a subject id is required", [Violation("subject_id", "empty")])
        return self.keys.subject_ref(subject_id)

    async def grant_consent(self, subject_id: str, consent_purpose: str, *, source: str) -> RegistryChange:
        return await self._change(subject_id, EventKind.CONSENT_GRANTED, source, consent_purpose=consent_purpose)

    async def withdraw_consent(self, subject_id: str, consent_purpose: str, *, source: str) -> RegistryChange:
        return await self._change(subject_id, EventKind.CONSENT_WITHDRAWN, source, consent_purpose=consent_purpose)

    async def place_hold(self, subject_id: str, reason: str, *, source: str) -> RegistryChange:
        return await self._change(subject_id, EventKind.HOLD_PLACED, source, hold_reason=reason)

    async def lift_hold(self, subject_id: str, *, source: str) -> RegistryChange:
        return await self._change(subject_id, EventKind.HOLD_LIFTED, source)

    async def set_minor(
        self, subject_id: str, minor: bool, guardian_consent: bool, *, source: str
    ) -> RegistryChange:
        return await self._change(
            subject_id, EventKind.MINOR_SET, source, minor=minor, guardian_consent=guardian_consent
        )

    async def _change(
        self,
        subject_id: str,
        kind: EventKind,
        source: str,
        *,
        consent_purpose: str | None = None,
        hold_reason: str | None = None,
        minor: bool | None = None,
        guardian_consent: bool | None = None,
    ) -> RegistryChange:
        planned = self.registry.plan_event(
            self.subject_ref(subject_id), kind, source=source, consent_purpose=consent_purpose,
            hold_reason=hold_reason, minor=minor, guardian_consent=guardian_consent,
        )
        record = await self.ledger.append(registry_draft(planned, source))
        applied = await self.registry.apply(planned)
        return RegistryChange(event=applied, record=record)
