"""Strict JSON: the only way request and response bodies are parsed and re-serialised.

`parse_json` refuses what a lenient parser would silently accept (duplicate keys, NaN, invalid UTF-8,
BOMs and UTF-16/32, excessive nesting, integers that do not fit in 64 bits, floats that overflow,
trailing data), so two components can never read one body two different ways. `canonical_dumps` gives
one byte form per value: sorted keys, no white space, UTF-8, NFC keys, and refuses two keys of one
object that collide after NFC or case folding.

Speed: orjson does the parsing. It is strict about everything above except duplicate keys (it keeps
the last one), integer range (it silently turns integers beyond 64 bits into floats) and depth (its
limit is 1024). One cheap walk over the parsed tree checks depth and number ranges and proves the
absence of duplicate keys by counting: every ':' in the raw bytes is either a key separator or inside
a string, so `raw.count(b":")` equals keys + colons inside parsed strings exactly when no key was lost.
Only when that proof fails (or an escaped colon could fool it) does the slow stdlib path run, to find
and name the duplicate.
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

import orjson

from gateway.errors import MalformedRequest, Violation

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
ROOT = "$"

_UTF32_BOMS = (b"\x00\x00\xfe\xff", b"\xff\xfe\x00\x00")
_UTF16_BOMS = (b"\xfe\xff", b"\xff\xfe")
_UTF8_BOM = b"\xef\xbb\xbf"


def _refuse(reason: str, path: str = ROOT) -> MalformedRequest:
    return MalformedRequest(f"body is not acceptable JSON: {reason}", [Violation(path, reason)],
                            reason="bad-json")


def _child(path: str, key: str) -> str:
    return key if path == ROOT else f"{path}.{key}"


def _encoding_problem(data: bytes) -> str | None:
    """Why `data` is not UTF-8 JSON, when the cause is its encoding (checked only after a failure)."""
    head = data[:4]
    utf32_shape = len(head) == 4 and b"\x00\x00\x00" in (head[:3], head[1:])
    if head.startswith(_UTF32_BOMS) or utf32_shape:
        return "UTF-32 is not accepted; send UTF-8"
    if head.startswith(_UTF8_BOM):
        return "a byte order mark is not accepted"
    if head.startswith(_UTF16_BOMS) or (len(head) >= 2 and (head[0] == 0 or head[1] == 0)):
        return "UTF-16 is not accepted; send UTF-8"
    try:
        data.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        return "invalid UTF-8"
    return None


def parse_json(data: bytes, *, max_depth: int = 32) -> Any:
    """Parse one JSON document strictly; raise `MalformedRequest` naming the problem (never a value)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        problem = _encoding_problem(data)
        if problem is not None:
            raise _refuse(problem) from None
        raise _refuse(_describe_orjson_error(str(exc))) from None
    walker = _Walker(max_depth)
    counted = walker.walk(value, 1) if type(value) in (dict, list) else _scalar_count(value, walker)
    # An escaped colon in a string adds a parsed colon without a raw one and could hide a lost key.
    if walker.suspect_float or counted != data.count(b":") or b"\\u003" in data:
        _slow_check(data)
    return value


def _scalar_count(value: Any, walker: _Walker) -> int:
    if type(value) is str:
        return value.count(":")
    walker.check_number(value, ROOT)
    return 0


def _describe_orjson_error(message: str) -> str:
    # orjson's messages are positional and never quote the input, but keep only a known vocabulary.
    lowered = message.lower()
    if ("trailing" in lowered and "comma" not in lowered) or "after document" in lowered:
        return "trailing data after the JSON document"
    if "infinity" in lowered:
        return "number out of range (float overflow)"
    if "surrogate" in lowered or "utf-8" in lowered:
        return "invalid UTF-8 or unpaired surrogate escape"
    if "recursion" in lowered:
        return "nesting too deep"
    if "empty" in lowered or "eof" in lowered:
        return "empty or truncated document"
    position = message.rsplit(":", 1)[-1].strip() if ": line" in message else ""
    return f"invalid JSON syntax ({position})" if position else "invalid JSON syntax"


class _Walker:
    """One pass over a parsed tree: depth, number ranges, and the key/colon count for the duplicate proof."""

    __slots__ = ("max_depth", "suspect_float")

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.suspect_float = False

    def check_number(self, value: Any, path: str) -> None:
        kind = type(value)
        if kind is int:
            if value > INT_MAX or value < INT_MIN:
                raise _refuse("integer out of the 64-bit signed range", path)
        elif kind is float and abs(value) >= 9.2e18 and value.is_integer():
            # orjson turns integer literals beyond 64 bits into floats; look at the raw text to tell.
            self.suspect_float = True

    def walk(self, value: Any, depth: int, path: str = ROOT) -> int:
        if depth > self.max_depth:
            raise _refuse(f"nesting deeper than {self.max_depth} levels", path)
        count = 0
        if type(value) is dict:
            count = len(value)
            for key, item in value.items():
                if ":" in key:
                    count += key.count(":")
                kind = type(item)
                if kind is str:
                    if ":" in item:
                        count += item.count(":")
                elif kind is dict or kind is list:
                    count += self.walk(item, depth + 1, _child(path, key))
                elif kind is int or kind is float:
                    self.check_number(item, _child(path, key))
        else:
            for index, item in enumerate(value):
                kind = type(item)
                if kind is str:
                    if ":" in item:
                        count += item.count(":")
                elif kind is dict or kind is list:
                    count += self.walk(item, depth + 1, f"{path}[{index}]")
                elif kind is int or kind is float:
                    self.check_number(item, f"{path}[{index}]")
        return count


class _StrictPairs:
    """object_pairs_hook for the slow path: refuse the first duplicate key."""

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise _refuse("duplicate key in an object")
            result[key] = value
        return result


def _check_int(text: str) -> int:
    value = int(text)
    if value > INT_MAX or value < INT_MIN:
        raise _refuse("integer out of the 64-bit signed range")
    return value


def _refuse_constant(name: str) -> Any:
    raise _refuse(f"{name} is not a JSON number")


def _slow_check(data: bytes) -> None:
    """The exact stdlib path, run only when the fast proof is inconclusive; raises on any problem."""
    try:
        json.loads(data.decode("utf-8"), object_pairs_hook=_StrictPairs(), parse_int=_check_int,
                   parse_constant=_refuse_constant)
    except json.JSONDecodeError:  # pragma: no cover - orjson already accepted the syntax
        raise _refuse("invalid JSON syntax") from None


def _check_canonical(value: Any, path: str) -> Any:
    """Return `value` with NFC keys (a new dict only where a key changes); refuse colliding keys."""
    kind = type(value)
    if kind is dict:
        folded: set[str] = set()
        changed = False
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _refuse("object keys must be strings", path)
            if key.isascii():
                name, fold = key, key.lower()
            else:
                name = unicodedata.normalize("NFC", key)
                fold = unicodedata.normalize("NFC", name.casefold())
            if fold in folded:
                raise _refuse("two keys of one object differ only by case or Unicode form", _child(path, name))
            folded.add(fold)
            checked = _check_canonical(item, _child(path, name))
            changed = changed or name is not key or checked is not item
            out[name] = checked
        return out if changed else value
    if kind is list:
        checked = [_check_canonical(item, f"{path}[{i}]") for i, item in enumerate(value)]
        return value if all(a is b for a, b in zip(checked, value, strict=True)) else checked
    if kind is float and not math.isfinite(value):
        raise _refuse("NaN and Infinity are not JSON numbers", path)
    if kind is int and (value > INT_MAX or value < INT_MIN):
        raise _refuse("integer out of the 64-bit signed range", path)
    return value


def canonical_dumps(obj: Any) -> bytes:
    """The canonical bytes of `obj`: sorted keys, compact, UTF-8, NFC keys; refuses colliding keys."""
    return orjson.dumps(_check_canonical(obj, ROOT), option=orjson.OPT_SORT_KEYS)
