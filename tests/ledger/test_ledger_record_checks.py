"""prepare() checks every draft column by its type and refuses what would not survive storage exactly,
or a subject reference / digest that is not a keyed hash; what it accepts is encoded as stored."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.ledger.records import DRAFT_COLUMNS, RecordDraft, prepare

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("caller", 5, TypeError),
        ("reason", b"bytes", TypeError),
        ("subject_ref", "A" * 64, ValueError),
        ("subject_ref", "01012345678", ValueError),
        ("body_digest", HEX + "0", ValueError),
        ("body_digest", 7, ValueError),
        ("fields_sent", "claim.amount", TypeError),
        ("fields_dropped", ["ok", 3], TypeError),
        ("fields_transformed", 5, TypeError),
        ("request_id", "r\x00", ValueError),
        ("reason", "\x00", ValueError),
        ("reason", "lone \ud800 surrogate", ValueError),
        ("cross_border", 1, TypeError),
        ("status", True, TypeError),
        ("attempt", 1.0, TypeError),
        ("latency_ms", "1.5", TypeError),
        ("detail", ["not", "an", "object"], TypeError),
    ],
)
def test_each_column_refuses_a_wrong_type(field: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=field if field != "fields_transformed" else "iterable"):
        prepare(RecordDraft(kind="outcome", **{field: value}))


def test_accepted_values_are_hashed_and_stored_as_the_verifier_rebuilds_them() -> None:
    prepared = prepare(RecordDraft(
        kind="disclosure", caller="svc", subject_ref=HEX, body_digest=HEX, fields_sent=("b", "a"),
        fields_transformed=["a"], cross_border=False, status=201, latency_ms=3, attempt=2,
        detail={"z": (1, 2), "a": {"y": 1, "b": 2}},
    ))
    assert prepared.fields == {
        "kind": "disclosure", "caller": "svc", "subject_ref": HEX, "body_digest": HEX, "fields_sent": ["b", "a"],
        "fields_transformed": ["a"], "cross_border": False, "status": 201, "latency_ms": 3.0, "attempt": 2,
        "detail": {"a": {"b": 2, "y": 1}, "z": [1, 2]},
    }
    assert type(prepared.fields["latency_ms"]) is float
    stored = dict(zip(DRAFT_COLUMNS, prepared.values, strict=True))
    assert stored["fields_sent"] == '["b","a"]'
    assert stored["fields_dropped"] is None
    assert stored["detail"] == orjson.dumps({"a": {"b": 2, "y": 1}, "z": [1, 2]}).decode()
    assert stored["latency_ms"] == 3.0
    assert [c for c, v in stored.items() if v is not None] == [
        "caller", "cross_border", "subject_ref", "fields_sent", "fields_transformed", "body_digest", "status",
        "latency_ms", "attempt", "detail",
    ]


def test_a_sealed_row_hash_is_the_sha256_of_the_canonical_record_every_time() -> None:
    """seal_row (the writer's fast path) and record_hash (what verify recomputes) agree with hashlib's own
    SHA-256 of the canonical record, record after record along a chain."""
    import hashlib

    from gateway.ledger.records import canonical, record_hash, row_to_record, seal_row

    prev = "0" * 64
    for sequence in range(1, 4):
        prepared = prepare(RecordDraft(kind="outcome", partner="acme", request_id=f"r-{sequence}", status=200))
        row, digest = seal_row(prepared, f"{sequence:032x}", "w0", sequence, "2026-12-07T00:00:00Z", prev)
        record = row_to_record(row)
        expected = hashlib.sha256(canonical(record)).hexdigest()
        assert digest == expected == record_hash(record)
        prev = digest
