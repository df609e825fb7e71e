"""Free-text scanning: finds identifiers (IMEI, IMSI, ICCID, MAC, email, phone) a person typed into a
field the policy keeps as free text (a delivery note, a support message).

Cheap patterns propose candidates; each is confirmed by the identifier validators of gateway.pseudonyms
(check digits, MCC, address syntax), so an order number that merely has 15 digits is not redacted unless
it really is a valid IMEI or IMSI. A pattern match is never the only candidate: a number written next to
an identifier ("box 12 490154203237518") must not hide it, so every window of a digit run that starts and
ends on a group boundary is tried, a phone is the longest valid prefix of what follows its `+` or `00`,
and an address is the dot-atom just before its `@`.

The patterns run on a normalised shadow of the text (compatibility forms folded by NFKC, so full-width
`＋`, `＠` and digits read as ASCII; other scripts' decimal digits mapped to 0-9; invisible format
characters such as a zero-width space removed), with a map back to the original, so a hit always covers
the characters the person typed. docs/profile-format.md lists what is and is not found.

Every pattern and walk is linear in the text: a digit run's windows are at most 22 digits long, a phone
at most 15 digits, a local part 64 characters (see `_scan_shadow`).
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from dataclasses import dataclass

from gateway.pseudonyms import is_valid, luhn_check_digit
from gateway.pseudonyms.tables import country_calling_code

SCANNED_TYPES = ("imei", "imsi", "iccid", "mac", "email", "phone")

# How many characters of free text one request (or one response) may have scanned, in all its free-text
# values, unless its route sets `free_text_max_chars`: beyond it the policy refuses instead of scanning.
# The scan is linear but costs up to ~3 µs a character on digit-heavy text (docs/performance.md), on the
# event loop; 32768 characters is 160 goods descriptions of 200 characters, and at most ~0.1 s.
FREE_TEXT_MAX_CHARS = 32768

# Dashes a person may type between digit groups (ASCII hyphen, Unicode hyphens and dashes, minus sign),
# as characters and as the body of a regex character class.
_DASH_CHARS = "-\u2010\u2011\u2012\u2013\u2014\u2015\u2212"
_DASHES = re.escape(_DASH_CHARS)
# Between the digit groups of an IMEI, IMSI or ICCID: white space (any amount, as the validators strip it)
# and dashes. Not '.', '/' or ':': those join dates, prices and times ("25.12.2024 14.30") into numbers.
_DIGIT_RUN = re.compile(f"[0-9]+(?:[\\s{_DASHES}]+[0-9]+)*")
_DIGIT_GROUP = re.compile("[0-9]+")
# A phone's separators are the ones the phone validator strips: white space, dashes, '.', '/', brackets.
_PHONE_GAP = f"[\\s{_DASHES}./()]"
_PHONE_PREFIX = re.compile(r"\+|(?<![0-9])00")
_PHONE_BODY = re.compile(f"{_PHONE_GAP}*[0-9]+(?:{_PHONE_GAP}+[0-9]+)*")
_PHONE_MAX_DIGITS = 15  # E.164
# A phone spelt with `00` needs this many digits after it: short zero-padded references ("0012345")
# would otherwise read as "+1 2345"; a `+` is a clear enough sign on its own.
_PHONE_00_MIN_DIGITS = 8
# What follows a '+' or '00' is read up to this many characters: the validator strips any number of
# separators, so this bound, not a count of separators, keeps the work per prefix bounded.
_PHONE_SPAN = 80

# A MAC's look-arounds refuse only a neighbouring hex digit: a label or punctuation next to it
# ("ID:00:1a:...", "tel:", "router 001a.2b3c.4d5e.") is not part of it. A separated MAC is read as the
# whole run of hex pairs: a label whose last two letters are hex digits ("MAC-00-1a-...": "AC") adds a
# pair in front, and a key fingerprint ("43:51:...:a8") is a longer run; see `_macs`.
_MAC_PAIRS = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}[:\-]){5,}[0-9A-Fa-f]{2}(?![0-9A-Fa-f])")
_MAC_DOTTED = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}(?![0-9A-Fa-f])")
_MAC_SPELT = 17  # six pairs and five separators
# Twelve bare hex digits (the validator accepts them), not part of a longer hex string nor the last group
# of a UUID (`-b23e-10b96e40000d`: the one separated spelling that ends in twelve hex digits; a label
# such as "ID:", "Device-" or "MAC:" before it is no hex group). At least one must be a letter a-f
# (twelve decimal digits are far more often an order or tracking number than a MAC) and two decimal
# digits (a word like "deadbeefcafe" is not an address; and so every pattern needs two of `_MARKS`,
# which keeps the pre-check of `scan` one translate).
_BARE_MAC = re.compile(r"(?<![0-9A-Fa-f])(?<!-[0-9A-Fa-f]{4}-)(?=[0-9]*[A-Fa-f])(?=[A-Fa-f]*[0-9][A-Fa-f]*[0-9])"
                       r"[0-9A-Fa-f]{12}(?![0-9A-Fa-f])")

# An address's characters: the dot-atom characters of RFC 5322 and, so that a non-ASCII address (which
# the validator refuses only for being non-ASCII) is still found, letters and digits of any script and
# combining accents.
_ADDRESS_CHAR = "(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~\\-\u0300-\u036f]|[^\\W\\x00-\\x7f])"
# The local part: the dot-atom ending just before the '@' (stray dots before the '@' allowed), matched
# on the reversed text before the '@': "at...john@" gives "john".
_LOCAL_REVERSED = re.compile(f"(?P<dots>\\.*){_ADDRESS_CHAR}+(?:\\.{_ADDRESS_CHAR}+)*")
_DOMAIN_HEAD = re.compile("(?:[A-Za-z0-9\\-.\u0300-\u036f]|[^\\W\\x00-\\x7f])+")
_LOCAL_MAX = 64
_DOMAIN_MAX = 253
_NON_ASCII = re.compile("[^\\x00-\\x7f]")

# Characters the shadow drops: format characters (Unicode category Cf: zero-width space and joiners, soft
# hyphen, bidirectional marks, byte order mark, tags; a test checks this covers every Cf character) and
# other invisible default-ignorable ones (combining grapheme joiner, variation selectors, Hangul fillers).
_INVISIBLE = ("\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u17b4\u17b5"
              "\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0"
              "\ufff0-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
              "\U0001d173-\U0001d17a\U000e0000-\U000e0fff")
# A non-ASCII text needs a shadow only when it holds an invisible character or a non-ASCII decimal digit
# (`[^\D0-9]`), or is not in NFKC.
_SHADOW_NEEDED = re.compile(f"[{_INVISIBLE}]|[^\\D0-9]")
_INVISIBLE_CHAR = re.compile(f"[{_INVISIBLE}]")
_FOLDED_MAX = 4096


@dataclass(frozen=True, slots=True)
class Hit:
    start: int
    end: int
    id_type: str


def _confirm(id_type: str, candidate: str) -> bool:
    try:
        return is_valid(id_type, candidate)
    except Exception:  # a validator that cannot judge a candidate never lets it pass as clean text
        return True


def may_hold_mac(text: str) -> bool:
    """False only when `_MAC_PAIRS` and `_MAC_DOTTED` cannot match: a MAC holds five ':' or '-'
    separators, or two dots. Most sentences have neither, and the MAC patterns (with their look-arounds)
    cost ~5 µs on a sentence."""
    # `in` first: most sentences have neither separator, and two `in` tests cost less than two counts.
    return (((":" in text or "-" in text) and text.count(":") + text.count("-") >= 5)
            or text.count(".") >= 2)


_ASCII_DIGITS = b"0123456789"
# ASCII bytes mapped to 'x' (a hex digit) or '.' (anything else): twelve bare hex digits in a row are
# then one substring test, which the bare-MAC pattern's look-arounds would cost ~3 µs to rule out.
_HEX_SHAPE = bytes(range(256)).maketrans(bytes(range(256)), bytes(
    ord("x") if chr(b) in "0123456789abcdefABCDEF" else ord(".") for b in range(256)))
_TWELVE_HEX = b"x" * 12


# Every pattern needs at least two of these characters: an address '@' and a dot, a phone '+' or '00'
# and digits, a digit run 14 digits, a MAC five ':'/'-', two dots or (bare) two digits.
_MARKS = b"@+:-.0123456789"


def scan(text: str) -> list[Hit]:
    """Every confirmed identifier in `text`, left to right, without overlaps (overlapping hits are
    merged, so no part of either identifier is left)."""
    # An ASCII sentence with fewer than two of the characters every pattern needs (most delivery notes)
    # cannot hold an identifier: one translate answers what the patterns below would ask one by one.
    # (Deleting the 15 marks sets up a shorter table than deleting the other 241 bytes.)
    if text.isascii() and len(text) - len(text.encode("ascii").translate(None, _MARKS)) < 2:
        return []
    return _scan(text)


def scan_without_imsi(text: str) -> list[Hit]:
    """`scan` leaving out IMSIs (any 14-15 digits starting 2-7 or 9, so also many reference numbers)
    before hits are merged, so no other identifier is hidden in a merged IMSI hit. For the
    legal-reference check (gateway.subjects.checks); `scan`, on every kept free-text value, keeps its
    one-argument call."""
    if text.isascii() and len(text) - len(text.encode("ascii").translate(None, _MARKS)) < 2:
        return []
    return _scan(text, imsi=False)


def _scan(text: str, *, imsi: bool = True) -> list[Hit]:
    """`scan` without its ASCII pre-check."""
    shadow, origin = _shadow(text)
    hits = _scan_shadow(shadow, imsi=imsi)
    if origin is None or not hits:
        return hits
    # Back to the original's offsets: from the first character the hit's first shadow character came
    # from, to the last character its last one came from (a removed invisible character inside is covered).
    return _merged([Hit(origin[hit.start], origin[hit.end - 1] + 1, hit.id_type) for hit in hits])


def _fold(char: str) -> str:
    """One non-ASCII character as the shadow holds it: removed if invisible, a decimal digit of any
    script as its ASCII digit, otherwise its NFKC form (with any digit in it as ASCII)."""
    if _INVISIBLE_CHAR.match(char) is not None:
        return ""
    return "".join(str(unicodedata.decimal(c)) if not c.isascii() and unicodedata.decimal(c, None) is not None
                   else c for c in unicodedata.normalize("NFKC", char))


class _FoldTable(dict[int, str]):
    """`_fold` as a `str.translate` table, filled on first use of each character (at most 4096 kept;
    these are single characters, never a value). `resizing` holds the characters whose fold is not one
    character: only a text holding one of them needs an index map."""

    def __init__(self) -> None:
        super().__init__({code: chr(code) for code in range(128)})  # ASCII stays as it is
        self.resizing: set[str] = set()

    def __missing__(self, code: int) -> str:
        char = chr(code)
        folded = _fold(char)
        if len(folded) != 1:
            self.resizing.add(char)
        if len(self) < 128 + _FOLDED_MAX:
            self[code] = folded
        return folded


_FOLD_TABLE = _FoldTable()


def _shadow(text: str) -> tuple[str, list[int] | None]:
    """The text the patterns read, and for each of its characters the index of the original character
    it came from (None when the shadow's offsets are the text's: ASCII, NFKC with nothing to fold, or
    every folded character still one character)."""
    if text.isascii() or (unicodedata.is_normalized("NFKC", text) and _SHADOW_NEEDED.search(text) is None):
        return text, None
    shadow = text.translate(_FOLD_TABLE)
    if _FOLD_TABLE.resizing.isdisjoint(text):
        return shadow, None
    # A character vanished (an invisible one) or grew ("⑴" is "(1)"): map each shadow character back.
    parts: list[str] = []
    origin: list[int] = []
    position = 0
    for match in _NON_ASCII.finditer(text):
        start = match.start()
        if start > position:
            parts.append(text[position:start])
            origin.extend(range(position, start))
        folded = _FOLD_TABLE[ord(match.group())]
        parts.append(folded)
        origin.extend([start] * len(folded))
        position = start + 1
    parts.append(text[position:])
    origin.extend(range(position, len(text)))
    return "".join(parts), origin


def _scan_shadow(text: str, *, imsi: bool = True) -> list[Hit]:
    """The hits in an already normalised text. Work is linear: each '@' reads at most 64 characters back
    and 253 on; each '+'/'00' at most 80 on and tries at most 30 prefixes; each digit group starts at most
    7 windows (exact lengths 14, 15 and 18-22); each pattern is a single pass without nested repeats
    over the same characters."""
    found: list[Hit] = []
    if "@" in text:
        found.extend(_emails(text))
    # One byte per character ('?' for any other), for the counts C does faster than the regex engine.
    data = text.encode("ascii", "replace")
    digits = len(data) - len(data.translate(None, _ASCII_DIGITS))
    if digits >= 5 and ("+" in text or "00" in text):
        found.extend(_phones(text))
    if digits >= 14:
        found.extend(_digit_identifiers(text, imsi=imsi))
    if may_hold_mac(text):
        found.extend(_macs(text))
    if digits >= 2 and _TWELVE_HEX in data.translate(_HEX_SHAPE):
        found.extend(Hit(m.start(), m.end(), "mac") for m in _BARE_MAC.finditer(text) if _confirm("mac", m.group()))
    return _merged(found)


def _macs(text: str) -> list[Hit]:
    """Separated MACs. A run of more than six pairs is confirmed by its last six (or else its first six:
    "00:1a:2b:3c:4d:5e-00" mixes separators) and redacted whole (over-redaction of a fingerprint, never a
    pair of a MAC left), except a first pair glued to a letter or digit before it: the end of a word
    ("MAC-00-1a-..."), which stays."""
    hits: list[Hit] = []
    for match in _MAC_PAIRS.finditer(text):
        start, spelt = match.start(), match.group()
        if _confirm("mac", spelt[-_MAC_SPELT:]):
            if len(spelt) > _MAC_SPELT and start > 0 and text[start - 1].isalnum():
                start += 3
            hits.append(Hit(start, match.end(), "mac"))
        elif len(spelt) > _MAC_SPELT and _confirm("mac", spelt[:_MAC_SPELT]):
            hits.append(Hit(start, match.end(), "mac"))
    hits.extend(Hit(m.start(), m.end(), "mac") for m in _MAC_DOTTED.finditer(text) if _confirm("mac", m.group()))
    return hits


def _merged(found: list[Hit]) -> list[Hit]:
    """`found` sorted, overlapping hits merged into one (typed as the first): dropping the later one
    would leave the part of it beyond the first in the text."""
    if len(found) < 2:
        return found
    found.sort(key=lambda hit: (hit.start, -hit.end))
    hits: list[Hit] = [found[0]]
    for hit in found[1:]:
        last = hits[-1]
        if hit.start >= last.end:
            hits.append(hit)
        elif hit.end > last.end:
            hits[-1] = Hit(last.start, hit.end, last.id_type)
    return hits


def _ascii_stand_in(text: str) -> str:
    """`text` with each non-ASCII character replaced by 'x': the validator refuses a non-ASCII address
    for that reason alone, and a person's address in another script is still their address."""
    return text if text.isascii() else _NON_ASCII.sub("x", text)


def _emails(text: str) -> list[Hit]:
    hits: list[Hit] = []
    at = text.find("@")
    while at >= 0:
        # The local part read backwards from the '@' (a reversed dot-atom is a dot-atom): one anchored
        # match over at most 72 characters, where a forward search would retry from every start.
        domain = _DOMAIN_HEAD.match(text, at + 1, at + 1 + _DOMAIN_MAX)
        local = None
        # A domain holds a dot (the validator wants a host name under a top-level domain).
        if domain is not None and "." in domain.group():
            local = _LOCAL_REVERSED.match(text[max(0, at - _LOCAL_MAX - 8):at][::-1])
        if local is not None and domain is not None:
            start = at - local.end()
            core = text[start:at - len(local.group("dots"))]
            if len(core) > _LOCAL_MAX:  # only the last 64 characters can be a local part
                trimmed = core[-_LOCAL_MAX:].lstrip(".")
                start += len(core) - len(trimmed)
                core = trimmed
            end = _host_end(domain, _ascii_stand_in(core)) if core else None
            if end is not None:
                hits.append(Hit(start, end, "email"))
        at = text.find("@", at + 1)
    return hits


def _host_end(domain: re.Match[str], local: str) -> int | None:
    """Where the longest host the validator accepts after `local@` ends, or None. The greedy read of
    host characters may run on past the address: sentence punctuation ("john@example.org."), an
    ellipsis and the next word ("john@example.org...thanks", where `…` reads as "..."), a dash
    ("john@example.org.-x"). So the host is cut at each '.' (a label boundary), longest first, without
    the dots and dashes that end each cut. Work: one validation per '.' in the host (at most 253
    characters, which end at the next '@'), so linear over the text."""
    host = domain.group()
    lead = len(host) - len(host.lstrip(".-"))  # stray dots after the '@' are not part of the host
    cut = len(host)
    while cut > lead:
        candidate = host[lead:cut].rstrip(".-")
        if "." not in candidate:  # a host name under a top-level domain holds a dot; a shorter cut neither
            return None
        if _confirm("email", f"{local}@{_ascii_stand_in(candidate)}"):
            return domain.start() + lead + len(candidate)
        cut = host.rfind(".", lead, lead + len(candidate))
    return None


def _phones(text: str) -> list[Hit]:
    hits: list[Hit] = []
    for prefix in _PHONE_PREFIX.finditer(text):
        body = _PHONE_BODY.match(text, prefix.end(), prefix.end() + _PHONE_SPAN)
        if body is None:
            continue
        # The digit groups (start, end, digits) up to one past 15 digits, without a bracketed national
        # trunk zero ("+44 (0)20 ...", also "+(0)44 ..."), which is not dialled (the validator drops every
        # "(0)"). Each group's digits are taken once: a prefix reads up to 16 groups, several times over.
        groups: list[tuple[int, int, str]] = []
        count = 0
        for match in _DIGIT_GROUP.finditer(text, body.start(), body.end()):
            start, end, digits = match.start(), match.end(), match.group()
            if digits == "0" and text[start - 1] == "(" and text[end:end + 1] == ")":
                continue
            groups.append((start, end, digits))
            count += len(digits)
            if count > _PHONE_MAX_DIGITS:
                break
        # At least a calling code and 4 national digits; a calling code never starts with 0 ("000...",
        # "+0..."), and a number whose first digits are no calling code is no phone, whatever its length:
        # one table lookup instead of a refusal per prefix.
        if (count < 5 or groups[0][2][0] == "0"
                or country_calling_code("".join(group[2] for group in groups[:3])[:3]) is None):
            continue
        minimum = _PHONE_00_MIN_DIGITS if prefix.group() == "00" else 1
        hit = _longest_phone(prefix.start(), groups, minimum)
        if hit is not None:
            hits.append(hit)
    return hits


def _longest_phone(start: int, groups: list[tuple[int, int, str]], minimum: int) -> Hit | None:
    """The longest valid phone from `start` over `groups` (start, end, digits): ending on a group
    boundary if one is valid (so a number written after the phone stays out of it), otherwise on any
    digit."""
    digits = ""
    ends: list[tuple[int, int]] = []  # (digit count, end offset) at each group boundary
    for _, end, group in groups:
        if len(digits) + len(group) > _PHONE_MAX_DIGITS:
            break
        digits += group
        ends.append((len(digits), end))
    for count, end in reversed(ends):
        if count >= minimum and _confirm("phone", "+" + digits[:count]):
            return Hit(start, end, "phone")
    if len(ends) == len(groups):
        return None  # every digit was on a boundary already tried
    # No boundary works and a group did not fit: the digits up to any point within that group.
    group_start, _, group = groups[len(ends)]
    for count in range(min(_PHONE_MAX_DIGITS - len(digits), len(group) - 1), 0, -1):
        if len(digits) + count >= minimum and _confirm("phone", "+" + digits + group[:count]):
            return Hit(start, group_start + count, "phone")
    return None


# Which types a window of whole digit groups can be, by its digit count. An ICCID starts with 89.
_TYPES_OF_LENGTH = {14: ("imsi",), 15: ("imei", "imsi"), **{n: ("iccid",) for n in range(18, 23)}}
_IMSI_FIRST = frozenset("2345679")
_IMSI_LENGTHS = (14, 15)
_ICCID_LENGTHS = (14, 15, 18, 19, 20, 21, 22)  # a window starting with 89 may also be an ICCID


def _digit_identifiers(text: str, *, imsi: bool = True) -> list[Hit]:
    """IMEI, IMSI and ICCID in each maximal run of digit groups: every window of whole groups with an
    identifier's digit count, so a neighbouring number neither hides nor spoils one. (Not windows
    inside a group: any 14 or 15 digits starting 2-7 or 9 are a valid IMSI, so every long tracking
    number would be redacted.) A date written with dashes (`2024-12-24`, `24-12-2024`) is no part of any
    window: joined to its neighbours it reads as an IMSI ("window 2024-12-24 - 2024-12-31"), and no
    identifier is written with a year and a month as its groups."""
    hits: list[Hit] = []
    tried: dict[str, str | None] = {}  # this text's windows already judged (a repeated number costs once)
    for run in _DIGIT_RUN.finditer(text):
        if run.end() - run.start() < 14:
            continue
        groups = [(g.start(), g.end(), g.group()) for g in _DIGIT_GROUP.finditer(text, run.start(), run.end())]
        dates = _date_groups(text, groups)
        if not dates:
            _windows(groups, hits, tried, imsi)
            continue
        segment: list[tuple[int, int, str]] = []
        for index, group in enumerate(groups):
            if index in dates:
                _windows(segment, hits, tried, imsi)
                segment = []
            else:
                segment.append(group)
        _windows(segment, hits, tried, imsi)
    return hits


_DATE_DASHES = frozenset(_DASH_CHARS)


def _date_groups(text: str, groups: list[tuple[int, int, str]]) -> set[int]:
    """The indexes of the groups that form a date joined by single dashes: a year 1900-2099 and a month
    and day of one or two digits, year first (`2024-12-24`) or last (`24-12-2024`, `12-24-2024`)."""
    dates: set[int] = set()
    for index, (_, _, group) in enumerate(groups):
        if len(group) != 4 or group[:2] not in ("19", "20"):
            continue
        for first in (index, index - 2):  # the year first, or last
            if first < 0 or first + 2 >= len(groups):
                continue
            triple = groups[first:first + 3]
            if not all(text[a[1]:b[0]] in _DATE_DASHES for a, b in itertools.pairwise(triple)):
                continue
            small = [g for i, (_, _, g) in enumerate(triple) if first + i != index]
            if all(len(g) <= 2 and 1 <= int(g) <= 31 for g in small) and min(int(g) for g in small) <= 12:
                dates.update(range(first, first + 3))
    return dates


def _windows(groups: list[tuple[int, int, str]], hits: list[Hit], tried: dict[str, str | None],
             imsi: bool) -> None:
    """Adds to `hits` the identifiers in the windows of whole `groups` (start, end, digits); IMSIs only
    with `imsi`. Per window O(1): the window's end is one dict lookup by digit count, its Luhn sum a
    difference of two prefix sums, and only a window passing the check digit is sliced and validated."""
    counts = [0]  # digits before each group
    for _, _, group in groups:
        counts.append(counts[-1] + len(group))
    total = counts[-1]
    if total < 14:
        return
    spelt = "".join(group for _, _, group in groups)  # a window's digits are a slice of this
    index_of = {count: index for index, count in enumerate(counts)}  # counts only grow: one index each
    # Luhn over any window in O(1): a whole number (check digit last) is valid when its sum, with every
    # second digit from the check digit's left neighbour doubled, is 0 mod 10. The doubled digits of a
    # window ending at `end` are those whose offset has the parity of `end`: so one prefix sum of the
    # digits with the even offsets doubled, one with the odd ones doubled (built in C by translate).
    data = spelt.encode("ascii")
    plain = data.translate(_DIGIT_VALUE)
    doubled = data.translate(_DIGIT_DOUBLED)
    even = bytearray(plain)
    even[0::2] = doubled[0::2]
    odd = bytearray(plain)
    odd[1::2] = doubled[1::2]
    sums = (list(itertools.accumulate(even, initial=0)), list(itertools.accumulate(odd, initial=0)))
    covered = -1  # the furthest end of a hit in this run: a window within it would add nothing
    for first, (start, _, head) in enumerate(groups):
        base = counts[first]
        if total - base < 14:
            break
        lengths = _ICCID_LENGTHS if head.startswith("89") or head == "8" else _IMSI_LENGTHS
        # The IMSI validator's whole test for 14 or 15 ASCII digits (a test pins the equivalence).
        imsi_head = imsi and (head[0] in _IMSI_FIRST or spelt.startswith("001", base))
        for length in lengths:
            # The window of whole groups from `first` with exactly `length` digits, if there is one.
            stop = base + length
            if stop > total:
                break
            after = index_of.get(stop)
            if after is None:
                continue
            end = groups[after - 1][1]
            if end <= covered:
                continue
            prefix = sums[stop & 1]
            found: str | None = None
            if (prefix[stop] - prefix[base]) % 10 == 0 and length != 14:  # the check digit of an IMEI or ICCID
                id_type = "imei" if length == 15 else "iccid"
                if id_type == "imei" or spelt.startswith("89", base):
                    digits = spelt[base:stop]
                    if digits in tried:
                        found = tried[digits]
                    else:
                        found = tried[digits] = id_type if _confirm(id_type, digits) else None
            if found is None and length <= 15 and imsi_head:
                found = "imsi"
            if found is not None:
                hits.append(Hit(start, end, found))
                covered = end


# A digit's value, and its Luhn contribution doubled (10..18 reduced to their digit sum), by ASCII byte.
_DIGIT_VALUE = bytes(range(256)).maketrans(b"0123456789", bytes(range(10)))
_DIGIT_DOUBLED = bytes(range(256)).maketrans(b"0123456789", bytes((2 * d) // 10 + (2 * d) % 10 for d in range(10)))


def _digit_type(digits: str) -> str | None:
    """The identifier type `digits` (a window of 14, 15 or 18-22 digits) is valid as, if any: one window
    judged on its own, the answer `_windows` gives each window of a run (tests hold them to each other)."""
    for id_type in _TYPES_OF_LENGTH[len(digits)]:
        if id_type == "imsi":
            # The IMSI validator's whole test for 14 or 15 ASCII digits (a test pins the equivalence):
            # asked here, as most windows of a long run of numbers pass it.
            if digits[0] in _IMSI_FIRST or digits.startswith("001"):
                return id_type
            continue
        # Both Luhn types: the check digit first. An ICCID also starts with 89.
        if (luhn_check_digit(digits[:-1]) != digits[-1]
                or (id_type == "iccid" and not digits.startswith("89"))):
            continue
        if _confirm(id_type, digits):
            return id_type
    return None


def redact(text: str, hits: list[Hit]) -> str:
    """`text` with each hit replaced by `[redacted:TYPE]`."""
    parts: list[str] = []
    position = 0
    for hit in hits:
        parts.append(text[position:hit.start])
        parts.append(f"[redacted:{hit.id_type}]")
        position = hit.end
    parts.append(text[position:])
    return "".join(parts)
