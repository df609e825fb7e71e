"""Verification: recompute every chain and check every signature with the public key alone.

The verifier walks each chain in sequence order and reports, per chain, the first sequence that fails:
a gap (deleted record), a record that does not link to its predecessor (inserted or reordered), contents
that do not match the stored hash (changed field), a checkpoint or prune record whose Ed25519 signature
does not verify (forged), a tail shorter than the last signed checkpoint copy or than a head the auditor
expects (truncated, or an older copy of the database restored). A chain whose first records were pruned
verifies from the anchor a signed prune record gives for it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.errors import ConfigError
from gateway.ledger.records import GENESIS_HASH, record_hash, signature_valid
from gateway.ledger.store import LedgerSnapshot


@dataclass(frozen=True, slots=True)
class ExpectedHead:
    """A head the auditor recorded earlier (`CHAIN:SEQUENCE:HASH`); the ledger must still contain it."""

    chain: str
    sequence: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> ExpectedHead:
        chain, sep1, rest = text.rpartition(":")
        chain, sep2, sequence = chain.rpartition(":")
        if not (sep1 and sep2 and chain and sequence.isdigit() and len(rest) == 64):
            raise ConfigError(f"--expect-head {text!r}: expected CHAIN:SEQUENCE:HASH (64 hex characters)")
        return cls(chain, int(sequence), rest.lower())


@dataclass(frozen=True, slots=True)
class Failure:
    chain: str
    sequence: int
    reason: str

    def __str__(self) -> str:
        return f"chain {self.chain}: sequence {self.sequence}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ChainReport:
    chain: str
    records: int
    first_sequence: int
    last_sequence: int
    head_hash: str
    verified_from: int  # 0: from the genesis; n: from the signed prune anchor at sequence n
    signed_through: int  # last sequence covered by a signed checkpoint (0: none)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    records: int
    chains: tuple[ChainReport, ...]
    failures: tuple[Failure, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        """One line: what was verified (and from where), or every chain's first failure."""
        if self.failures:
            return "ledger verification FAILED: " + "; ".join(str(f) for f in self.failures)
        heads = ", ".join(
            f"{c.chain}:{c.last_sequence}:{c.head_hash}"
            + (f" (from pruned anchor {c.verified_from})" if c.verified_from else "")
            + (f" (signed through {c.signed_through})" if c.signed_through != c.last_sequence else "")
            for c in self.chains
        )
        return f"ledger OK: {self.records} records in {len(self.chains)} chains; heads {heads or '(none)'}"


@dataclass
class _Walk:
    chain: str
    anchors: dict[int, str]
    watch: set[int]
    records: int = 0
    first: int = 0
    expected: int = 0
    prev_hash: str = GENESIS_HASH
    before_prev_hash: str | None = None
    verified_from: int = 0
    failure: Failure | None = None
    seen_hashes: dict[int, str] = field(default_factory=dict)
    checkpoint_sequences: list[int] = field(default_factory=list)

    def fail(self, sequence: int, reason: str) -> None:
        if self.failure is None:
            self.failure = Failure(self.chain, sequence, reason)

    def start(self, sequence: int) -> None:
        self.first = sequence
        if sequence == 1:
            self.prev_hash = GENESIS_HASH
        elif sequence - 1 in self.anchors:
            self.prev_hash = self.anchors[sequence - 1]
            self.verified_from = sequence - 1
        else:
            lower = [s for s in self.anchors if s < sequence - 1]
            self.fail(max(lower) + 1 if lower else 1,
                      f"records before {sequence} are missing and no signed prune record covers them")
        self.expected = sequence

    def feed(self, record: dict[str, Any], key: Ed25519PublicKey, stored_checkpoints: set[int]) -> None:
        sequence = record.get("sequence")
        if not isinstance(sequence, int):
            self.fail(self.expected, "record without a sequence number")
            return
        if self.records == 0:
            self.start(sequence)
        self.records += 1
        if self.failure is not None:
            self.expected = sequence + 1
            return
        if sequence < self.expected:
            self.fail(sequence, "sequence number repeated (record inserted)")
        elif sequence > self.expected:
            self.fail(self.expected, f"record missing (the next stored record is {sequence}): deleted")
        elif record.get("prev_hash") != self.prev_hash:
            if self.before_prev_hash is not None and record.get("prev_hash") == self.before_prev_hash:
                self.fail(sequence - 1, "record does not belong between its neighbours: inserted")
            else:
                self.fail(sequence, "record does not link to its predecessor: inserted, deleted or reordered")
        elif record_hash(record) != record.get("hash"):
            self.fail(sequence, "contents do not match the record's hash: a field was changed")
        elif record.get("kind") in ("checkpoint", "prune") and not signature_valid(record, key):
            self.fail(sequence, f"{record.get('kind')} signature does not verify: forged or rewritten")
        elif record.get("kind") == "checkpoint" and sequence not in stored_checkpoints:
            self.fail(sequence, "signed checkpoint has no stored copy in ledger_checkpoints: removed")
        if self.failure is not None:
            self.expected = sequence + 1
            return
        if record.get("kind") == "checkpoint":
            self.checkpoint_sequences.append(sequence)
        if sequence in self.watch:
            self.seen_hashes[sequence] = record["hash"]
        self.before_prev_hash = self.prev_hash
        self.prev_hash = record["hash"]
        self.expected = sequence + 1


async def verify_snapshot(
    snapshot: LedgerSnapshot, public_key: Ed25519PublicKey, expect_heads: Iterable[ExpectedHead] = ()
) -> VerifyReport:
    """Verify everything in `snapshot` (one consistent view of the ledger or an exported bundle)."""
    failures: dict[str, Failure] = {}

    def fail(chain: str, sequence: int, reason: str) -> None:
        current = failures.get(chain)
        if current is None or sequence < current.sequence:
            failures[chain] = Failure(chain, sequence, reason)

    anchors: dict[str, dict[int, str]] = defaultdict(dict)
    for prune in await snapshot.fetch_kind("prune"):
        if not signature_valid(prune, public_key) or record_hash(prune) != prune.get("hash"):
            fail(str(prune.get("chain")), int(prune.get("sequence") or 0), "prune record signature does not verify")
            continue
        for chain, anchor in ((prune.get("detail") or {}).get("anchors") or {}).items():
            anchors[chain][int(anchor["sequence"])] = str(anchor["hash"])

    stored: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for entry in await snapshot.fetch_checkpoints():
        stored[str(entry["chain"])][int(entry["sequence"])] = entry["record"]
    expected_heads = list(expect_heads)

    walks: dict[str, _Walk] = {}
    total = 0
    current: _Walk | None = None
    async for record in snapshot.iter_records():
        total += 1
        chain = str(record.get("chain"))
        if current is None or current.chain != chain:
            if chain in walks:
                fail(chain, int(record.get("sequence") or 0), "records of this chain are out of order")
                continue
            watch = set(stored.get(chain, {})) | {h.sequence for h in expected_heads if h.chain == chain}
            current = _Walk(chain, anchors.get(chain, {}), watch)
            walks[chain] = current
        current.feed(record, public_key, set(stored.get(chain, {})))

    reports: list[ChainReport] = []
    for chain in sorted(set(walks) | set(stored) | {h.chain for h in expected_heads} | set(anchors)):
        walk = walks.get(chain)
        if walk is None:
            anchor = max(anchors.get(chain, {0: GENESIS_HASH}))
            walk = _Walk(chain, anchors.get(chain, {}), set(), expected=anchor + 1, verified_from=anchor,
                         prev_hash=anchors.get(chain, {}).get(anchor, GENESIS_HASH))
            walk.first = anchor + 1
        if walk.failure is not None:
            fail(chain, walk.failure.sequence, walk.failure.reason)
        last = walk.expected - 1
        for sequence, copy in sorted(stored.get(chain, {}).items()):
            if sequence <= walk.verified_from:
                continue
            if not signature_valid(copy, public_key) or record_hash(copy) != copy.get("hash") \
                    or copy.get("sequence") != sequence or copy.get("chain") != chain:
                fail(chain, sequence, "stored checkpoint copy does not verify: forged")
            elif sequence > last:
                fail(chain, last + 1, f"chain ends at {last} but a signed checkpoint covers {sequence}: "
                                      "tail truncated")
            elif walk.failure is None and walk.seen_hashes.get(sequence) != copy["hash"]:
                fail(chain, sequence, "record differs from its signed checkpoint copy: rewritten")
        for head in expected_heads:
            if head.chain != chain:
                continue
            if head.sequence > last:
                fail(chain, last + 1, f"chain ends at {last} but the expected head is {head.sequence}: "
                                      "tail truncated or an older copy restored")
            elif head.sequence > walk.verified_from and walk.failure is None \
                    and walk.seen_hashes.get(head.sequence) != head.hash:
                fail(chain, head.sequence, "record differs from the expected head")
        reports.append(ChainReport(
            chain=chain, records=walk.records, first_sequence=walk.first, last_sequence=last,
            head_hash=walk.prev_hash, verified_from=walk.verified_from,
            signed_through=max(walk.checkpoint_sequences, default=0),
        ))
    return VerifyReport(total, tuple(reports), tuple(sorted(failures.values(), key=lambda f: f.chain)))
