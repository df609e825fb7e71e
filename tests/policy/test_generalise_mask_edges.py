"""The edges of `generalise` and `mask` (review-transforms F7): bounds an author cannot go below (location
at most 3 decimals, age bands of at least 5 years), strict input (coordinates in range and in plain
decimals, ISO 8601 dates with real days and times and ASCII digits) and a mask that never shows most of a
short value nor any value's length. Both the reference engine and the generated walk call the same
functions; each edge case is run through both and must give the same answer."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError, SchemaViolation
from gateway.policy import ActionError, CompiledRoutePolicy, RoutePolicySpec, parse_action
from gateway.policy.actions import (
    MASK_WIDTH,
    MAX_LOCATION_DECIMALS,
    MIN_AGE_BAND,
    MIN_MASKED,
    NotGeneralisable,
    date_generaliser,
    generalise_date,
    generalise_location,
    mask_value,
)
from gateway.policy.codegen import GeneratedRoute
from gateway.pseudonyms import PartnerKeyring, Pseudonymiser

BINDER = Pseudonymiser(PartnerKeyring(bytes(range(50, 82))))


def refused(call: Any) -> bool:
    try:
        call()
    except NotGeneralisable:
        return True
    return False


# --- the loader's bounds ---------------------------------------------------------------------------------

@pytest.mark.parametrize("decimals", [4, 5, 6])
def test_location_beyond_3_decimals_is_refused(decimals: int) -> None:
    with pytest.raises(ActionError, match="at most 3 decimals"):
        parse_action({"generalise": {"location": decimals}})


@pytest.mark.parametrize("band", [1, 2, 4])
def test_age_bands_below_5_years_are_refused(band: int) -> None:
    with pytest.raises(ActionError, match="age_band must be an integer from 5 to 100"):
        parse_action({"generalise": {"age_band": band}})


def test_the_bounds_themselves_are_accepted() -> None:
    assert MAX_LOCATION_DECIMALS == 3
    assert MIN_AGE_BAND == 5
    assert parse_action({"generalise": {"location": 3}}).location_decimals == 3  # type: ignore[union-attr]
    assert parse_action({"generalise": {"age_band": 5}}).age_band == 5  # type: ignore[union-attr]


# --- location -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    {"lat": 1234.5, "lon": 10.0}, {"lat": 90.0001, "lon": 0}, {"latitude": -91, "longitude": 0},
    {"lat": 0, "lon": 180.5}, {"lat": 0, "lng": -181}, [91, 0], [0, 200], "95.1,10", "10,-180.01", 181, -999.9,
    "1_0.5,2", "3.756651e1,1.2697801e2", "inf,0", "37.5,NaN", "\u0663\u0667.5,10", "+37.5,10", "37.5,10,",
    "37.5;127", "37.,127", ".5,127",
])
def test_location_out_of_range_or_not_plain_decimals_is_refused(value: Any) -> None:
    assert refused(lambda: generalise_location(value, 2))


@pytest.mark.parametrize(("value", "expected"), [
    ({"lat": 90, "lon": -180}, {"lat": 90.0, "lon": -180.0}),
    ({"latitude": -89.99951, "longitude": 179.99951}, {"latitude": -90.0, "longitude": 180.0}),
    ([-33.86882, 151.209296], [-33.869, 151.209]),
    (" 37.56651 , 126.97801 ", "37.567,126.978"),
    ("-0.0001,-0.0004", "0.000,0.000"),
    (179.9, 179.9),
])
def test_location_in_range_is_rounded(value: Any, expected: Any) -> None:
    assert generalise_location(value, 3) == expected


coordinate_pairs = st.tuples(st.floats(-90, 90), st.floats(-180, 180))


@settings(max_examples=300, deadline=None)
@given(coordinate_pairs, st.integers(0, MAX_LOCATION_DECIMALS))
def test_a_generalised_location_is_in_range_and_has_at_most_n_decimals(pair: tuple[float, float],
                                                                      decimals: int) -> None:
    lat, lon = pair
    for value in ({"lat": lat, "lon": lon}, [lat, lon], f"{lat:.6f},{lon:.6f}"):
        out = generalise_location(value, decimals)
        numbers = [float(x) for x in out.split(",")] if isinstance(out, str) else (
            list(out.values()) if isinstance(out, dict) else out)
        assert -90 <= numbers[0] <= 90
        assert -180 <= numbers[1] <= 180
        assert all(math.isclose(n, round(n, decimals), abs_tol=1e-9) for n in numbers)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True))
def test_any_pair_out_of_range_is_refused(lat: float, lon: float) -> None:
    valid = math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180
    assert refused(lambda: generalise_location({"lat": lat, "lon": lon}, 2)) is not valid
    assert refused(lambda: generalise_location([lat, lon], 2)) is not valid


# --- date -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "2024-02-30", "2023-02-29", "2024-02-99", "2024-04-31", "2024-01-00", "2024-00-10", "2024-13-01",
    "2024-01-15T99:99", "2024-01-15T24:00", "2024-01-15T10:60", "2024-01-15T", "2024-01-15T10",
    "2024-01-15T10:00:61", "2024-01-15T10:00Zjunk", "2024-01-15T10:00+25:00", "2024-01-15 hello",
    "\u0662\u0660\u0662\u0664-\u0660\u0661-\u0661\u0665", "2024-01-1\u0665", "\uff12\uff10\uff12\uff14-01-15",
    "2024-01-15\n", "2024", "2024-1-5", "15/01/2024", "2100-02-29",
])
def test_dates_that_are_not_iso_8601_calendar_dates_are_refused(value: str) -> None:
    for precision in ("month", "year"):
        assert refused(lambda: generalise_date(value, precision))  # noqa: B023 - called at once
        assert refused(lambda: date_generaliser(precision)(value))  # noqa: B023


@pytest.mark.parametrize(("value", "month"), [
    ("2024-02-29", "2024-02"), ("2000-02-29", "2000-02"), ("2024-01-31", "2024-01"), ("2024-12-31", "2024-12"),
    ("2024-01", "2024-01"), ("2024-01-31T23:30:00-05:00", "2024-01"), ("2024-01-15T10:00Z", "2024-01"),
    ("2024-01-15 10:00:00.123456", "2024-01"), ("2016-12-31T23:59:60Z", "2016-12"),
    ("2024-06-01T00:00+0530", "2024-06"), ("0000-02-29", "0000-02"),
])
def test_real_dates_and_date_times_are_cut(value: str, month: str) -> None:
    assert generalise_date(value, "month") == month
    assert generalise_date(value, "year") == month[:4]
    assert date_generaliser("month")(value) == month


@settings(max_examples=300, deadline=None)
@given(st.dates() | st.datetimes().map(lambda d: d.isoformat(timespec="seconds")) | st.datetimes(
    timezones=st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: dt.timezone(dt.timedelta(minutes=m))),
).map(lambda d: d.isoformat(timespec="minutes")) | st.datetimes().map(lambda d: d.isoformat(sep=" ")))
def test_every_python_iso_date_or_date_time_is_accepted(value: Any) -> None:
    text = str(value)
    assert generalise_date(text, "month") == text[:7]
    assert date_generaliser("year")(text) == text[:4]


@settings(max_examples=500, deadline=None)
@given(st.text("0123456789-T:Z +.\u0663", min_size=7, max_size=26))
def test_an_accepted_date_is_ascii_and_names_a_real_day(value: str) -> None:
    try:
        out = generalise_date(value, "month")
    except NotGeneralisable:
        return
    assert value.isascii()
    assert out == value[:7]
    if len(value) >= 10 and value[:4] != "0000":
        dt.date.fromisoformat(value[:10])  # raises on a day the month does not have


# --- mask -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "keep_last", "expected"), [
    ("4111111111111111", 4, "********1111"),
    ("+821012345678", 4, "********5678"),
    ("12345678", 4, "********5678"),  # 4 hidden, 4 kept: the least that shows anything
    ("1234567", 4, "************"),  # 3 hidden: fully masked
    ("12345", 4, "************"),  # a Korean postal code is not shown but for one digit
    ("1234", 4, "************"),
    ("", 4, "************"),
    (12345, 0, "********"),
    ("abcde", 1, "********e"),  # 4 hidden, 1 kept
    ("abcd", 1, "*********"),
    ("abcdefgh", 6, "**************"),  # 2 hidden < 6 kept
])
def test_mask_shows_the_tail_only_when_enough_is_hidden(value: Any, keep_last: int, expected: str) -> None:
    assert mask_value(value, keep_last, "*") == expected


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=40) | st.integers(-(10**20), 10**20), st.integers(0, 12))
def test_mask_output_has_a_fixed_length_and_shows_at_most_the_tail(value: Any, keep_last: int) -> None:
    out = mask_value(value, keep_last, "#")
    text = str(value)
    assert len(out) == MASK_WIDTH + keep_last
    assert out[:MASK_WIDTH] == "#" * MASK_WIDTH
    shown = out[MASK_WIDTH:]
    enough_hidden = keep_last > 0 and len(text) - keep_last >= max(keep_last, MIN_MASKED)
    assert shown == "#" * keep_last or (enough_hidden and shown == text[-keep_last:])
    # Only the tail decides the output: a far longer value with the same tail gives the same answer.
    if enough_hidden:
        assert mask_value("x" * 50 + text[-keep_last:], keep_last, "#") == out


# --- the generated walk agrees with the reference engine ---------------------------------------------

SPEC = RoutePolicySpec(request_body={
    "loc": parse_action({"generalise": {"location": 3}}),
    "born": parse_action({"generalise": {"date": "month"}}),
    "seen": parse_action({"generalise": {"date": "year"}}),
    "age": parse_action({"generalise": {"age_band": 5}}),
    "card": parse_action({"mask": {"keep_last": 4}}),
})
POLICY = CompiledRoutePolicy(SPEC, partner_id="p", pseudonymiser=BINDER)
REFERENCE = CompiledRoutePolicy(SPEC, partner_id="p", pseudonymiser=BINDER)
REFERENCE._generated = GeneratedRoute(None, None, None, ())  # type: ignore[misc]

# (field, value, refused?)
EDGES: list[tuple[str, Any, bool]] = [
    ("loc", {"lat": 1234.5, "lon": 1}, True), ("loc", [0, 181], True), ("loc", "95,10", True),
    ("loc", "1_0.5,2", True), ("loc", -180.0001, True), ("loc", {"lat": 37.56651, "lon": 126.97801}, False),
    ("loc", "37.56651,126.97801", False), ("loc", 180.0, False),
    ("born", "2024-02-30", True), ("born", "2023-02-29", True), ("born", "2024-01-15T99:99", True),
    ("born", "\u0662\u0660\u0662\u0664-01-15", True), ("born", "2024-02-29", False), ("born", "2024-01-31", False),
    ("born", "2024-01-28", False), ("born", "2024-01-15T10:00:00+09:00", False),
    ("seen", "2024-04-31", True), ("seen", "2024-01-15T", True), ("seen", "2024-04-30", False),
    ("age", 200, True), ("age", -1, True), ("age", 34, False), ("age", 0, False), ("age", 199, False),
    ("card", "12345", False), ("card", "12345678", False), ("card", "4111111111111111", False), ("card", 123, False),
    ("card", "", False),
]


def outcome(policy: CompiledRoutePolicy, body: Any) -> Any:
    try:
        result = policy.minimise_request(body, (), {}, {})
    except GatewayError as exc:
        return ("refused", type(exc).__name__, [v.path for v in exc.violations])
    return ("ok", result.body, result.canonical_body())


@pytest.mark.parametrize(("field", "value", "refusal"), EDGES)
def test_generated_walk_agrees_with_the_reference_on_the_edges(field: str, value: Any, refusal: bool) -> None:
    assert POLICY.generated.walk is not None
    got = outcome(POLICY, {field: value})
    assert got == outcome(REFERENCE, {field: value})
    if refusal:
        assert got == ("refused", SchemaViolation.__name__, [field])
    else:
        assert got[0] == "ok"
