"""A path parameter made only of unreserved characters goes out as it is, exactly as quote() encodes it."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import MalformedRequest
from gateway.forward import build_upstream_url

_SEGMENT_TEXT = st.text(st.sampled_from("azAZ09_.-~%/é．: "), min_size=1, max_size=10)


@given(_SEGMENT_TEXT)
def test_each_parameter_is_encoded_as_quote_encodes_it(value: str) -> None:
    try:
        url = build_upstream_url("https://partner.example/api", "/items/{id}/x", {"id": value})
    except MalformedRequest:
        return  # refused values are the URL tests' subject
    assert url == f"https://partner.example/api/items/{quote(value, safe='')}/x"


@pytest.mark.parametrize("value", ["%90", "a%FFb", "%C3"])
def test_a_parameter_that_decodes_to_invalid_utf8_is_refused_as_malformed(value: str) -> None:
    # Before: the UnicodeDecodeError escaped as an unexpected exception instead of a clear refusal.
    with pytest.raises(MalformedRequest) as refused:
        build_upstream_url("https://partner.example/api", "/items/{id}", {"id": value})
    assert refused.value.violations[0].reason == "invalid percent-encoding"
