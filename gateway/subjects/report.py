"""The access report for one data subject: what the registry holds (consents, holds, minor status and
their history) and every disclosure the ledger recorded (partner, route, purpose, fields, time), ending
with the distinct recipients to notify of a correction.

Used by `gateway subject show` and the admin API; rendered as JSON or as a table a privacy officer reads.
The report names the subject only by its keyed reference: the raw id stays with whoever asked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.ledger.store import LedgerQuery
from gateway.subjects.model import SubjectRecord
from gateway.subjects.registry import SubjectRegistry

# A subject with more disclosures than this gets a truncated report that says so (and how to page).
MAX_REPORT_RECORDS = 100_000


class LedgerReader(Protocol):
    """The part of gateway.ledger.Ledger the report uses."""

    async def query(self, query: LedgerQuery) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class DisclosureEntry:
    time: str
    partner: str
    route: str | None
    purpose: str | None
    legal_basis: str | None
    jurisdiction: str | None
    cross_border: bool | None
    transfer_basis: str | None
    fields_sent: tuple[str, ...]
    fields_transformed: tuple[str, ...]
    legal_reference: str | None
    disclosure_id: str | None
    outcome_status: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time, "partner": self.partner, "route": self.route, "purpose": self.purpose,
            "legal_basis": self.legal_basis, "jurisdiction": self.jurisdiction, "cross_border": self.cross_border,
            "transfer_basis": self.transfer_basis, "fields_sent": list(self.fields_sent),
            "fields_transformed": list(self.fields_transformed), "legal_reference": self.legal_reference,
            "disclosure_id": self.disclosure_id, "outcome_status": self.outcome_status,
        }


@dataclass(frozen=True, slots=True)
class Recipient:
    """A partner to notify of a correction: every field path it ever received for this subject."""

    partner: str
    disclosures: int
    first_time: str
    last_time: str
    fields: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"partner": self.partner, "disclosures": self.disclosures, "first_time": self.first_time,
                "last_time": self.last_time, "fields": list(self.fields)}


@dataclass(frozen=True, slots=True)
class AccessReport:
    subject_ref: str
    registry: SubjectRecord
    disclosures: tuple[DisclosureEntry, ...]
    recipients: tuple[Recipient, ...]
    truncated: bool
    # The prune cut-off the ledger was cut at (ISO 8601), or None when it was never pruned: disclosures
    # before it are gone, so the lists above are complete only since then (their partners may still hold
    # the data and are not named here).
    complete_since: str | None = None

    def as_dict(self) -> dict[str, Any]:
        reg = self.registry
        return {
            "subject_ref": self.subject_ref,
            "consents": [
                {"consent_purpose": c.consent_purpose, "granted": c.granted, "since": c.changed_at.isoformat(),
                 "source": c.source} for c in reg.consents
            ],
            "hold": {"on_hold": reg.on_hold, "reason": reg.hold_reason,
                     "since": reg.hold_since.isoformat() if reg.hold_since else None},
            "minor": {"minor": reg.minor, "guardian_consent": reg.guardian_consent,
                      "since": reg.minor_since.isoformat() if reg.minor_since else None},
            "registry_events": [e.as_detail() for e in reg.events],
            "disclosures": [d.as_dict() for d in self.disclosures],
            "recipients_to_notify_of_a_correction": [r.as_dict() for r in self.recipients],
            "truncated": self.truncated,
            "complete_since": self.complete_since,
        }


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()


def _opt_int(value: Any) -> int | None:
    return value if type(value) is int else None


def disclosures_from_records(
    disclosures: Sequence[Mapping[str, Any]], outcomes: Sequence[Mapping[str, Any]]
) -> tuple[DisclosureEntry, ...]:
    """Join disclosure records with their outcomes (by disclosure id; the last outcome of a retried
    disclosure wins)."""
    outcome_by_disclosure: dict[str, int | None] = {}
    for outcome in outcomes:
        key = outcome.get("disclosure_id")
        if isinstance(key, str):
            outcome_by_disclosure[key] = _opt_int(outcome.get("status"))
    entries = []
    for rec in disclosures:
        disclosure_id = rec.get("disclosure_id") or rec.get("id")
        entries.append(DisclosureEntry(
            time=str(rec.get("time", "")), partner=str(rec.get("partner", "")), route=rec.get("route"),
            purpose=rec.get("purpose"), legal_basis=rec.get("legal_basis"), jurisdiction=rec.get("jurisdiction"),
            cross_border=rec.get("cross_border"), transfer_basis=rec.get("transfer_basis"),
            fields_sent=_strings(rec.get("fields_sent")), fields_transformed=_strings(rec.get("fields_transformed")),
            legal_reference=rec.get("legal_reference"),
            disclosure_id=disclosure_id if isinstance(disclosure_id, str) else None,
            outcome_status=outcome_by_disclosure.get(disclosure_id) if isinstance(disclosure_id, str) else None,
        ))
    entries.sort(key=lambda d: d.time)
    return tuple(entries)


def recipients_of(disclosures: Sequence[DisclosureEntry]) -> tuple[Recipient, ...]:
    """Every partner that was sent this subject's data, whatever the outcome: a failed or timed-out call
    may still have reached the partner, so a correction notice goes to it too (fail safe)."""
    grouped: dict[str, list[DisclosureEntry]] = {}
    for entry in disclosures:
        grouped.setdefault(entry.partner, []).append(entry)
    recipients = []
    for partner, entries in sorted(grouped.items()):
        fields = sorted({f for e in entries for f in (*e.fields_sent, *e.fields_transformed)})
        recipients.append(Recipient(partner, len(entries), entries[0].time, entries[-1].time, tuple(fields)))
    return tuple(recipients)


async def build_access_report(
    registry: SubjectRegistry, ledger: LedgerReader, subject_ref: str
) -> AccessReport:
    record = await registry.record(subject_ref)
    disclosures = await ledger.query(
        LedgerQuery(kind="disclosure", subject_ref=subject_ref, limit=MAX_REPORT_RECORDS + 1))
    outcomes = await ledger.query(
        LedgerQuery(kind="outcome", subject_ref=subject_ref, limit=MAX_REPORT_RECORDS + 1))
    truncated = len(disclosures) > MAX_REPORT_RECORDS
    entries = disclosures_from_records(disclosures[:MAX_REPORT_RECORDS], outcomes)
    return AccessReport(subject_ref=subject_ref, registry=record, disclosures=entries,
                        recipients=recipients_of(entries), truncated=truncated,
                        complete_since=await pruned_before(ledger))


async def pruned_before(ledger: LedgerReader) -> str | None:
    """The latest cut-off any prune record names (None if the ledger was never pruned). Every prune record
    counts, signed or not: one that is not genuine can only make a report say it may be incomplete, which
    is the safe direction; `gateway ledger verify` is what judges the records themselves."""
    cutoffs = [
        before for record in await ledger.query(LedgerQuery(kind="prune", limit=None))
        if isinstance(detail := record.get("detail"), Mapping) and isinstance(before := detail.get("before"), str)
    ]
    return max(cutoffs) if cutoffs else None


def render_table(report: AccessReport) -> str:
    """Plain-text report for a privacy officer: sections, aligned columns, no colour."""
    reg = report.registry
    lines = [f"Data subject (keyed reference): {report.subject_ref}", "", "Consent"]
    if reg.consents:
        lines += _table(("purpose", "state", "since", "source"), [
            (c.consent_purpose, "granted" if c.granted else "withdrawn", c.changed_at.isoformat(), c.source)
            for c in reg.consents])
    else:
        lines.append("  (no consent recorded)")
    lines += ["", "Restriction of processing (hold)"]
    lines.append(f"  on hold since {reg.hold_since.isoformat() if reg.hold_since else '?'}: {reg.hold_reason}"
                 if reg.on_hold else "  not on hold")
    lines += ["", "Minor status"]
    if reg.minor:
        guardian = "with guardian consent" if reg.guardian_consent else "WITHOUT guardian consent"
        since = reg.minor_since.isoformat() if reg.minor_since else "?"
        lines.append(f"  minor since {since}, {guardian}")
    else:
        lines.append("  not recorded as a minor")
    lines += ["", f"Registry history ({len(reg.events)} events)"]
    if reg.events:
        lines += _table(("time", "event", "detail", "source", "changed"), [
            (e.at.isoformat(), e.kind.value, _event_detail(e.consent_purpose, e.hold_reason, e.minor,
                                                           e.guardian_consent), e.source, "yes" if e.changed else "no")
            for e in reg.events])
    if report.complete_since is not None:
        lines += ["", f"Ledger pruned before {report.complete_since}: disclosures and recipients before then are "
                      "NOT known (the lists below are complete only since then)"]
    lines += ["", f"Disclosures ({len(report.disclosures)}{', TRUNCATED' if report.truncated else ''})"]
    if report.disclosures:
        lines += _table(("time", "partner", "route", "purpose", "jurisdiction", "outcome", "fields sent"), [
            (d.time, d.partner, d.route or "", d.purpose or "",
             (d.jurisdiction or "") + (" (cross-border)" if d.cross_border else ""),
             "" if d.outcome_status is None else str(d.outcome_status),
             ", ".join(dict.fromkeys((*d.fields_sent, *d.fields_transformed))))
            for d in report.disclosures])
    else:
        lines.append("  (none recorded" + (f" since {report.complete_since})" if report.complete_since else ")"))
    lines += ["", f"Recipients to notify of a correction ({len(report.recipients)})"]
    if report.recipients:
        lines += _table(("partner", "disclosures", "first", "last", "fields received"), [
            (r.partner, str(r.disclosures), r.first_time, r.last_time, ", ".join(r.fields))
            for r in report.recipients])
    else:
        lines.append("  (none" + (f" known since {report.complete_since})" if report.complete_since else ")"))
    return "\n".join(lines) + "\n"


def _event_detail(purpose: str | None, reason: str | None, minor: bool | None, guardian: bool | None) -> str:
    if purpose:
        return purpose
    if reason:
        return reason
    if minor is not None:
        return f"minor={'yes' if minor else 'no'} guardian_consent={'yes' if guardian else 'no'}"
    return ""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    def line(cells: Sequence[str]) -> str:
        return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]
