"""Strict JSON: the only way request and response bodies are parsed and re-serialised.

`parse_json` refuses what a lenient parser would silently accept (duplicate keys, NaN, invalid UTF-8,
BOMs and UTF-16/32, excessive nesting, integers that do not fit in 64 bits, floats that overflow,
trailing data), so two components can never read one body two different ways. `canonical_dumps` gives
one byte form per value: sorted keys, no white space, UTF-8, NFC keys, and refuses two keys of one
object that collide after NFC or case folding.

Speed: orjson does the parsing. It is strict about everything above except duplicate keys (it keeps
the last one), integer range (it silently turns integers beyond 64 bits into floats) and depth (its
limit is 1024). Those are proven cheaply without walking the tree in Python: orjson re-serialises the
value (with its 53-bit integer check), and since every ':' is either a key separator or inside a
string, the echo has as many colons as the input exactly when no key was lost (and when the input is
byte for byte the echo, nothing was lost or rounded at all); a 20-digit literal
(maybe an integer orjson turned into a float) or an escaped colon also sends the body to the exact
stdlib path, which finds and names the problem. Depth is walked only when the document has more
brackets than the limit (counted as the length two deletions take off).
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterable
from typing import Any

import orjson

from gateway.errors import MalformedRequest, Violation

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
ROOT = "$"

_UTF32_BOMS = (b"\x00\x00\xfe\xff", b"\xff\xfe\x00\x00")
_UTF16_BOMS = (b"\xfe\xff", b"\xff\xfe")
_UTF8_BOM = b"\xef\xbb\xbf"
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
# orjson makes floats of integer literals above 2**64-1 (20 digits) or below -2**63 (a minus and 19).
_LONG_DIGITS = b"0" * 20
_LONG_NEGATIVE = b"-" + b"0" * 19


def opening_brackets(data: bytes) -> int:
    """How many `[` and `{` bytes `data` holds: the length the two deletions take off. Deleting one byte
    value with `replace` finds each occurrence with memchr and copies the spans between them, where
    `count` of one byte is a plain loop over every byte: about 5 k instructions for a 1.6 KB body, where
    replacing `[` by `{` and one count took 11 k, deleting every other byte with translate 18 k and two
    counts 18 k."""
    return len(data) - len(data.replace(b"{", b"").replace(b"[", b""))


def _refuse(reason: str, path: str = ROOT) -> MalformedRequest:
    return MalformedRequest(f"body is not acceptable JSON: {reason}", [Violation(path, reason)],
                            reason="bad-json")


# How a refusal path shows an object key: parsing knows no profile, so every key here is the caller's,
# and a key name may itself be personal data (`{"kim@example.com": ...}`): never echoed, only its place
# (`*.*[2]`). Same marker as the policy's undeclared keys (gateway/policy/codegen.py).
_KEY = "*"


def _child(path: str, key: str) -> str:
    return _KEY if path == ROOT else f"{path}.{_KEY}"


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
    # orjson's own echo proves there was no duplicate key: every ':' is a key separator or inside a string,
    # so the counts match exactly when no key was lost (an escaped colon could fake one: exact path then).
    try:
        echo: bytes | None = orjson.dumps(value, option=orjson.OPT_STRICT_INTEGER)
    except orjson.JSONEncodeError:
        # An integer beyond 53 bits: name it if it is beyond 64; the exact path below covers the rest.
        echo = None
        refusal = _located_refusal(value, 1, 2**31, ROOT)
        if refusal is not None:
            raise refusal from None
    # A body that is exactly orjson's own compact form (what most JSON serialisers send) proves all three at
    # once: a lost duplicate key or an integer orjson turned into a float would print differently.
    # `find`, not `in`, on bytes (see canonical_dumps_with_known_keys): every body not in that compact form
    # (Python's json.dumps with its default ", " and ": ", say) runs these tests.
    if echo != data and (echo is None or echo.count(b":") != data.count(b":")
                         or (data.find(b"\\") >= 0 and data.find(b"\\u003") >= 0)
                         or (digits := data.translate(_DIGITS_AS_ZERO)).find(_LONG_DIGITS) >= 0
                         or digits.find(_LONG_NEGATIVE) >= 0):
        # A 20-digit literal may be an integer beyond 64 bits that orjson silently made a float.
        _slow_check(data)
    if (opening_brackets(data) > max_depth
            and (refusal := _located_refusal(value, 1, max_depth, ROOT)) is not None):
        raise refusal
    return value


def _describe_orjson_error(message: str) -> str:
    # orjson's messages are positional and never quote the input, but keep only a known vocabulary.
    lowered = message.lower()
    if ("trailing" in lowered and "comma" not in lowered) or "after document" in lowered:
        return "trailing data after the JSON document"
    if "infinity" in lowered:
        return "number out of range (float overflow)"
    if "surrogate" in lowered or "utf-8" in lowered:
        return "invalid UTF-8 or unpaired surrogate escape"
    if "recursion" in lowered or "depth" in lowered:
        return "nesting too deep"
    if "empty" in lowered or "eof" in lowered:
        return "empty or truncated document"
    position = message.rsplit(":", 1)[-1].strip() if ": line" in message else ""
    return f"invalid JSON syntax ({position})" if position else "invalid JSON syntax"


def _located_refusal(value: Any, depth: int, max_depth: int, path: str) -> MalformedRequest | None:
    """Nesting beyond `max_depth` (or an integer out of range), with its path; run only when the
    document has more containers than the depth limit, so most bodies never pay for the walk."""
    if type(value) not in (dict, list):
        return None
    if depth > max_depth:
        return _refuse(f"nesting deeper than {max_depth} levels", path)
    pairs = value.items() if type(value) is dict else enumerate(value)
    for key, item in pairs:
        where = f"{path}[{key}]" if type(key) is int else _child(path, str(key))
        kind = type(item)
        if kind is dict or kind is list:
            found = _located_refusal(item, depth + 1, max_depth, where)
            if found is not None:
                return found
        elif kind is int and (item > INT_MAX or item < INT_MIN):
            return _refuse("integer out of the 64-bit signed range", where)
    return None


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


def _plain_keys(obj: dict[Any, Any]) -> bool:
    """Every key of `obj` is an ASCII string (so already NFC) and no two differ only by case. Keys with
    no upper-case letter are their own lower case, so distinct keys cannot collide and the set of folded
    keys is built only when a key has an upper-case letter."""
    try:
        # One C call for all keys: a non-string key raises, a non-ASCII one shows in the joined text.
        keys = "".join(obj)
    except TypeError:
        return False
    if not keys.isascii():
        return False
    return keys == keys.lower() or len(set(map(str.lower, obj))) == len(obj)


def _plainly_canonical(value: Any) -> bool:
    """True when every key is ASCII (so already NFC), no two keys of an object differ only by case,
    and every number is representable; False sends `value` through the careful path."""
    if type(value) is dict:
        if not _plain_keys(value):
            return False
        items: Any = value.values()
    else:
        items = value
    for item in items:
        kind = type(item)
        if kind is str:
            continue
        if kind is dict or kind is list:
            if not _plainly_canonical(item):
                return False
        elif kind is int:
            if item > INT_MAX or item < INT_MIN:
                return False
        elif kind is float and not math.isfinite(item):
            return False
    return True


# Key sequences (as tuples, in the object's order) that `_plain_keys` accepted: the caller-supplied objects
# of a route (an address, parcel dimensions) repeat a few key sets, and a set lookup of the keys' tuple
# costs less than joining, testing and lower-casing them. Bounded, since callers choose the names: at most
# _PLAIN_KEYS_MAX sequences, each of at most _PLAIN_KEYS_MAX_CHARS characters in all.
_PLAIN_KEYS_MAX = 256
_PLAIN_KEYS_MAX_CHARS = 512
_plain_key_sequences: set[tuple[Any, ...]] = set()


def _keys_plainly_canonical(value: Any) -> bool:
    """The key half of `_plainly_canonical`, for `canonical_dumps_with_known_keys`, whose integers are
    checked on the bytes; NaN and infinity (which orjson writes as null) are tested here too."""
    if type(value) is dict:
        keys = tuple(value)
        if keys not in _plain_key_sequences:
            if not _plain_keys(value):
                return False
            if len(_plain_key_sequences) < _PLAIN_KEYS_MAX and sum(map(len, keys)) <= _PLAIN_KEYS_MAX_CHARS:
                _plain_key_sequences.add(keys)
        items: Any = value.values()
    else:
        items = value
    for item in items:
        kind = type(item)
        if kind is str or kind is int:  # the usual values, nothing to check: skip the three tests below
            continue
        if kind is dict or kind is list:
            if not _keys_plainly_canonical(item):
                return False
        elif kind is float and item - item:  # NaN or infinity: the careful path refuses it
            return False
    return True


def canonical_dumps_with_known_keys(obj: Any, unchecked: Iterable[Any], finite_outside: bool = False) -> bytes:
    """`canonical_dumps(obj)`, for a value whose objects all have ASCII keys that no two of one object
    share up to case, except those within the containers of `unchecked`: the policy engine's output,
    whose own objects carry only allowlisted names (checked when the policy was compiled). Only the
    `unchecked` containers are walked; numbers are checked on the bytes (orjson refuses integers beyond
    53 bits, NaN and infinity come out as null); anything doubtful takes `canonical_dumps` itself.
    `finite_outside`: the caller proved that no NaN or infinity is in `obj` outside the `unchecked`
    containers (the generated policy walk's output); the containers' floats are tested here, so the
    search for `null` in the bytes is skipped."""
    try:
        out = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER)
    except orjson.JSONEncodeError:
        return canonical_dumps(obj)
    # `find`, not `in`: bytes.__contains__ first tries its operand as a byte value (an integer), and the
    # TypeError it raises and clears for a bytes operand costs about 1 k instructions per call.
    if not finite_outside and out.find(b"null") >= 0:
        return canonical_dumps(obj)
    remembered = _plain_key_sequences
    for container in unchecked:
        if type(container) is dict and tuple(container) in remembered:
            # `_keys_plainly_canonical` written out for a remembered key sequence: only the values remain.
            for item in container.values():
                kind = type(item)
                if kind is str or kind is int:  # as in `_keys_plainly_canonical`
                    continue
                if kind is dict or kind is list:
                    if not _keys_plainly_canonical(item):
                        return canonical_dumps(obj)
                elif kind is float and item - item:  # NaN or infinity (orjson writes null)
                    return canonical_dumps(obj)
        elif not _keys_plainly_canonical(container):
            return canonical_dumps(obj)
    return out


def canonical_dumps(obj: Any) -> bytes:
    """The canonical bytes of `obj`: sorted keys, compact, UTF-8, NFC keys; refuses colliding keys."""
    kind = type(obj)
    if (kind is dict or kind is list) and _plainly_canonical(obj):
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    return orjson.dumps(_check_canonical(obj, ROOT), option=orjson.OPT_SORT_KEYS)
