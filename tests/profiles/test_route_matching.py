"""Route matching: method + template, literals before parameters, and path traversal in any encoding."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from profile_texts import ENV, VALID_PROFILE

from gateway.errors import MalformedRequest, NotFound
from gateway.profiles import ProfileSet, load_profiles
from gateway.pseudonyms import Pseudonymiser

EXTRA_ROUTES = """
  - id: by-literal
    method: GET
    path: /shipments/latest/tracking
    purpose: delivery
    legal_basis: contract
  - id: root
    method: GET
    path: /
    purpose: delivery
    legal_basis: contract
"""


@pytest.fixture
def profile_set(write_profile: Callable[..., Path], pseudonymiser: Pseudonymiser) -> ProfileSet:
    return load_profiles(write_profile(VALID_PROFILE + EXTRA_ROUTES), pseudonymiser=pseudonymiser, environ=ENV)


def test_match_binds_path_parameters(profile_set: ProfileSet) -> None:
    match = profile_set.match("carrier-xx-test", "POST", "/shipments/S-1")
    assert (match.route.id, match.path_params) == ("create-shipment", {"shipment_id": "S-1"})
    assert match.profile.id == "carrier-xx-test"
    assert profile_set.match("carrier-xx-test", "get", "shipments/S%201/tracking").path_params == {"shipment_id": "S 1"}


def test_literal_segments_win_over_parameters(profile_set: ProfileSet) -> None:
    assert profile_set.match("carrier-xx-test", "GET", "/shipments/latest/tracking").route.id == "by-literal"
    assert profile_set.match("carrier-xx-test", "GET", "/shipments/other/tracking").route.id == "track"
    assert profile_set.match("carrier-xx-test", "GET", "/").route.id == "root"


@pytest.mark.parametrize(
    ("partner", "method", "path"),
    [
        ("nobody", "POST", "/shipments/S-1"),
        ("carrier-xx-test", "DELETE", "/shipments/S-1"),
        ("carrier-xx-test", "POST", "/shipments"),
        ("carrier-xx-test", "POST", "/shipments/S-1/extra"),
        ("carrier-xx-test", "POST", "/shipments//"),
        ("carrier-xx-test", "POST", "/shipments/"),
    ],
)
def test_no_match_is_not_found(profile_set: ProfileSet, partner: str, method: str, path: str) -> None:
    with pytest.raises(NotFound) as caught:
        profile_set.match(partner, method, path)
    assert "S-1" not in caught.value.detail


@pytest.mark.parametrize(
    "path",
    [
        "/shipments/..", "/shipments/.", "/shipments/%2e%2e", "/shipments/%2E%2e", "/shipments/.%2e",
        "/shipments/%252e%252e", "/shipments/%25252e%25252e", "/shipments/a%2fb", "/shipments/a%2Fb",
        "/shipments/a%5cb", "/shipments/a\\b", "/shipments/a%00b", "/shipments/a%2500b", "/shipments/%252f",
        "/shipments/%ff", "/../shipments/S-1", "/shipments/S-1?x=1",
    ],
)
def test_traversal_never_matches(profile_set: ProfileSet, path: str) -> None:
    with pytest.raises(MalformedRequest):
        profile_set.match("carrier-xx-test", "POST", path)
