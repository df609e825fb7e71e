"""SubjectRights (ledger record first, then the change) and the access report, on a real SQLite ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.errors import LedgerUnavailable
from gateway.keys import GatewayKeys
from gateway.ledger import Ledger, LedgerQuery, RecordDraft, open_ledger
from gateway.ledger.records import AppendedRecord
from gateway.subjects import EventKind, SubjectRegistry, open_registry
from gateway.subjects.report import build_access_report, render_table
from gateway.subjects.rights import SubjectRights

SUBJECT = "customer-0042"


@dataclass
class Parts:
    ledger: Ledger
    registry: SubjectRegistry
    rights: SubjectRights
    ref: str


@pytest.fixture
async def parts(tmp_path: Path, gateway_keys: GatewayKeys) -> AsyncIterator[Parts]:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = open_ledger(url, gateway_keys.ledger, chain_id="test-chain")
    await ledger.start()
    registry = open_registry(url, gateway_keys.ledger)
    await registry.start()
    yield Parts(ledger, registry, SubjectRights(registry, ledger, gateway_keys.ledger),
                gateway_keys.ledger.subject_ref(SUBJECT))
    await registry.close()
    await ledger.close()


async def test_every_change_is_a_registry_record_in_the_ledger(parts: Parts) -> None:
    change = await parts.rights.withdraw_consent(SUBJECT, "location", source="support")
    assert change.event.kind is EventKind.CONSENT_WITHDRAWN
    assert change.event.subject_ref == parts.ref
    assert (await parts.registry.status(parts.ref, "location")).consent_granted is False
    await parts.rights.place_hold(SUBJECT, "correction_pending", source="officer")
    await parts.rights.set_minor(SUBJECT, True, False, source="officer")
    records = await parts.ledger.query(LedgerQuery(kind="registry", subject_ref=parts.ref))
    assert [r["action"] for r in records] == ["consent_withdrawn", "hold_placed", "minor_set"]
    first = records[0]
    assert first["id"] == change.record.id
    assert first["caller"] == "support"
    assert first["detail"]["consent_purpose"] == "location"
    assert first["detail"]["at"] == change.event.at.isoformat()
    assert records[1]["reason"] == "correction_pending"
    # The raw id appears in no record.
    assert SUBJECT not in repr(records)


class FailingLedger:
    async def append(self, draft: RecordDraft) -> AppendedRecord:
        raise LedgerUnavailable("ledger down")


async def test_no_change_takes_effect_when_the_ledger_cannot_record_it(parts: Parts, gateway_keys: GatewayKeys) -> None:
    await parts.rights.grant_consent(SUBJECT, "location", source="app")
    failing = SubjectRights(parts.registry, FailingLedger(), gateway_keys.ledger)
    with pytest.raises(LedgerUnavailable):
        await failing.withdraw_consent(SUBJECT, "location", source="support")
    with pytest.raises(LedgerUnavailable):
        await failing.grant_consent(SUBJECT, "marketing", source="app")
    assert (await parts.registry.status(parts.ref, "location")).consent_granted is True
    assert (await parts.registry.status(parts.ref, "marketing")).consent_granted is None
    assert len((await parts.registry.record(parts.ref)).events) == 1


async def test_bad_input_writes_no_ledger_record(parts: Parts) -> None:
    from gateway.errors import MalformedRequest

    with pytest.raises(MalformedRequest):
        await parts.rights.grant_consent(SUBJECT, "Not A Label", source="app")
    with pytest.raises(MalformedRequest):
        await parts.rights.grant_consent("   ", "location", source="app")
    assert await parts.ledger.query(LedgerQuery(kind="registry")) == []


async def disclose(ledger: Ledger, ref: str, partner: str, route: str, fields: list[str], status: int) -> None:
    record = await ledger.append(RecordDraft(
        kind="disclosure", caller="orders", partner=partner, route=route, purpose="delivery",
        legal_basis="contract", jurisdiction="JP", cross_border=True, transfer_basis="QXPRESS §3",
        subject_ref=ref, fields_sent=fields, request_id="req-1"))
    await ledger.append(RecordDraft(kind="outcome", partner=partner, route=route, subject_ref=ref,
                                    disclosure_id=record.id, status=status))


async def test_access_report_lists_disclosures_and_distinct_recipients(parts: Parts, gateway_keys: GatewayKeys) -> None:
    other = gateway_keys.ledger.subject_ref("someone-else")
    await parts.rights.grant_consent(SUBJECT, "location", source="app")
    await disclose(parts.ledger, parts.ref, "carrier-jp-yamato", "create-shipment", ["recipient.name"], 201)
    await disclose(parts.ledger, parts.ref, "carrier-jp-yamato", "update-address", ["recipient.address"], 502)
    await disclose(parts.ledger, parts.ref, "sms-kr-mwise", "send-sms", ["recipient.phone"], 200)
    await disclose(parts.ledger, other, "maps-google", "geocode", ["location"], 200)

    report = await build_access_report(parts.registry, parts.ledger, parts.ref)
    assert [(d.partner, d.route, d.outcome_status) for d in report.disclosures] == [
        ("carrier-jp-yamato", "create-shipment", 201),
        ("carrier-jp-yamato", "update-address", 502),
        ("sms-kr-mwise", "send-sms", 200),
    ]
    # A failed call may still have reached the partner: it is a recipient to notify all the same.
    assert [(r.partner, r.disclosures, r.fields) for r in report.recipients] == [
        ("carrier-jp-yamato", 2, ("recipient.address", "recipient.name")),
        ("sms-kr-mwise", 1, ("recipient.phone",)),
    ]
    assert report.registry.consents[0].consent_purpose == "location"
    text = render_table(report)
    assert "Recipients to notify of a correction (2)" in text
    assert "maps-google" not in text
    assert SUBJECT not in text
    as_json = report.as_dict()
    assert as_json["recipients_to_notify_of_a_correction"][0]["partner"] == "carrier-jp-yamato"
    assert as_json["disclosures"][0]["fields_sent"] == ["recipient.name"]
