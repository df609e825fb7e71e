"""The digit-window and phone walks of the free-text scanner were rewritten for speed on digit-heavy
text (O(1) Luhn per window from prefix sums, window ends by one dict lookup, each group's digits taken
once). Their answers must be the old ones: the walks as they were before the rewrite are kept here and
the whole scan is compared on random digit-heavy texts and a corpus of shapes."""

from __future__ import annotations

import bisect
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy import freetext
from gateway.policy.freetext import Hit
from gateway.pseudonyms.tables import country_calling_code


def _old_windows(groups: list[tuple[int, int, str]], hits: list[Hit], tried: dict[str, str | None],
                 imsi: bool) -> None:
    """`freetext._windows` before the rewrite (85bf717), verbatim but for the names."""
    counts = [0]
    for _, _, group in groups:
        counts.append(counts[-1] + len(group))
    total = counts[-1]
    if total < 14:
        return
    spelt = "".join(group for _, _, group in groups)
    covered = -1
    for first, (start, _, head) in enumerate(groups):
        base = counts[first]
        if total - base < 14:
            break
        lengths = freetext._ICCID_LENGTHS if head.startswith("89") or head == "8" else freetext._IMSI_LENGTHS
        for length in lengths:
            after = bisect.bisect_left(counts, base + length, first + 1)
            if after == len(counts):
                break
            end = groups[after - 1][1]
            if counts[after] != base + length or end <= covered:
                continue
            digits = spelt[base:base + length]
            if digits in tried:
                found = tried[digits]
            else:
                found = tried[digits] = freetext._digit_type(digits)
            if found is not None and (imsi or found != "imsi"):
                hits.append(Hit(start, end, found))
                covered = end


def _old_phones(text: str) -> list[Hit]:
    """`freetext._phones` before the rewrite (85bf717), with `_old_longest_phone`."""
    hits: list[Hit] = []
    for prefix in freetext._PHONE_PREFIX.finditer(text):
        body = freetext._PHONE_BODY.match(text, prefix.end(), prefix.end() + freetext._PHONE_SPAN)
        if body is None:
            continue
        groups: list[re.Match[str]] = []
        count = 0
        for group in freetext._DIGIT_GROUP.finditer(text, body.start(), body.end()):
            if (group.group() == "0" and text[group.start() - 1] == "("
                    and text[group.end():group.end() + 1] == ")"):
                continue
            groups.append(group)
            count += len(group.group())
            if count > freetext._PHONE_MAX_DIGITS:
                break
        if (count < 5 or groups[0].group()[0] == "0"
                or country_calling_code("".join(group.group() for group in groups[:3])[:3]) is None):
            continue
        minimum = freetext._PHONE_00_MIN_DIGITS if prefix.group() == "00" else 1
        hit = _old_longest_phone(prefix.start(), groups, minimum)
        if hit is not None:
            hits.append(hit)
    return hits


def _old_longest_phone(start: int, groups: list[re.Match[str]], minimum: int) -> Hit | None:
    digits = ""
    ends: list[tuple[int, int]] = []
    for group in groups:
        if len(digits) + len(group.group()) > freetext._PHONE_MAX_DIGITS:
            break
        digits += group.group()
        ends.append((len(digits), group.end()))
    for count, end in reversed(ends):
        if count >= minimum and freetext._confirm("phone", "+" + digits[:count]):
            return Hit(start, end, "phone")
    if len(ends) == len(groups):
        return None
    group = groups[len(ends)]
    for count in range(min(freetext._PHONE_MAX_DIGITS - len(digits), len(group.group()) - 1), 0, -1):
        if len(digits) + count >= minimum and freetext._confirm("phone", "+" + digits + group.group()[:count]):
            return Hit(start, group.start() + count, "phone")
    return None


def _both(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new scan and the old one (both entry points) give the same hits on `text`."""
    new = (freetext.scan(text), freetext.scan_without_imsi(text))
    with monkeypatch.context() as patched:
        patched.setattr(freetext, "_windows", _old_windows)
        patched.setattr(freetext, "_phones", _old_phones)
        old = (freetext.scan(text), freetext.scan_without_imsi(text))
    assert new == old, text


_ALPHABETS = ("0123456789 ", "0123456789 -", "8899 0123456789  -\u2013\u00a0", "0123456789 +-./()0",
              "0123456789 x@.:-abAF+\t", "\uff10\uff11\uff18\uff19\uff0b 0123456789\u200b")


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_ALPHABETS).flatmap(lambda alphabet: st.text(alphabet, min_size=1, max_size=160)))
def test_rewritten_walks_find_what_the_old_ones_found(text: str) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        _both(text, monkeypatch)


def _corpus() -> list[str]:
    rng = random.Random(11)

    def fill(make: object, size: int = 6000) -> str:
        parts: list[str] = []
        while sum(map(len, parts)) < size:
            parts.append(make())  # type: ignore[operator]
        return "".join(parts)

    return [
        fill(lambda: str(rng.randrange(10 ** rng.randint(1, 6))) + " "),
        fill(lambda: f"+49 {rng.randint(100, 999)} {rng.randint(1000000, 9999999)} "),
        fill(lambda: str(rng.randint(0, 9999)) + "-"),
        fill(lambda: str(rng.randint(0, 9)) + " "),
        fill(lambda: "89" + str(rng.randint(0, 9)) + " "),
        fill(lambda: rng.choice(["8 ", "9 ", "001 ", str(rng.randint(0, 9)) + " "])),
        fill(lambda: "00 " + str(rng.randint(1, 9)) + " "),
        fill(lambda: "+" + " ".join(str(rng.randint(1, 9)) for _ in range(16)) + " "),
        fill(lambda: f"2024-{rng.randint(1, 12)}-{rng.randint(1, 28)} {rng.randint(0, 99999)} "
             + rng.choice(["", "", "4901542 03237518 "])),
        fill(lambda: f"+44 (0)20 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)} {rng.randint(0, 9)} "),
    ]


@pytest.mark.parametrize("text", _corpus(), ids=range(10))
def test_rewritten_walks_agree_on_long_digit_heavy_texts(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert freetext.scan(text)  # each shape holds identifiers: the comparison is not of two empty lists
    _both(text, monkeypatch)
