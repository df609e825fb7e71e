"""Decoding of the per-request status row: reused values are exactly what the row says, never a cache."""

from __future__ import annotations

import itertools
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.keys import LedgerKeys
from gateway.subjects import registry
from gateway.subjects.model import SubjectStatus


def test_every_row_shape_decodes_to_its_fields() -> None:
    for on_hold, reason, minor, guardian, granted in itertools.product(
        (None, 0, 1), (None, "dispute"), (None, 0, 1), (None, 0, 1), (None, 0, 1)
    ):
        row = (on_hold, reason, minor, guardian, granted)
        expected = SubjectStatus(
            consent_granted=None if granted is None else bool(granted), on_hold=bool(on_hold),
            hold_reason=reason, minor=bool(minor), guardian_consent=bool(guardian),
        )
        assert registry._status_of_row(row) == expected
        assert registry._status_of_row(row) == expected  # second time from the reuse map


def test_reuse_map_stays_bounded() -> None:
    for n in range(registry._STATUS_BY_ROW_MAX * 3):
        status = registry._status_of_row((1, f"reason-{n}", 0, 0, None))
        assert status.hold_reason == f"reason-{n}"
    assert len(registry._STATUS_BY_ROW) <= registry._STATUS_BY_ROW_MAX


def test_unknown_subject_is_the_empty_status() -> None:
    assert SubjectStatus.unknown_subject() == SubjectStatus(
        consent_granted=None, on_hold=False, hold_reason=None, minor=False, guardian_consent=False
    )


async def test_status_without_a_purpose_reads_the_same_row_as_the_joined_query(tmp_path: Path) -> None:
    signing = Ed25519PrivateKey.generate()
    keys = LedgerKeys(hmac_key=b"\x07" * 32, signing_key=signing, verify_key=signing.public_key())
    reg = registry.SqliteSubjectRegistry(tmp_path / "ledger.sqlite3", keys)
    await reg.start()
    try:
        refs = [keys.subject_ref(f"subject-{n}") for n in range(5)]
        await reg.grant_consent(refs[1], "marketing", source="test")
        await reg.place_hold(refs[2], "dispute", source="test")
        await reg.set_minor(refs[3], True, False, source="test")
        await reg.set_minor(refs[4], True, True, source="test")
        await reg.withdraw_consent(refs[4], "marketing", source="test")
        reader = reg._reader
        assert reader is not None
        for ref in refs:
            joined = reader.execute(registry._SQLITE_STATUS, (ref, None)).fetchone()
            state = reader.execute(registry._SQLITE_STATE, (ref,)).fetchone()
            assert joined == (registry._NO_STATE_ROW if state is None else (*state, None))
            assert await reg.status(ref, None) == registry._status_of_row(joined)
        assert (await reg.status(refs[2], None)).on_hold
        assert (await reg.status(refs[4], "marketing")).consent_granted is False
    finally:
        await reg.close()
