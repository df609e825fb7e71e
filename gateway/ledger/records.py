"""Ledger records: what a record holds, its canonical encoding, its chain hash and its signature.

A record is a flat mapping of named fields. Its canonical encoding is the UTF-8 JSON of every non-null
field except `hash`, with sorted keys and no white space (orjson); the record's `hash` is the SHA-256 of
that encoding, and `prev_hash` (inside the encoding) links it to its predecessor in the same chain.
Checkpoint and prune records also carry an Ed25519 `signature` over the canonical encoding without
`signature` and `hash`, so one public key proves them. The encoding is computed once when a record is
sealed and recomputed from the stored columns by the verifier: any changed column changes the hash.

No record holds a personal value: `subject_ref` and `body_digest` are keyed HMACs (gateway.keys), and
the `fields_*` lists name field paths, never values.
"""

from __future__ import annotations

import hashlib
import operator
import re
import time as _time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KINDS: Final = ("disclosure", "refusal", "outcome", "registry", "checkpoint", "prune")
# Written only by the ledger itself; append() refuses them from callers.
LEDGER_KINDS: Final = frozenset({"checkpoint", "prune"})
GENESIS_HASH: Final = "0" * 64
SIGNATURE_DOMAIN: Final = b"partner-data-gateway/ledger/v1\n"

_STRING_FIELDS: Final = (
    "caller", "partner", "route", "purpose", "legal_basis", "jurisdiction", "transfer_basis", "subject_ref",
    "body_digest", "request_id", "disclosure_id", "reason", "legal_reference", "action",
)
_LIST_FIELDS: Final = ("fields_sent", "fields_transformed", "fields_dropped")
# Column order of the stored table; the stores insert and select in exactly this order.
HEADER_COLUMNS: Final = ("id", "chain", "sequence", "time", "kind", "prev_hash", "hash", "signature")
DRAFT_COLUMNS: Final = (
    "caller", "partner", "route", "purpose", "legal_basis", "jurisdiction", "cross_border", "transfer_basis",
    "subject_ref", "fields_sent", "fields_transformed", "fields_dropped", "body_digest", "request_id",
    "disclosure_id", "status", "latency_ms", "reason", "legal_reference", "attempt", "action", "detail",
)
COLUMNS: Final = HEADER_COLUMNS + DRAFT_COLUMNS
JSON_COLUMNS: Final = frozenset({*_LIST_FIELDS, "detail"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_sha256: Final = hashlib.sha256
_dumps: Final = orjson.dumps
_SORT_KEYS: Final = orjson.OPT_SORT_KEYS


class RecordDraft(NamedTuple):
    """What a caller asks the ledger to record; the ledger adds id, chain, sequence, time and hashes.

    Immutable. A NamedTuple rather than a frozen dataclass: two or three are built per proxied request,
    and a frozen dataclass's __init__ (one object.__setattr__ per field) cost 4-5 us against about 1.

    `subject_ref` and `body_digest` must already be keyed (LedgerKeys.subject_ref / body_digest): the
    ledger refuses anything that is not 64 lowercase hex characters there, so a raw identifier cannot
    slip in. `action` is used by `registry` records (consent grant/withdraw, hold place/lift, minor
    status); `detail` is a small JSON object of non-personal facts.
    """

    kind: str
    caller: str | None = None
    partner: str | None = None
    route: str | None = None
    purpose: str | None = None
    legal_basis: str | None = None
    jurisdiction: str | None = None
    cross_border: bool | None = None
    transfer_basis: str | None = None
    subject_ref: str | None = None
    fields_sent: Sequence[str] | None = None
    fields_transformed: Sequence[str] | None = None
    fields_dropped: Sequence[str] | None = None
    body_digest: str | None = None
    request_id: str | None = None
    disclosure_id: str | None = None
    status: int | None = None
    latency_ms: float | None = None
    reason: str | None = None
    legal_reference: str | None = None
    attempt: int | None = None
    action: str | None = None
    detail: Mapping[str, Any] | None = None


class AppendedRecord(NamedTuple):
    """A record that is durable: its id, where it sits in its chain, and its time (ISO 8601 UTC).
    Immutable; a NamedTuple (built once per disclosure on the loop) rather than a frozen dataclass."""

    id: str
    chain: str
    sequence: int
    time: str
    hash: str


@dataclass(frozen=True, slots=True)
class SealedRecord:
    """A record with its place in the chain fixed: the row to store and the mapping that was hashed."""

    row: tuple[Any, ...]
    record: dict[str, Any]
    hash: str


def format_time(moment: datetime) -> str:
    """Fixed-width UTC time with microseconds, so text order is time order in both backends."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# now_text() runs once per commit on the loop: the date and time of day are formatted once a second.
# One tuple, replaced whole, so a reader on another thread never pairs a second with another's text.
_now_second: tuple[int, str] = (-1, "")


def now_text() -> str:
    """The current UTC time as format_time() spells it (microseconds truncated from the clock's ns)."""
    global _now_second
    second, micros = divmod(_time.time_ns() // 1000, 1_000_000)
    cached = _now_second
    if cached[0] != second:
        cached = _now_second = (second, _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(second)))
    return f"{cached[1]}.{micros:06d}Z"


def parse_time(text: str) -> datetime:
    """A date (`2024-05-01`) or ISO 8601 time; naive values are UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def canonical(record: Mapping[str, Any], *, without: tuple[str, ...] = ("hash",)) -> bytes:
    """The bytes hashed (and, without `signature`, signed): sorted keys, no nulls, no white space."""
    return orjson.dumps(
        {k: v for k, v in record.items() if v is not None and k not in without}, option=orjson.OPT_SORT_KEYS
    )


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def signed_content(record: Mapping[str, Any]) -> bytes:
    return SIGNATURE_DOMAIN + canonical(record, without=("hash", "signature"))


def sign_record(record: Mapping[str, Any], key: Ed25519PrivateKey) -> str:
    return key.sign(signed_content(record)).hex()


def signature_valid(record: Mapping[str, Any], key: Ed25519PublicKey) -> bool:
    signature = record.get("signature")
    if not isinstance(signature, str):
        return False
    try:
        key.verify(bytes.fromhex(signature), signed_content(record))
    except (InvalidSignature, ValueError):
        return False
    return True


# How each draft column is checked and stored; one pass over these per record (append() is on every
# request's path, so the checks are table-driven rather than one function per field).
_STR, _HEX, _LIST, _BOOL, _INT, _FLOAT, _OBJECT = range(7)
_FIELD_RULES: Final = tuple(
    (name, _HEX if name in ("subject_ref", "body_digest") else _STR if name in _STRING_FIELDS
     else _LIST if name in _LIST_FIELDS else _BOOL if name == "cross_border"
     else _INT if name in ("status", "attempt") else _FLOAT if name == "latency_ms" else _OBJECT)
    for name in DRAFT_COLUMNS
)


_read_draft_columns: Final = operator.attrgetter(*DRAFT_COLUMNS)


@dataclass(frozen=True, slots=True)
class PreparedRecord:
    """A checked draft: its non-null fields as they are hashed, and its columns as they are stored.
    Built once in append(), so the writer only adds the chain header, hashes and stores."""

    fields: dict[str, Any]
    values: tuple[Any, ...]


def _encodable(text: str) -> bool:
    """Whether `text` is valid Unicode (no lone surrogate), so that it can be stored and hashed as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_source(name: str, rule: int) -> list[str]:
    """The lines of `_check_columns` that check and encode column `name` (bound to a local of that name;
    its stored value ends up in `<name>_` when it differs from the hashed one)."""
    lines = [f"    if {name} is not None:"]
    if rule == _STR:
        # PostgreSQL's text cannot hold NUL: a record with one would be refused by the store on every try.
        lines += [f"        if type({name}) is not str:",
                  f"            raise TypeError('record field {name}: expected a string')",
                  f"        if '\\x00' in {name}:",
                  f"            raise ValueError('record field {name}: a NUL character cannot be stored')",
                  # A lone surrogate cannot be encoded: the record would fail at sealing, with its batch.
                  f"        if not {name}.isascii() and not _encodable({name}):",
                  f"            raise ValueError('record field {name}: not encodable as UTF-8')"]
    elif rule == _HEX:
        lines += [f"        if type({name}) is not str or not _fullmatch_hex64({name}):",
                  f"            raise ValueError('record field {name}: expected a keyed reference "
                  "(64 lowercase hex characters)')"]
    elif rule == _LIST:
        lines += [f"        if isinstance({name}, str):",
                  f"            raise TypeError('record field {name}: expected a list of field paths')",
                  f"        for _path in {name}:",
                  "            if type(_path) is not str:",
                  f"                raise TypeError('record field {name}: expected a list of field paths')",
                  f"        {name} = list({name})",
                  f"        {name}_ = _dumps({name}).decode()"]
    elif rule == _BOOL:
        lines += [f"        if type({name}) is not bool:",
                  f"            raise TypeError('record field {name}: expected a boolean')"]
    elif rule == _INT:
        lines += [f"        if type({name}) is not int:",
                  f"            raise TypeError('record field {name}: expected an integer')"]
    elif rule == _FLOAT:
        # Stored as a float in both backends, so it is hashed as one.
        lines += [f"        if type({name}) is not int and type({name}) is not float:",
                  f"            raise TypeError('record field {name}: expected a number')",
                  f"        {name} = float({name})"]
    else:
        # One JSON round trip now, so what is hashed is exactly what the verifier rebuilds from the stored
        # text (tuples become lists, keys sorted, non-JSON values refused here, not later).
        lines += [f"        if not isinstance({name}, _Mapping):",
                  f"            raise TypeError('record field {name}: expected a JSON object')",
                  f"        _text = _dumps({name}, option=_SORT)",
                  f"        {name} = _loads(_text)",
                  f"        {name}_ = _text.decode()"]
    lines.append(f"        _fields[{name!r}] = {name}")
    return lines


def _build_check_columns() -> Any:
    # Straight-line code, one block per column: prepare() runs for every record on the event loop, and
    # a loop over a rule table cost about twice as much (the checks and messages are the same).
    stored = [f"{name}_" if rule in (_LIST, _OBJECT) else name for name, rule in _FIELD_RULES]
    body = ["def _check_columns(draft):", f"    ({', '.join(DRAFT_COLUMNS)},) = _read_draft_columns(draft)"]
    body += [f"    {name}_ = None" for name, rule in _FIELD_RULES if rule in (_LIST, _OBJECT)]
    body.append("    _fields = {'kind': draft.kind}")
    for name, rule in _FIELD_RULES:
        body += _check_source(name, rule)
    body.append(f"    return _fields, ({', '.join(stored)},)")
    namespace: dict[str, Any] = {
        "_read_draft_columns": _read_draft_columns, "_fullmatch_hex64": _HEX64.fullmatch,
        "_dumps": orjson.dumps, "_loads": orjson.loads, "_SORT": orjson.OPT_SORT_KEYS, "_Mapping": Mapping,
        "_encodable": _encodable,
    }
    exec(compile("\n".join(body), "<ledger record checks>", "exec"), namespace)  # noqa: S102 - constant source
    return namespace["_check_columns"]


_check_columns: Final = _build_check_columns()


def prepare(draft: RecordDraft, *, ledger_kind: bool = False) -> PreparedRecord:
    """Check a draft and encode it. Refuses a value that would not survive storage exactly, or a subject
    reference / digest that is not a keyed hash (so a raw identifier cannot slip in)."""
    kind = draft.kind
    if kind not in KINDS or (kind in LEDGER_KINDS) != ledger_kind:
        raise ValueError(f"record kind {kind!r} cannot be appended")
    fields, values = _check_columns(draft)
    return PreparedRecord(fields, values)


def seal_row(
    prepared: PreparedRecord, record_id: str, chain: str, sequence: int, time: str, prev_hash: str
) -> tuple[tuple[Any, ...], str]:
    """Fix an unsigned record's place in its chain: the row to store and its hash. The writer's per-record
    path (seal_prepared builds the same, plus the record mapping and an optional signature)."""
    fields = prepared.fields
    digest = _sha256(_dumps({
        "id": record_id, "chain": chain, "sequence": sequence, "time": time, "prev_hash": prev_hash, **fields,
    }, option=_SORT_KEYS)).hexdigest()
    return (record_id, chain, sequence, time, fields["kind"], prev_hash, digest, None, *prepared.values), digest


def seal_prepared(
    prepared: PreparedRecord,
    *,
    record_id: str,
    chain: str,
    sequence: int,
    time: str,
    prev_hash: str,
    signing_key: Ed25519PrivateKey | None = None,
) -> SealedRecord:
    """Fix a prepared record's place in its chain: add the header, hash it (and sign it when given a key)."""
    record: dict[str, Any] = {
        "id": record_id, "chain": chain, "sequence": sequence, "time": time, "prev_hash": prev_hash,
        **prepared.fields,
    }
    signature = None
    if signing_key is not None:
        signature = record["signature"] = sign_record(record, signing_key)
    digest = hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()
    record["hash"] = digest
    row = (record_id, chain, sequence, time, record["kind"], prev_hash, digest, signature, *prepared.values)
    return SealedRecord(row=row, record=record, hash=digest)


def seal(
    draft: RecordDraft,
    *,
    record_id: str,
    chain: str,
    sequence: int,
    time: str,
    prev_hash: str,
    signing_key: Ed25519PrivateKey | None = None,
) -> SealedRecord:
    """prepare() and seal_prepared() in one (for the ledger's own checkpoint and prune records)."""
    return seal_prepared(
        prepare(draft, ledger_kind=draft.kind in LEDGER_KINDS), record_id=record_id, chain=chain,
        sequence=sequence, time=time, prev_hash=prev_hash, signing_key=signing_key,
    )


def record_to_row(record: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(
        orjson.dumps(record[c], option=orjson.OPT_SORT_KEYS).decode() if c in JSON_COLUMNS and c in record
        else record.get(c)
        for c in COLUMNS
    )


def row_to_record(row: Sequence[Any]) -> dict[str, Any]:
    """Rebuild the record from stored columns, restoring types the storage may have widened."""
    record: dict[str, Any] = {}
    for name, value in zip(COLUMNS, row, strict=True):
        if value is None:
            continue
        if name in JSON_COLUMNS:
            value = orjson.loads(value)
        elif name == "cross_border" and type(value) is int and value in (0, 1):
            # SQLite stores booleans as 0/1; any other stored value is kept as is, so it fails the hash.
            value = bool(value)
        record[name] = value
    return record
