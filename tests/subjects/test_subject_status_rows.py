"""Decoding of the per-request status row: reused values are exactly what the row says, never a cache."""

from __future__ import annotations

import itertools

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
