"""Property tests: each fast path of the policy hot path against the straightforward path it replaces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy import freetext

hex_pairs = st.lists(st.text("0123456789abcdefABCDEF", min_size=2, max_size=2), min_size=6, max_size=6)
colon_macs = st.tuples(hex_pairs, st.lists(st.sampled_from(":-"), min_size=5, max_size=5)).map(
    lambda parts: "".join(pair + sep for pair, sep in zip(parts[0], [*parts[1], ""], strict=True)))
dotted_macs = st.text("0123456789abcdef", min_size=12, max_size=12).map(
    lambda h: f"{h[:4]}.{h[4:8]}.{h[8:]}")
noise = st.text(st.sampled_from("0123456789abcdefXYZ:-. "), max_size=12)
mac_texts = st.tuples(noise, colon_macs | dotted_macs, noise).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(mac_texts, noise, st.text(max_size=40)))
def test_scan_with_mac_prefilter_equals_scan_without(text: str) -> None:
    fast = freetext.scan(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(freetext, "may_hold_mac", lambda _text: True)
        assert freetext.scan(text) == fast


@settings(max_examples=300, deadline=None)
@given(mac_texts)
def test_mac_prefilter_passes_every_mac_the_pattern_finds(text: str) -> None:
    if freetext._MAC.search(text) is not None:
        assert freetext.may_hold_mac(text)


def test_mac_prefilter_passes_both_spellings() -> None:
    assert freetext.may_hold_mac("device 00:1a:2b:3c:4d:5e")
    assert freetext.may_hold_mac("device 001a.2b3c.4d5e")
    assert not freetext.may_hold_mac("Please leave the parcel at the door.")
