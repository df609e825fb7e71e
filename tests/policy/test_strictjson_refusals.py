"""Strict JSON: each refusal of parse_json with its reason, and canonical_dumps' form and collisions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.errors import MalformedRequest
from gateway.strictjson import canonical_dumps, parse_json


def refusal(data: bytes, **kwargs: int) -> MalformedRequest:
    with pytest.raises(MalformedRequest) as caught:
        parse_json(data, **kwargs)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"a": "\xff"}', "invalid UTF-8"),
        (b'{"a": "\xc3"}', "invalid UTF-8"),
        (b'\xef\xbb\xbf{"a": 1}', "byte order mark"),
        ('{"a": 1}'.encode("utf-16"), "UTF-16"),
        ('{"a": 1}'.encode("utf-16-le"), "UTF-16"),
        ('{"a": 1}'.encode("utf-32"), "UTF-32"),
        ('{"a": 1}'.encode("utf-32-be"), "UTF-32"),
        (b'{"a": NaN}', "invalid JSON syntax"),
        (b'{"a": Infinity}', "invalid JSON syntax"),
        (b'{"a": -Infinity}', "invalid JSON syntax"),
        (b'{"a": 1e400}', "float overflow"),
        (b'{"a": -1e400}', "float overflow"),
        (b'{"a": 1} {"b": 2}', "trailing data"),
        (b'{"a": 1}x', "trailing data"),
        (b'{"a": 1', "invalid JSON"),
        (b"", "empty"),
        (b'"\\ud800"', "surrogate"),
    ],
)
def test_refusals_name_the_problem(data: bytes, reason: str) -> None:
    error = refusal(data)
    assert reason.lower() in error.violations[0].reason.lower()


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": 1, "a": 2}',
        b'{"x": {"y": [{"k": 1, "k": 1}]}}',
        b'[{"a": "t:1", "a": "t:2"}]',
        b'{"a": "\\u003a", "a": 1}',  # an escaped colon must not hide the lost key from the count
        b'{"a\\u003a": 1, "a:": 2}',  # two spellings of one key
    ],
)
def test_duplicate_keys_at_any_depth(data: bytes) -> None:
    assert "duplicate key" in refusal(data).violations[0].reason


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (b"[9223372036854775808]", "$[0]"),
        (b'{"n": -9223372036854775809}', "$"),  # becomes a float in orjson: found by the exact slow path
        (b'{"n": {"m": 18446744073709551615}}', "*.*"),  # key names are the caller's: never echoed
        (b'{"n": 18446744073709551616}', "$"),  # orjson turns this into a float: the raw text decides
        (b"123456789012345678901234567890", "$"),
    ],
)
def test_integers_beyond_64_bits(data: bytes, path: str) -> None:
    error = refusal(data)
    assert "64-bit" in error.violations[0].reason
    assert error.violations[0].path == path


def test_integer_limits_are_accepted() -> None:
    assert parse_json(b"[9223372036854775807, -9223372036854775808, 1e19, 1.5]") == [2**63 - 1, -(2**63), 1e19, 1.5]


def test_depth_limit() -> None:
    assert parse_json(b"[[[1]]]", max_depth=3) == [[[1]]]
    error = refusal(b'{"a": [[1]]}', max_depth=2)
    assert "deeper than 2" in error.violations[0].reason
    assert error.violations[0].path == "*[0]"
    deep = b"[" * 40 + b"]" * 40
    assert "deeper than 32" in refusal(deep).violations[0].reason
    assert "nesting" in refusal(b"[" * 5000 + b"]" * 5000).violations[0].reason


def test_colons_in_strings_do_not_confuse_the_duplicate_proof() -> None:
    body = b'{"t": "10:30:00", "url": "http://x:80/a:b", "k:e:y": {"z": ":"}}'
    assert parse_json(body) == json.loads(body)


def test_error_never_echoes_the_value() -> None:
    error = refusal(b'{"email": "an.secret@example.com", "email": "x"}')
    assert "secret" not in str(error.to_problem())


def test_canonical_dumps_is_sorted_compact_utf8() -> None:
    assert canonical_dumps({"b": 1, "a": {"d": [1, 2], "c": "é"}}) == '{"a":{"c":"é","d":[1,2]},"b":1}'.encode()


def test_canonical_dumps_normalises_keys_to_nfc() -> None:
    assert canonical_dumps({"e\u0301": 1}) == '{"\u00e9":1}'.encode()


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"Email": "a", "email": "b"}, "*"),  # key names are the caller's: never echoed
        ({"x": [{"ID": 1, "id": 2}]}, "*[0].*"),
        ({"\u00e9": 1, "e\u0301": 2}, "*"),
        ({"STRASSE": 1, "straße": 2}, "*"),  # collide only under full case folding
    ],
)
def test_canonical_dumps_refuses_colliding_keys(value: object, path: str) -> None:
    with pytest.raises(MalformedRequest) as caught:
        canonical_dumps(value)
    assert caught.value.violations[0].path == path


@pytest.mark.parametrize("value", [{"x": float("nan")}, [float("inf")], {"n": 2**64}])
def test_canonical_dumps_refuses_unrepresentable_numbers(value: object) -> None:
    with pytest.raises(MalformedRequest):
        canonical_dumps(value)


def test_round_trip() -> None:
    body = b'{"b":[1,2.5,"x",null,true],"a":{"c":"\xe2\x82\xac"}}'
    assert canonical_dumps(parse_json(body)) == b'{"a":{"c":"\xe2\x82\xac"},"b":[1,2.5,"x",null,true]}'


@pytest.mark.parametrize(
    "refuse",
    [
        lambda: canonical_dumps({"contacts": {"KIM@example.com": 1, "kim@example.com": 2}}),
        lambda: parse_json(b'{"+886912345678": {"kim@example.com": [[1]]}}', max_depth=2),
        lambda: parse_json(b'{"+886912345678": {"kim@example.com": 18446744073709551615}}'),
    ],
)
def test_a_refusal_path_never_echoes_a_key_name(refuse: Any) -> None:
    """A key name may itself be personal data (a contact map keyed by e-mail or phone): refusal paths show
    an object key as `*` (review-privacy F3)."""
    with pytest.raises(MalformedRequest) as caught:
        refuse()
    problem = str(caught.value.to_problem())
    assert all(text not in problem for text in ("kim@", "KIM@", "886912345678"))
    assert caught.value.violations[0].path in ("*.*", "*.*[0]")
