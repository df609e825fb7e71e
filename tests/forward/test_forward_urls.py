"""build_upstream_url: every parameter is one encoded segment; traversal in any encoding is refused."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from gateway.errors import ConfigError, MalformedRequest
from gateway.forward import build_upstream_url

BASE = "http://127.0.0.1:9101/api/v2"
TEMPLATE = "/shipments/{shipment_id}/events/{event}"


def build(shipment_id: str, event: str = "E1", query: list[tuple[str, str]] | None = None) -> str:
    return build_upstream_url(BASE, TEMPLATE, {"shipment_id": shipment_id, "event": event}, query or [])


def test_plain_parameters_fill_the_template_under_the_base_path() -> None:
    assert build("S-1", "created") == "http://127.0.0.1:9101/api/v2/shipments/S-1/events/created"


def test_base_url_trailing_slash_does_not_double() -> None:
    url = build_upstream_url("http://127.0.0.1:9101/", "/a/{x}", {"x": "1"}, [])
    assert url == "http://127.0.0.1:9101/a/1"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("a b", "a%20b"),
        ("a?b", "a%3Fb"),
        ("a#b", "a%23b"),
        ("user@host", "user%40host"),
        ("a:b", "a%3Ab"),
        ("50%", "50%25"),
        ("ü", "%C3%BC"),
        ("a.b", "a.b"),
        ("...x", "...x"),
        ("a;b=c", "a%3Bb%3Dc"),
    ],
)
def test_reserved_characters_are_percent_encoded_in_one_segment(value: str, encoded: str) -> None:
    url = build(value)
    assert url == f"http://127.0.0.1:9101/api/v2/shipments/{encoded}/events/E1"
    parts = urlsplit(url)
    assert parts.netloc == "127.0.0.1:9101"
    assert parts.query == ""
    assert parts.fragment == ""


TRAVERSALS = [
    ".",
    "..",
    "...",
    ". .",
    "%2e",
    "%2e%2e",
    "%2E%2e",
    "%2E%2E",
    ".%2e",
    "%2e.",
    "%252e%252e",
    "%25252e%25252e",
    "..%2f",
    "%2f",
    "%2F",
    "a%2fb",
    "a/b",
    "../x",
    "a\\b",
    "%5c",
    "%5C..",
    "..%5c",
    "%00",
    "a\x00b",
    "a%0d%0aX-Injected: 1",
    "a\r\nX-Injected: 1",
    "%0a",
    "%252f",
    "http://evil.example",
    "https:%2f%2fevil.example",
    "//evil.example",
    "\uff0e\uff0e",  # fullwidth full stops
    "\u2025",  # two dot leader, NFKC ".."
    "\uff0e",
    "a\uff0fb",  # fullwidth solidus
    "a\uff3cb",  # fullwidth reverse solidus
    "%ef%bc%8e%ef%bc%8e",  # fullwidth dots, percent-encoded UTF-8
    "",
]


@pytest.mark.parametrize("value", TRAVERSALS)
def test_traversal_and_separators_in_every_encoding_are_refused(value: str) -> None:
    with pytest.raises(MalformedRequest) as info:
        build(value)
    # The refusal names the parameter, never the value.
    assert [v.path for v in info.value.violations] == ["path.shipment_id"]
    assert len(value) < 4 or value not in str(info.value.to_problem())


def test_refusal_applies_to_every_parameter_not_only_the_first() -> None:
    with pytest.raises(MalformedRequest) as info:
        build("S-1", "%2e%2e")
    assert [v.path for v in info.value.violations] == ["path.event"]


def test_missing_parameter_is_refused() -> None:
    with pytest.raises(MalformedRequest):
        build_upstream_url(BASE, TEMPLATE, {"shipment_id": "S-1"}, [])


def test_deeply_nested_encoding_is_refused_rather_than_decoded_forever() -> None:
    value = "x%25252525252541"
    with pytest.raises(MalformedRequest):
        build(value)


def test_query_keys_and_values_are_encoded_and_keep_their_order() -> None:
    url = build("S-1", query=[("lang", "zh-TW"), ("q", "a&b=c"), ("lang", "en"), ("x", "/../#")])
    assert url.endswith("?lang=zh-TW&q=a%26b%3Dc&lang=en&x=%2F..%2F%23")
    assert urlsplit(url).netloc == "127.0.0.1:9101"


@pytest.mark.parametrize(
    "base",
    ["ftp://127.0.0.1/x", "127.0.0.1:9101", "http:///nohost", "http://u:p@127.0.0.1/", "http://h/x?y=1", "http://h/#f"],
)
def test_bad_base_urls_are_configuration_errors(base: str) -> None:
    with pytest.raises(ConfigError):
        build_upstream_url(base, "/a", {}, [])


def test_malformed_templates_are_configuration_errors() -> None:
    with pytest.raises(ConfigError):
        build_upstream_url(BASE, "a/{x}", {"x": "1"}, [])
    with pytest.raises(ConfigError):
        build_upstream_url(BASE, "/a/{x", {"x": "1"}, [])
