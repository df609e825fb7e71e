"""Verification: recompute every chain and check every signature with the public key alone.

The verifier walks each chain in sequence order and reports, per chain, the first sequence that fails:
a gap (deleted record), a record that does not link to its predecessor (inserted or reordered), contents
that do not match the stored hash (changed field), a checkpoint or prune record whose Ed25519 signature
does not verify (forged), a tail shorter than the last signed checkpoint copy or than a head the auditor
expects (truncated, or an older copy of the database restored). A chain whose first records were pruned
verifies from the anchor a signed prune record gives for it.

What the writer guarantees is enforced too (docs/ledger.md, "What is signed"): every checkpoint's
`records_since_previous` must match the chain (a checkpoint removed, demoted to an unsigned record or
renumbered breaks the next one); every point of another chain a checkpoint signed (`detail.heads`, that
chain's checkpoint) must still be there with that hash (a chain deleted or cut); and records after a
chain's last signed point (its own checkpoints and prune records, a prune anchor, a head the auditor
passes; never another chain's claim, which vouches for nothing after that chain's checkpoint) are
accepted only on a chain whose writer holds its lease now, no more than its signed cadence allows
and no older than its checkpoint period. Anything else (checkpoints demoted, a fabricated chain, or the
tail a crashed writer left) fails until the auditor accepts that exact tail (`--accept-unsigned`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.errors import ConfigError
from gateway.ledger.records import GENESIS_HASH, parse_time, record_hash, signature_valid
from gateway.ledger.store import LedgerSnapshot


@dataclass(frozen=True, slots=True)
class ExpectedHead:
    """A head the auditor recorded earlier (`CHAIN:SEQUENCE:HASH`); the ledger must still contain it."""

    chain: str
    sequence: int
    hash: str

    @classmethod
    def parse(cls, text: str, *, option: str = "--expect-head") -> ExpectedHead:
        chain, sep1, rest = text.rpartition(":")
        chain, sep2, sequence = chain.rpartition(":")
        if not (sep1 and sep2 and chain and sequence.isdigit() and len(rest) == 64):
            raise ConfigError(f"{option} {text!r}: expected CHAIN:SEQUENCE:HASH (64 hex characters)")
        return cls(chain, int(sequence), rest.lower())


@dataclass(frozen=True, slots=True)
class TailPolicy:
    """How many unsigned records a live writer may have, for chains whose checkpoints do not state their
    own cadence (written before it was signed, or none left): the writer's settings' defaults
    (GATEWAY_CHECKPOINT_EVERY_RECORDS / _SECONDS). A signed checkpoint's own cadence wins for its chain."""

    every_records: int = 1000
    every_seconds: float = 60.0
    max_batch_records: int = 4096  # a checkpoint closes the batch that reached every_records
    commit_timeout_seconds: float = 15.0
    clock_slack_seconds: float = 60.0  # the verifier's clock against the writer's

    def window(self, every_seconds: float) -> float:
        """How old an unsigned record of a live writer may be: its timer checks every period whether a
        period has passed since the last checkpoint (so up to two), plus one commit and clock skew."""
        return 2 * every_seconds + self.commit_timeout_seconds + self.clock_slack_seconds


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
    signed_through: int  # last sequence covered by a signed checkpoint of this chain or another's (0: none)
    unsigned: str = ""  # why records after signed_through were accepted: "live writer" or "accepted"


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
            + (f" (signed through {c.signed_through}" + (f"; unsigned tail: {c.unsigned}" if c.unsigned else "")
               + ")" if c.signed_through != c.last_sequence else "")
            for c in self.chains
        )
        return f"ledger OK: {self.records} records in {len(self.chains)} chains; heads {heads or '(none)'}"


@dataclass(frozen=True, slots=True)
class _Inherited:
    """Records a checkpoint covered but its writer did not write: they were there when it started."""

    first: int
    last: int
    first_time: str
    last_hash: str
    found: str  # when that writer started (its clock)
    cadence: dict[str, Any]  # the detail of the checkpoint before them (their writer's cadence)
    by: int  # the checkpoint that marks them


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
    cadence: dict[str, Any] = field(default_factory=dict)  # the last checkpoint's detail
    times: dict[int, str] = field(default_factory=dict)  # times of the records in `watch_times`
    watch_times: set[int] = field(default_factory=set)
    after_checkpoint: tuple[int, str] | None = None  # the first record after the last signed record
    last_signed: int = 0  # the chain's last genuine checkpoint or prune record (0: none)
    # The records since the last checkpoint as (sequence, hash, time), for a checkpoint that marks some as
    # inherited from an earlier writer; and those marked ranges.
    since_checkpoint: list[tuple[int, str, str]] = field(default_factory=list)
    inherited: list[_Inherited] = field(default_factory=list)

    def fail(self, sequence: int, reason: str) -> None:
        if self.failure is None:
            self.failure = Failure(self.chain, sequence, reason)

    def check_count(self, sequence: int, detail: Any) -> None:
        """A signed checkpoint states how many records it covers since the previous checkpoint: a checkpoint
        removed, demoted to an unsigned record or renumbered in between makes the count disagree."""
        count = detail.get("records_since_previous") if isinstance(detail, dict) else None
        if type(count) is not int:
            self.fail(sequence, "signed checkpoint states no record count")
            return
        if self.checkpoint_sequences:
            previous = self.checkpoint_sequences[-1]
            ok = count == sequence - previous - 1
        elif self.verified_from:
            # The previous checkpoint was pruned: it lay at or before the anchor.
            previous, ok = 0, count >= sequence - self.verified_from - 1
        else:
            previous, ok = 0, count == sequence - 1
        if not ok:
            since = f"checkpoint {previous}" if previous else "the chain's start"
            self.fail(sequence, f"signed checkpoint covers {count} records since the previous checkpoint but the "
                                f"chain holds {sequence - previous - 1} since {since}: a checkpoint was removed, "
                                "demoted to an unsigned record or renumbered")

    def note_inherited(self, sequence: int, detail: Any) -> None:
        """A checkpoint's `inherited` mark: the first records it covers were past the last checkpoint when its
        writer started (a crashed writer's tail, or records put there): they stay subject to the tail rule."""
        mark = detail.get("inherited") if isinstance(detail, dict) else None
        if mark is None:
            return
        count = mark.get("records") if isinstance(mark, dict) else None
        found = mark.get("found") if isinstance(mark, dict) else None
        covered = detail.get("records_since_previous")
        if type(count) is not int or not isinstance(found, str) or type(covered) is not int \
                or not 1 <= count <= covered:
            self.fail(sequence, "signed checkpoint states an invalid inherited record count")
            return
        first = sequence - covered
        held = {s: (h, t) for s, h, t in self.since_checkpoint}
        last = first + count - 1
        if first not in held or last not in held:
            # Pruned up to inside that range: what is left of it is judged from the first record left.
            first = min((s for s in held if s <= last), default=last + 1)
            if first > last:
                return
        self.inherited.append(_Inherited(first, last, held[first][1], held[last][0], found, dict(self.cadence),
                                         sequence))

    def time_of(self, sequence: int) -> str | None:
        if self.after_checkpoint is not None and self.after_checkpoint[0] == sequence:
            return self.after_checkpoint[1]
        return self.times.get(sequence)

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
        elif record.get("kind") == "checkpoint":
            self.check_count(sequence, record.get("detail"))
        if self.failure is not None:
            self.expected = sequence + 1
            return
        if record.get("kind") == "checkpoint":
            self.note_inherited(sequence, record.get("detail"))
            self.checkpoint_sequences.append(sequence)
            self.cadence = record.get("detail") or {}
            self.since_checkpoint.clear()
        else:
            self.since_checkpoint.append((sequence, str(record.get("hash")), str(record.get("time"))))
        if record.get("kind") in ("checkpoint", "prune"):
            # Signed (its signature verified above), and chained onto every record before it.
            self.last_signed = sequence
            self.after_checkpoint = None
        elif self.after_checkpoint is None:
            self.after_checkpoint = (sequence, str(record.get("time")))
        if sequence in self.watch:
            self.seen_hashes[sequence] = record["hash"]
        if sequence in self.watch_times or sequence == self.first:
            self.times[sequence] = str(record.get("time"))
        self.before_prev_hash = self.prev_hash
        self.prev_hash = record["hash"]
        self.expected = sequence + 1


HeadClaim = tuple[int, str, str, int]  # (sequence, hash) of a chain's head, signed by checkpoint (chain, sequence)


def _signed_heads(checkpoint: dict[str, Any], key: Ed25519PublicKey) -> list[tuple[str, HeadClaim]]:
    """The other chains' heads a checkpoint signed, if its signature verifies (wherever it now sits)."""
    detail = checkpoint.get("detail")
    if not isinstance(detail, dict) or not isinstance(detail.get("heads"), dict) \
            or not signature_valid(checkpoint, key):
        return []
    claims = []
    for chain, head in detail["heads"].items():
        if isinstance(head, dict) and type(head.get("sequence")) is int and isinstance(head.get("hash"), str):
            claims.append((chain, (head["sequence"], head["hash"], str(checkpoint.get("chain")),
                                   int(checkpoint.get("sequence") or 0))))
    return claims


async def verify_snapshot(
    snapshot: LedgerSnapshot,
    public_key: Ed25519PublicKey,
    expect_heads: Iterable[ExpectedHead] = (),
    *,
    accept_unsigned: Iterable[ExpectedHead] = (),
    policy: TailPolicy = TailPolicy(),
    live: Callable[[str], Awaitable[bool]] | None = None,
    now: datetime | None = None,
) -> VerifyReport:
    """Verify everything in `snapshot` (one consistent view of the ledger or an exported bundle).

    `live(chain)` says whether a writer holds the chain now (None, as for a bundle: nobody does), `now`
    is the time unsigned records are aged against; `accept_unsigned` are heads whose unsigned records the
    auditor has checked and accepts (a crashed writer's tail)."""
    failures: dict[str, Failure] = {}
    moment = now or datetime.now(UTC)

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
    accepted = list(accept_unsigned)
    # Every head of another chain that a genuine checkpoint signed, from the checkpoints in the chains and
    # from their stored copies (a signed statement stays true even if its own record was moved).
    claims: dict[str, set[HeadClaim]] = defaultdict(set)
    for checkpoint in [*await snapshot.fetch_kind("checkpoint"),
                       *(copy for copies in stored.values() for copy in copies.values())]:
        for chain, claim in _signed_heads(checkpoint, public_key):
            claims[chain].add(claim)

    def watched(chain: str) -> tuple[set[int], set[int]]:
        points = {h.sequence for h in [*expected_heads, *accepted] if h.chain == chain}
        points |= {c[0] for c in claims.get(chain, ())}
        return set(stored.get(chain, {})) | points, {p + 1 for p in points}

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
            watch, watch_times = watched(chain)
            current = _Walk(chain, anchors.get(chain, {}), watch, watch_times=watch_times)
            walks[chain] = current
        current.feed(record, public_key, set(stored.get(chain, {})))

    reports: list[ChainReport] = []
    every = set(walks) | set(stored) | {h.chain for h in [*expected_heads, *accepted]} | set(anchors) | set(claims)
    for chain in sorted(every):
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
        # Only the chain's own signed records (and its prune anchor) cover records: another chain's checkpoint
        # signs this chain's last signed point, which must still be there, but never vouches for records
        # after it (older writers signed any head they read, even a forged chain: review rv-verify R0).
        covered = max(walk.last_signed, walk.verified_from)
        signed = walk.last_signed
        for sequence, digest, by_chain, by_sequence in sorted(claims.get(chain, ())):
            by = f"checkpoint {by_chain}:{by_sequence}"
            if walk.failure is None and walk.first <= sequence <= last \
                    and walk.seen_hashes.get(sequence) == digest:
                continue  # the chain holds it (also a chain that restarted at 1 after a prune, as writers did)
            if sequence <= max(walk.anchors, default=0):
                # Pruned since; an anchor at that very place must match.
                if walk.anchors.get(sequence, digest) != digest:
                    fail(chain, sequence, f"pruned anchor differs from the head {by} signed: rewritten")
            elif sequence > last:
                fail(chain, last + 1, f"chain ends at {last} but {by} signed its head at {sequence}: "
                                      "records or the whole chain deleted")
            elif walk.failure is None:
                fail(chain, sequence, f"record differs from the head {by} signed: rewritten")
        for head in expected_heads:
            if head.chain != chain:
                continue
            if head.sequence > last:
                fail(chain, last + 1, f"chain ends at {last} but the expected head is {head.sequence}: "
                                      "tail truncated or an older copy restored")
            elif head.sequence > walk.verified_from and walk.failure is None \
                    and walk.seen_hashes.get(head.sequence) != head.hash:
                fail(chain, head.sequence, "record differs from the expected head")
            else:
                covered = max(covered, head.sequence)
        unsigned = ""
        for head in accepted:
            if head.chain != chain:
                continue
            if head.sequence > last or (walk.failure is None and head.sequence > walk.verified_from
                                        and walk.seen_hashes.get(head.sequence) != head.hash):
                fail(chain, min(head.sequence, last + 1), "the head given to --accept-unsigned is not in the chain")
            elif head.sequence > covered:
                covered, unsigned = head.sequence, "accepted"
        for part in walk.inherited:
            if walk.failure is not None:
                break
            if any(h.chain == chain and h.sequence == part.last and h.hash == part.last_hash for h in accepted):
                unsigned = "accepted"
                continue
            every_records, every_seconds = _cadence(part.cadence, policy)
            why = _beyond_bound(part.last - part.first + 1, part.first_time, _parsed(part.found), every_records,
                                every_seconds, policy)
            if why:
                fail(chain, part.first,
                     f"records {part.first}-{part.last} were past the chain's last checkpoint when its writer "
                     f"started again ({part.found}; checkpoint {part.by} marks them inherited) and {why}: "
                     "checkpoints removed or demoted, records rewritten or put there, or a writer that crashed "
                     "long before; only if its writer crashed, check these records and accept them with "
                     f"--accept-unsigned {chain}:{part.last}:{part.last_hash}")
                break
        if walk.failure is None and chain not in failures and last > covered:
            unsigned = await _check_tail(walk, chain, covered, last, policy, live, moment, fail)
        reports.append(ChainReport(
            chain=chain, records=walk.records, first_sequence=walk.first, last_sequence=last,
            head_hash=walk.prev_hash, verified_from=walk.verified_from, signed_through=signed,
            unsigned=unsigned,
        ))
    return VerifyReport(total, tuple(reports), tuple(sorted(failures.values(), key=lambda f: f.chain)))


async def _check_tail(walk: _Walk, chain: str, covered: int, last: int, policy: TailPolicy,
                      live: Callable[[str], Awaitable[bool]] | None, now: datetime,
                      fail: Callable[[str, int, str], None]) -> str:
    """Records covered..last are covered by no signed statement: only a live writer's recent tail passes.
    Returns "live writer" when it does (the note in the OK line)."""
    every_records, every_seconds = _cadence(walk.cadence, policy)
    why = _beyond_bound(last - covered, walk.time_of(covered + 1), now, every_records, every_seconds, policy)
    if not why and (live is None or not await live(chain)):
        why = "no writer holds the chain now (a writer that stops cleanly signs every record)"
    if not why:
        return "live writer"
    fail(chain, covered + 1,
         f"records {covered + 1}-{last} are covered by no signed checkpoint and {why}: checkpoints removed or "
         "demoted, a fabricated chain, or a writer that crashed; only if its writer crashed, check these records "
         f"and accept them with --accept-unsigned {chain}:{last}:{walk.prev_hash}")
    return ""


def _cadence(detail: dict[str, Any], policy: TailPolicy) -> tuple[int, float]:
    """The cadence a checkpoint signed (its writer's own), else the verifier's settings."""
    signed_records, signed_seconds = detail.get("every_records"), detail.get("every_seconds")
    every_records = policy.every_records
    if isinstance(signed_records, int) and not isinstance(signed_records, bool) and signed_records >= 1:
        every_records = signed_records
    every_seconds = policy.every_seconds
    if isinstance(signed_seconds, int | float) and not isinstance(signed_seconds, bool) and signed_seconds > 0:
        every_seconds = float(signed_seconds)
    return every_records, every_seconds


def _beyond_bound(count: int, oldest: str | None, at: datetime | None, every_records: int, every_seconds: float,
                  policy: TailPolicy) -> str:
    """Why `count` unsigned records, the oldest written at `oldest`, are more or older (as of `at`) than a
    live writer with that cadence leaves unsigned; "" if they are not. One rule for a live writer's tail
    and for the tail a restarted writer found."""
    if count > every_records + policy.max_batch_records:
        return (f"are more than its writer leaves unsigned (a checkpoint every {every_records} records, "
                f"batches of at most {policy.max_batch_records})")
    if oldest is None or at is None or _age(oldest, at) > policy.window(every_seconds):
        return (f"are older than its writer leaves unsigned (a checkpoint at least every {every_seconds:g} s "
                "while it runs, and one when it stops)")
    return ""


def _parsed(time_text: str) -> datetime | None:
    try:
        return parse_time(time_text)
    except ValueError:
        return None


def _age(time_text: str, now: datetime) -> float:
    try:
        return (now - parse_time(time_text)).total_seconds()
    except ValueError:
        return float("inf")
