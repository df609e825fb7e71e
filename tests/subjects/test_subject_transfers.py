"""Transfer rules: the shipped rules reflect the source policies, and a bad rules file names file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.subjects.transfers import ISO_3166_ALPHA2, TransferRules

QXPRESS_CARRIER_COUNTRIES = ["TW", "MY", "US", "SG", "ID", "IN", "JP", "CN", "HK"]


@pytest.fixture(scope="module")
def shipped() -> TransferRules:
    return TransferRules.load(None)


def test_vietnamese_data_stays_in_vietnam(shipped: TransferRules) -> None:
    domestic = shipped.decide("VN", "carrier-vn-ghn", "VN")
    assert domestic.allowed
    assert not domestic.cross_border
    assert domestic.basis is None
    for abroad in ("US", "SG", "KR", "CN"):
        decision = shipped.decide("VN", "analytics-anywhere", abroad)
        assert not decision.allowed
        assert decision.cross_border
        assert decision.reason == "jurisdiction_not_allowed"


def test_vietnam_allows_only_the_partners_the_policy_names_abroad(shipped: TransferRules) -> None:
    google = shipped.decide("VN", "maps-google", "US")
    assert google.allowed
    assert google.cross_border
    assert google.basis is not None
    assert "3.5" in google.basis
    assert shipped.decide("VN", "browser-google", "US").allowed
    assert shipped.decide("VN", "maps-autonavi", "CN").allowed
    # A named partner is allowed only in the jurisdiction the rule lists for it.
    assert not shipped.decide("VN", "maps-google", "SG").allowed
    assert not shipped.decide("VN", "maps-autonavi", "US").allowed


@pytest.mark.parametrize("country", QXPRESS_CARRIER_COUNTRIES)
def test_korean_data_goes_to_the_qxpress_carrier_countries(shipped: TransferRules, country: str) -> None:
    decision = shipped.decide("KR", f"carrier-{country.lower()}", country)
    assert decision.allowed
    assert decision.cross_border
    assert decision.basis is not None
    assert "QXPRESS §3" in decision.basis


def test_korean_data_is_refused_outside_the_carrier_table(shipped: TransferRules) -> None:
    for country in ("VN", "DE", "RU", "BR"):
        assert not shipped.decide("KR", "carrier-x", country).allowed
    assert shipped.decide("KR", "carrier-kr-hanjin", "KR") == shipped.decide("KR", "other", "KR")
    assert not shipped.decide("KR", "carrier-kr-hanjin", "KR").cross_border


@pytest.mark.parametrize(
    ("residency", "jurisdiction", "reason"),
    [
        (None, "VN", "residency_unknown"),
        ("", "VN", "residency_unknown"),
        ("Vietnam", "VN", "residency_unknown"),
        ("XX", "XX", "residency_unknown"),  # not an assigned ISO code, even when "domestic"
        ("TH", "TH", "no_rule_for_residency"),  # a residency without a rule is refused, even domestic
        ("DE", "US", "no_rule_for_residency"),
        ("VN", "V1", "partner_jurisdiction_unknown"),
    ],
)
def test_unknown_or_uncovered_residency_is_refused(
    shipped: TransferRules, residency: str | None, jurisdiction: str, reason: str
) -> None:
    decision = shipped.decide(residency, "p", jurisdiction)
    assert not decision.allowed
    assert decision.reason == reason


def test_residency_is_case_and_space_insensitive(shipped: TransferRules) -> None:
    assert shipped.decide(" vn ", "p", "vn").allowed


def test_a_wildcard_rule_covers_residencies_without_their_own(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        'version: 1\nresidencies:\n  "*":\n    source: operator decision\n    allow: []\n'
        "  NO:\n    source: x\n    allow:\n      - {jurisdictions: [SE], basis: adequacy}\n",
        encoding="utf-8",
    )
    rules = TransferRules.load(path)
    assert rules.decide("TH", "p", "TH").allowed  # domestic under the wildcard
    assert not rules.decide("TH", "p", "US").allowed
    # "NO" (Norway) stays a string: the loader never lets YAML turn it into a boolean.
    assert rules.decide("NO", "p", "SE").basis == "adequacy"


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("version: 2\nresidencies: {}\n", 1, "expected version: 1"),
        ("version: 1\nresidencies:\n  VN:\n    allow: []\n", 4, "missing key source"),
        ("version: 1\nresidencies:\n  Viet Nam:\n    source: s\n", 4, "ISO 3166-1"),
        ("version: 1\nresidencies:\n  VN:\n    source: s\n    allow:\n      - {jurisdictions: [ZZ], basis: b}\n",
         6, "'ZZ' is not an ISO 3166-1 alpha-2 code"),
        ("version: 1\nresidencies:\n  VN:\n    source: s\n    allow:\n      - {jurisdictions: [US]}\n",
         6, "missing key basis"),
        ("version: 1\nresidencies:\n  VN:\n    source: s\n    partners:\n      p: {jurisdictions: [], basis: b}\n",
         6, "at least one jurisdiction"),
        ("version: 1\nresidencies:\n  VN:\n    source: s\n    alow: []\n", 4, "unknown key(s) alow"),
        ("version: 1\nresidencies:\n  VN: {source: a}\n  VN: {source: b}\n", 4, "duplicate key 'VN'"),
        ("version: 1\nresidencies: [\n", None, "not valid YAML"),
    ],
)
def test_a_bad_rules_file_names_file_line_and_reason(
    tmp_path: Path, text: str, line: int | None, needle: str
) -> None:
    path = tmp_path / "bad-rules.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        TransferRules.load(path)
    message = str(info.value)
    assert str(path) in message
    assert needle in message
    if line is not None:
        assert f"{path}:{line}:" in message


def test_a_missing_rules_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        TransferRules.load(tmp_path / "absent.yaml")


def test_chinese_platform_data_stays_with_partners_in_china(shipped: TransferRules) -> None:
    assert shipped.decide("CN", "customs-cn-declaration", "CN").allowed
    assert not shipped.decide("CN", "carrier-us-ups", "US").allowed


def test_the_policy_home_countries_pass_domestically(shipped: TransferRules) -> None:
    """VN (000, 001), KR (002, 003) and CN (004) each have a rule, so their domestic transfers pass."""
    for country in ("VN", "KR", "CN"):
        assert shipped.decide(country, "any-partner", country).allowed


def test_repeated_decisions_are_the_same_and_rules_do_not_share_them() -> None:
    shipped = TransferRules.load()
    fresh = [shipped._decide(home, "courier-x", "US") for home in sorted(ISO_3166_ALPHA2)]
    for _ in range(2):
        assert [shipped.decide(home, "courier-x", "US") for home in sorted(ISO_3166_ALPHA2)] == fresh
    # Another rule set (a reload) decides from its own rules, not from the first one's answers.
    nothing_allowed = TransferRules.parse('version: 1\nresidencies:\n  "*":\n    source: "test"\n')
    assert nothing_allowed.decide("KR", "courier-x", "US").reason == "jurisdiction_not_allowed"
    assert shipped.decide("KR", "courier-x", "US") == shipped._decide("KR", "courier-x", "US")
    assert shipped.decide(" kr ", "courier-x", "US") == shipped.decide("KR", "courier-x", "US")
    assert shipped.decide("XX", "courier-x", "US").reason == "residency_unknown"
