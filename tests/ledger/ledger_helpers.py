"""Shared helpers for the ledger tests (a uniquely named module, importable from any test here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.keys import GatewayKeys
from gateway.ledger import Ledger, RecordDraft, open_ledger


def disclosure_draft(i: int, keys: GatewayKeys, partner: str = "acme-insurance") -> RecordDraft:
    return RecordDraft(
        kind="disclosure",
        caller="billing-service",
        partner=partner,
        route="claims.create",
        purpose="claims",
        legal_basis="contract",
        jurisdiction="KR",
        cross_border=False,
        subject_ref=keys.ledger.subject_ref(f"subscriber-{i % 7}"),
        fields_sent=("claim.amount", "claim.device_ref"),
        fields_transformed=("claim.device_ref",),
        fields_dropped=("claim.notes",),
        body_digest=keys.ledger.body_digest(f"body-{i}".encode()),
        request_id=f"req-{i}",
        latency_ms=1.5,
        detail={"n": i},
    )


@dataclass
class RecordingObserver:
    """A gateway.ledger.CommitObserver that keeps what it is told."""

    commits: list[tuple[int, float]] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    late: list[int] = field(default_factory=list)

    def committed(self, records: int, seconds: float) -> None:
        self.commits.append((records, seconds))

    def failed(self, records: int) -> None:
        self.failures.append(records)

    def landed_late(self, records: int) -> None:
        self.late.append(records)

    @property
    def batches(self) -> list[int]:
        return [records for records, _seconds in self.commits]


async def rogue_writer(url: str, keys: GatewayKeys, chain: str) -> Ledger:
    """A started second writer on `chain` that ignores the chain lease (gateway.ledger.lease), as a tool
    writing the table directly would: how these tests make the real writer's next commit fail."""
    ledger = open_ledger(url, keys.ledger, chain_id=chain)

    async def no_lease(chain: str, wait_seconds: float) -> None:
        return None

    ledger.store.claim_chain = no_lease  # type: ignore[method-assign]
    await ledger.start()
    return ledger
