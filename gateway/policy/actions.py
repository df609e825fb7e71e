"""Field actions as declared in a profile (`keep`, `drop`, `pseudonymise`, ...), parsed into frozen values,
and the pure value transforms behind `generalise` and `mask`.

Parsing is separate from compiling (gateway/policy/engine.py) so the loader can report a bad action with
its file and line before anything is bound to a key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

ID_TYPES = ("imei", "imsi", "iccid", "mac", "android_id", "advertising_id", "phone", "email", "token")
MODES = ("hmac", "fpe")
LOCATION_KEYS = ("lat", "lon", "lng", "latitude", "longitude")
# 3 decimals is a cell of about 110 m of latitude; 4 (11 m) and more locate a house, which is not a
# generalisation. The shipped profiles use 2 (about 1 km) and 3.
MAX_LOCATION_DECIMALS = 3
# A band narrower than 5 years is (nearly) the exact age.
MIN_AGE_BAND = 5
# A mask shows the last `keep_last` characters only when at least this many, and at least `keep_last`,
# characters are hidden; otherwise it hides everything (a 5-digit postal code under keep_last 4 would show
# all but one digit).
MIN_MASKED = 4
# A masked value is always this many mask characters followed by the kept characters (or by as many mask
# characters again), so the output never tells the value's length.
MASK_WIDTH = 8


@dataclass(frozen=True, slots=True)
class Keep:
    free_text: bool = False
    # The profile author's explicit statement that the kept node may hold keys (or elements) its route
    # schema does not declare, and that these reach the partner as they come. Without it the loader refuses
    # a keep whose schema does not close the node (gateway/profiles/loader.py `_unclosed_keeps`).
    open_subtree: bool = False


@dataclass(frozen=True, slots=True)
class Drop:
    pass


@dataclass(frozen=True, slots=True)
class Pseudonymise:
    id_type: str
    mode: Literal["hmac", "fpe"]


@dataclass(frozen=True, slots=True)
class Generalise:
    """Exactly one of the three is set."""

    location_decimals: int | None = None
    date_precision: Literal["month", "year"] | None = None
    age_band: int | None = None


@dataclass(frozen=True, slots=True)
class Mask:
    keep_last: int
    char: str = "*"


@dataclass(frozen=True, slots=True)
class Reidentify:
    id_type: str


FieldAction = Keep | Drop | Pseudonymise | Generalise | Mask | Reidentify


class ActionError(ValueError):
    """A field action that cannot be understood; the message says why (no values)."""


def _only_key(raw: dict[Any, Any]) -> tuple[str, Any]:
    if len(raw) != 1:
        raise ActionError("an action is one of keep, drop, pseudonymise, generalise, mask, reidentify")
    ((name, options),) = raw.items()
    return str(name), options


def _int_option(options: dict[Any, Any], key: str, low: int, high: int) -> int:
    value = options.get(key)
    if type(value) is not int or not low <= value <= high:
        raise ActionError(f"{key} must be an integer from {low} to {high}")
    return value


def parse_action(raw: Any) -> FieldAction:
    """One action from its profile form; raises `ActionError` with a reason."""
    if raw == "keep":
        return Keep()
    if raw == "drop":
        return Drop()
    if not isinstance(raw, dict):
        raise ActionError("an action is `keep`, `drop` or a one-key mapping such as {pseudonymise: {...}}")
    name, options = _only_key(raw)
    if name == "keep":
        if options is None:
            return Keep()
        if not isinstance(options, dict) or set(options) - {"free_text", "open_subtree"} or not all(
                isinstance(options.get(flag, False), bool) for flag in ("free_text", "open_subtree")):
            raise ActionError("keep takes only {free_text: true|false, open_subtree: true|false}")
        return Keep(free_text=bool(options.get("free_text", False)),
                    open_subtree=bool(options.get("open_subtree", False)))
    if not isinstance(options, dict):
        raise ActionError(f"{name} needs a mapping of options")
    if name == "pseudonymise":
        id_type, mode = options.get("type"), options.get("mode", "hmac")
        if id_type not in ID_TYPES:
            raise ActionError(f"pseudonymise type must be one of {', '.join(ID_TYPES)}")
        if mode not in MODES:
            raise ActionError("pseudonymise mode must be hmac or fpe")
        return Pseudonymise(id_type=id_type, mode=mode)
    if name == "reidentify":
        if options.get("type") not in ID_TYPES or set(options) != {"type"}:
            raise ActionError(f"reidentify takes {{type: T}} with T one of {', '.join(ID_TYPES)}")
        return Reidentify(id_type=options["type"])
    if name == "generalise":
        if len(options) != 1:
            raise ActionError("generalise takes exactly one of location, date, age_band")
        if "location" in options:
            if type(options["location"]) is int and options["location"] > MAX_LOCATION_DECIMALS:
                raise ActionError(f"generalise location keeps at most {MAX_LOCATION_DECIMALS} decimals (about 110 m); "
                                  "more would not generalise")
            return Generalise(location_decimals=_int_option(options, "location", 0, MAX_LOCATION_DECIMALS))
        if "date" in options:
            if options["date"] not in ("month", "year"):
                raise ActionError("generalise date must be month or year")
            return Generalise(date_precision=options["date"])
        if "age_band" in options:
            return Generalise(age_band=_int_option(options, "age_band", MIN_AGE_BAND, 100))
        raise ActionError("generalise takes exactly one of location, date, age_band")
    if name == "mask":
        if set(options) - {"keep_last", "char"}:
            raise ActionError("mask takes keep_last and optionally char")
        char = options.get("char", "*")
        if not isinstance(char, str) or len(char) != 1:
            raise ActionError("mask char must be a single character")
        return Mask(keep_last=_int_option(options, "keep_last", 0, 64), char=char)
    raise ActionError(f"unknown action {name!r}; use keep, drop, pseudonymise, generalise, mask or reidentify")


class NotGeneralisable(ValueError):
    """The value has the wrong shape for the generalisation; the message is a reason without the value."""


# ISO 8601 calendar date `YYYY-MM-DD` (or `YYYY-MM`), optionally with a time `hh:mm[:ss[.fff]]` after `T`
# (or a space, as RFC 3339 allows) and a zone `Z` / `+hh:mm` / `+hhmm` / `+hh`; ASCII digits only, every
# field in range (the day is checked against the month's length after the match).
_DATE = re.compile(
    r"([0-9]{4})-(0[1-9]|1[0-2])"
    r"(?:-([0-9]{2})"
    r"(?:[T ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::(?:[0-5][0-9]|60)(?:[.,][0-9]{1,9})?)?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3])(?::?[0-5][0-9])?)?)?)?\Z"
)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_in_month(year: int, month: int) -> int:
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return 29
    return _DAYS_IN_MONTH[month - 1]


# A coordinate in a "lat,lon" string: plain decimal notation, ASCII digits, optional minus, surrounding
# spaces allowed (not Python's float syntax: no `1_0`, exponent, `inf`, other scripts' digits).
_COORDINATE = re.compile(r" *(-?[0-9]{1,3}(?:\.[0-9]+)?) *\Z")
_LATITUDE_KEYS = frozenset({"lat", "latitude"})


def _round_coordinate(value: Any, decimals: int, limit: float) -> float:
    """`value` rounded; refused unless a finite number within +-`limit` (90 for a latitude, 180 otherwise)."""
    if type(value) not in (int, float) or not math.isfinite(value):
        raise NotGeneralisable("a coordinate must be a finite number")
    if not -limit <= value <= limit:
        raise NotGeneralisable("a latitude is within -90..90 and a longitude within -180..180")
    rounded = round(float(value), decimals)
    return rounded + 0.0  # normalises -0.0, so a rounded coordinate never shows a sign it lost


def generalise_location(value: Any, decimals: int) -> Any:
    """Coordinates rounded to `decimals`: a number, a {lat, lon} object (other keys dropped: accuracy,
    altitude and the like are as precise as the position), a [lat, lon] pair or a "lat,lon" string
    (plain decimals). A latitude outside -90..90 or a longitude (or a lone number) outside -180..180 is
    refused: it is no position, so rounding it would generalise nothing."""
    kind = type(value)
    if kind is dict:
        out = {key: _round_coordinate(value[key], decimals, 90 if key in _LATITUDE_KEYS else 180)
               for key in LOCATION_KEYS if key in value}
        if not out:
            raise NotGeneralisable("a location object needs lat/lon (or lng, latitude, longitude)")
        return out
    if kind is list:
        if len(value) not in (2, 3):
            raise NotGeneralisable("a location array is [lat, lon]")
        return [_round_coordinate(value[0], decimals, 90), _round_coordinate(value[1], decimals, 180)]
    if kind is str:
        parts = value.split(",")
        matches = [_COORDINATE.match(part) for part in parts]
        if len(parts) != 2 or matches[0] is None or matches[1] is None:
            raise NotGeneralisable('a location string is "lat,lon" in plain decimals')
        lat = _round_coordinate(float(matches[0].group(1)), decimals, 90)
        lon = _round_coordinate(float(matches[1].group(1)), decimals, 180)
        return f"{lat:.{decimals}f},{lon:.{decimals}f}"
    return _round_coordinate(value, decimals, 180)


def generalise_date(value: Any, precision: str) -> str:
    """An ISO 8601 calendar date (`YYYY-MM-DD`, or `YYYY-MM`) or date-time (`YYYY-MM-DDThh:mm[:ss[.f]]`
    with an optional zone) cut to `YYYY-MM` (month) or `YYYY` (year), as written (a zone offset is not
    applied). Anything else is refused: a day the month does not have (`2024-02-30`), a time out of range or
    followed by anything, other scripts' digits."""
    # A plain ASCII `YYYY-MM-DD` with a valid month and a day 01-28 (most dates, and always a real day): the
    # pattern's answer without the regex engine; anything else, including every refusal, takes the pattern.
    if (type(value) is str and len(value) == 10 and value.isascii() and value[4] == "-" and value[7] == "-"
            and value[:4].isdigit() and "01" <= (month := value[5:7]) <= "12" and month.isdigit()
            and "01" <= (day := value[8:]) <= "28" and day.isdigit()):
        return value[:4] if precision == "year" else value[:7]
    match = _DATE.match(value) if type(value) is str else None
    if match is None or (match.group(3) is not None
                         and not 1 <= int(match.group(3)) <= _days_in_month(int(match.group(1)), int(match.group(2)))):
        raise NotGeneralisable("a date must be ISO 8601 (YYYY-MM-DD, or a date-time)")
    return match.group(1) if precision == "year" else f"{match.group(1)}-{match.group(2)}"


# The plain `YYYY-MM-DD` spelling generalise_date answers by slicing (ASCII digits, month 01-12, day 01-28),
# as one regex call: cheaper than the tests it replaces (property-tested against generalise_date).
_plain_date = re.compile(r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])").fullmatch


def date_generaliser(precision: str) -> Callable[[Any], str]:
    """`generalise_date` with `precision` bound, for the generated walk: the plain `YYYY-MM-DD` case is
    answered by one regex call (the same values as generalise_date's written-out test), anything else goes
    to generalise_date."""
    cut = 4 if precision == "year" else 7

    def generalise(value: Any) -> str:
        if type(value) is str and _plain_date(value) is not None:
            return value[:cut]
        return generalise_date(value, precision)

    return generalise


def generalise_age(value: Any, band: int) -> str:
    """An age in whole years as the band holding it: band 10 turns 34 into "30-39" (bands are at least
    MIN_AGE_BAND years; the loader refuses narrower ones)."""
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value < 200:
        raise NotGeneralisable("an age must be a number of years from 0 to 199")
    low = int(value) // band * band
    return f"{low}-{low + band - 1}" if band > 1 else str(low)


def mask_value(value: Any, keep_last: int, char: str) -> str:
    """MASK_WIDTH mask characters followed by the value's last `keep_last` characters, so the output has
    the same length for every value. The kept characters are shown only when at least `keep_last` and at
    least MIN_MASKED characters are hidden; otherwise the kept part is masked too (`12345` under
    keep_last 4 would show all but one digit)."""
    if type(value) is int:
        value = str(value)
    if type(value) is not str:
        raise NotGeneralisable("only a string or an integer can be masked")
    if keep_last == 0 or len(value) - keep_last < max(keep_last, MIN_MASKED):
        return char * (MASK_WIDTH + keep_last)
    return char * MASK_WIDTH + value[-keep_last:]
