"""check_subject and check_legal_reference: every branch, without a registry or a server."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.errors import (
    ConsentRequired,
    GatewayError,
    IdentifierInFreeText,
    LegalReferenceRequired,
    MinorWithoutGuardianConsent,
    SubjectOnHold,
    TransferNotAllowed,
)
from gateway.subjects.checks import check_legal_reference, check_subject
from gateway.subjects.model import SubjectStatus
from gateway.subjects.transfers import TransferDecision


@dataclass(frozen=True)
class FakeRoute:
    consent_purpose: str | None = None
    essential: bool = True
    allowed_during_hold: bool = False
    legal_reference_required: bool = False


CLEAR = SubjectStatus.unknown_subject()
ALLOWED_ABROAD = TransferDecision(True, True, "QXPRESS §3")
REFUSED = TransferDecision(False, True, None, "jurisdiction_not_allowed")


def status(**changes: object) -> SubjectStatus:
    values: dict[str, object] = {
        "consent_granted": None, "on_hold": False, "hold_reason": None, "minor": False, "guardian_consent": False
    }
    values.update(changes)
    return SubjectStatus(**values)  # type: ignore[arg-type]


def refusal(route: FakeRoute, subject: SubjectStatus, transfer: TransferDecision | None) -> GatewayError | None:
    try:
        check_subject(route, subject, transfer)
    except GatewayError as exc:
        return exc
    return None


def test_a_clear_subject_passes() -> None:
    assert refusal(FakeRoute(), CLEAR, None) is None
    assert refusal(FakeRoute(), CLEAR, ALLOWED_ABROAD) is None


def test_consent_route_needs_a_current_grant() -> None:
    route = FakeRoute(consent_purpose="location")
    missing = refusal(route, status(consent_granted=None), None)
    withdrawn = refusal(route, status(consent_granted=False), None)
    assert isinstance(missing, ConsentRequired)
    assert missing.reason == "consent_missing"
    assert missing.status == 403
    assert isinstance(withdrawn, ConsentRequired)
    assert withdrawn.reason == "consent_withdrawn"
    assert "location" in withdrawn.detail
    assert refusal(route, status(consent_granted=True), None) is None


def test_route_without_consent_purpose_ignores_consent_state() -> None:
    assert refusal(FakeRoute(consent_purpose=None), status(consent_granted=False), None) is None


def test_hold_refuses_unless_route_allowed_during_hold() -> None:
    held = status(on_hold=True, hold_reason="correction_pending")
    exc = refusal(FakeRoute(), held, None)
    assert isinstance(exc, SubjectOnHold)
    assert exc.status == 403
    assert exc.reason == "subject_on_hold"
    assert "correction_pending" not in exc.detail  # the reason is for the registry, not the caller
    assert refusal(FakeRoute(allowed_during_hold=True), held, None) is None


def test_hold_is_checked_before_consent() -> None:
    exc = refusal(FakeRoute(consent_purpose="marketing"), status(on_hold=True, consent_granted=False), None)
    assert isinstance(exc, SubjectOnHold)


def test_allowed_during_hold_still_needs_consent_and_transfer() -> None:
    route = FakeRoute(allowed_during_hold=True, consent_purpose="delivery-updates")
    assert isinstance(refusal(route, status(on_hold=True), None), ConsentRequired)
    assert isinstance(refusal(route, status(on_hold=True, consent_granted=True), REFUSED), TransferNotAllowed)


def test_minor_without_guardian_consent_only_on_essential_routes() -> None:
    minor = status(minor=True, guardian_consent=False)
    exc = refusal(FakeRoute(essential=False), minor, None)
    assert isinstance(exc, MinorWithoutGuardianConsent)
    assert exc.status == 403
    assert refusal(FakeRoute(essential=True), minor, None) is None
    assert refusal(FakeRoute(essential=False), status(minor=True, guardian_consent=True), None) is None
    assert refusal(FakeRoute(essential=False), status(minor=False), None) is None


def test_disallowed_transfer_is_451_with_its_reason() -> None:
    exc = refusal(FakeRoute(), CLEAR, REFUSED)
    assert isinstance(exc, TransferNotAllowed)
    assert exc.status == 451
    assert exc.reason == "jurisdiction_not_allowed"
    unknown = refusal(FakeRoute(), CLEAR, TransferDecision(False, False, None, "residency_unknown"))
    assert isinstance(unknown, TransferNotAllowed)
    assert "residency" in unknown.detail
    # A refusal without a reason label still refuses.
    assert isinstance(refusal(FakeRoute(), CLEAR, TransferDecision(False, True, None)), TransferNotAllowed)


def test_legal_reference_is_required_only_where_the_route_says() -> None:
    legal = FakeRoute(legal_reference_required=True)
    with pytest.raises(LegalReferenceRequired) as missing:
        check_legal_reference(legal, None)
    assert missing.value.reason == "legal_reference_missing"
    with pytest.raises(LegalReferenceRequired):
        check_legal_reference(legal, "   ")
    assert check_legal_reference(legal, "  Subpoena 2024-CR-00123 ") == "Subpoena 2024-CR-00123"
    assert check_legal_reference(legal, "2024고단1234") == "2024고단1234"  # Korean case numbers use Hangul
    assert check_legal_reference(FakeRoute(), None) is None
    assert check_legal_reference(FakeRoute(), "\x00bad") is None  # ignored, not recorded, off legal routes


@pytest.mark.parametrize(
    "value",
    ["ab", "x" * 201, "case\x00number", "case\nnumber", "case\u200bnumber", "----", "bad\udc80byte", "\t\t\t"],
)
def test_implausible_legal_references_are_refused(value: str) -> None:
    with pytest.raises(LegalReferenceRequired):
        check_legal_reference(FakeRoute(legal_reference_required=True), value)


def test_longest_plausible_reference_is_accepted() -> None:
    assert check_legal_reference(FakeRoute(legal_reference_required=True), "A" * 200) == "A" * 200


def test_a_reference_off_legal_routes_is_ignored_never_recorded() -> None:
    """Privacy review F7: on a route that needs no reference the header is caller-chosen free text that
    would be stored raw in the append-only ledger; it is not read at all."""
    assert check_legal_reference(FakeRoute(), "Subpoena 2024-CR-00123") is None
    assert check_legal_reference(FakeRoute(), "kim.leak@example.com +886912345678") is None


@pytest.mark.parametrize(("value", "kinds"), [
    ("Case 2024-CR-1 re kim.leak@example.com", "email"),
    ("Subpoena for +886912345678", "phone"),
    ("Warrant 7 device 490154203237518", "imei"),
    ("kim.leak@example.com +886912345678", "email, phone"),
])
def test_a_reference_holding_an_identifier_is_refused_naming_only_its_kind(value: str, kinds: str) -> None:
    with pytest.raises(IdentifierInFreeText) as refused:
        check_legal_reference(FakeRoute(legal_reference_required=True), value)
    exc = refused.value
    assert (exc.status, exc.reason) == (422, "legal_reference_identifier")
    assert [(v.path, v.reason) for v in exc.violations] == [("header:X-Legal-Reference",
                                                            f"holds an identifier: {kinds}")]
    problem = str(exc.to_problem())
    for part in value.split():
        if (any(ch.isdigit() for ch in part) and len(part) > 8) or "@" in part:
            assert part not in problem


@pytest.mark.parametrize("value", [
    "Warrant 2024-000123-4567-89",
    "Case 2024-12-24 - 2024-12-31",
    "Ref 2024 0001 2345 678",
    "Case 2024-SEOUL-CYB-00817",
    "Case 901301-1234567",  # month 13: no birth date
    "Case 900101-9234567",  # serial not starting 1-8
    "EAN 9001011234567",  # undashed: 13 digits are as often a barcode
])
def test_imsi_shaped_case_numbers_are_accepted(value: str) -> None:
    """rv-privacy F7: year-led case numbers of 14-15 digits pass the IMSI check (no check digit); the
    gate refuses only the kinds a case number does not look like (e-mail, phone, IMEI, ICCID, MAC)."""
    assert check_legal_reference(FakeRoute(legal_reference_required=True), value) == value


@pytest.mark.parametrize(("value", "kinds"), [
    ("Case 2024-SEOUL-CYB-00817 re kim.minjun@example.com...subpoena", "email"),
    ("Case 2024-55 tel +82 10    5550 1234", "phone"),
    ("Case 2024-55 device ID:00:1A:2B:3C:4D:5E", "mac"),
    ("Ref 20 24 4901 5420 3237 518", "imei"),
    ("Case 7 sim 8984040000123456781", "iccid"),
    ("Case 2024-55 re RRN 900101-1234567", "rrn"),
    ("Case 2024-55 re 900101 \u2013 2234567", "rrn"),
    ("\uc0ac\uac74 2024\uace0\ub2e81234 \uc8fc\ubbfc\ubc88\ud638 851231-5234567 kim@example.com", "email, rrn"),
])
def test_rv_privacy_spellings_in_a_reference_are_refused(value: str, kinds: str) -> None:
    with pytest.raises(IdentifierInFreeText) as refused:
        check_legal_reference(FakeRoute(legal_reference_required=True), value)
    assert [v.reason for v in refused.value.violations] == [f"holds an identifier: {kinds}"]
