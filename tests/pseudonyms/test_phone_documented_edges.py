"""What docs/pseudonyms.md says about phone pseudonyms' kept digit and the spellings it does not unify
(review-transforms F1/F6): pinned, so the documentation stays true. Changing any of this would change
pseudonyms partners already hold; see the docs before "fixing" it."""

from __future__ import annotations

from gateway.keys import EXAMPLE_MASTER_KEY
from gateway.pseudonyms import PartnerKeyring, Pseudonymiser

PSEUDONYMS = Pseudonymiser(PartnerKeyring(EXAMPLE_MASTER_KEY))


def hmac(value: str) -> str:
    return PSEUDONYMS.pseudonymise("p", "phone", "hmac", value)


def test_a_trunk_zero_after_the_country_code_is_kept_and_splits_one_line() -> None:
    assert hmac("+82 010-1234-5678") == "+8206774289842"  # the docs' example
    assert hmac("+82 10-1234-5678") == hmac("+821012345678") != hmac("+82 010-1234-5678")
    assert hmac("+49 (030) 1234567").startswith("+490")
    assert hmac("+49 (0)30 1234567") == hmac("+49 30 1234567")


def test_a_bracketed_zero_is_removed_also_for_italy() -> None:
    assert hmac("+39 (0)6 1234 5678") == hmac("+39 6 1234 5678") != hmac("+39 06 1234 5678")


def test_the_country_code_and_first_national_digit_stay() -> None:
    # +CC and the first national digit: a Berlin, a Paris, a New York fixed line and a Korean mobile.
    for number, kept in (("+4930123456789", "+493"), ("+33142685300", "+331"), ("+12125550123", "+12"),
                         ("+821012345678", "+821")):
        out = hmac(number)
        assert out.startswith(kept)
        assert len(out) == len(number)
