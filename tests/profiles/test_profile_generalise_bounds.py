"""The loader refuses a `generalise` that does not generalise (review-transforms F7): a location kept to
more than 3 decimals, an age band under 5 years; the problem names file, line and the bound."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from profile_texts import ENV, VALID_PROFILE

from gateway.profiles import ProfileLoadError, load_profiles
from gateway.pseudonyms import Pseudonymiser

CASES = [
    ("{generalise: {location: 4}}", "at most 3"),
    ("{generalise: {location: 6}}", "at most 3"),
    ("{generalise: {age_band: 1}}", "5"),
    ("{generalise: {age_band: 4}}", "5"),
]


@pytest.mark.parametrize(("action", "bound"), CASES)
def test_a_generalisation_below_the_bounds_is_refused_at_load(
    write_profile: Callable[..., Path], pseudonymiser: Pseudonymiser, action: str, bound: str,
) -> None:
    assert "        order_id: keep" in VALID_PROFILE
    text = VALID_PROFILE.replace("        order_id: keep", f"        order_id: {action}", 1)
    folder = write_profile(text)
    with pytest.raises(ProfileLoadError) as caught:
        load_profiles(folder, pseudonymiser=pseudonymiser, environ=ENV)
    line = next(n for n, row in enumerate(text.splitlines(), start=1) if f"order_id: {action}" in row)
    found = [p for p in caught.value.problems if p.line == line]
    assert found, caught.value.problems
    assert any(bound in p.reason for p in found), found


@pytest.mark.parametrize("action", ["{generalise: {location: 3}}", "{generalise: {age_band: 5}}"])
def test_the_bounds_load(write_profile: Callable[..., Path], pseudonymiser: Pseudonymiser, action: str) -> None:
    text = VALID_PROFILE.replace("        order_id: keep", f"        order_id: {action}", 1)
    # The profile's examples send a string order_id, which a generalisation refuses: not checked here.
    profiles = load_profiles(write_profile(text), pseudonymiser=pseudonymiser, environ=ENV, check_examples=False)
    assert "carrier-xx-test" in profiles.profiles
