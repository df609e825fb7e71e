"""Hypothesis strategies for valid identifiers of each type, and for other spellings of the same value.

Values are built from the definitions (Luhn via python-stdnum, real MCC/MNC pairs from stdnum's IMSI
data), not from the module under test, so the tests do not check the module against itself.
"""

from __future__ import annotations

import uuid

from hypothesis import strategies as st
from stdnum import luhn, numdb

from gateway.pseudonyms.tables import COUNTRY_CALLING_CODES


def _imsi_networks() -> list[tuple[str, str]]:
    networks = []
    for _length, low, high, _props, children in numdb.get("imsi").prefixes:
        if low != high or low in ("001", "999"):
            continue
        for _mlen, mnc_low, mnc_high, _mprops, _ in children:
            if mnc_low == mnc_high and len(mnc_low) in (2, 3):
                networks.append((low, mnc_low))
    return sorted(networks)


IMSI_NETWORKS = _imsi_networks()


def digits(count: int) -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789", min_size=count, max_size=count)


imei = digits(14).map(lambda body: body + luhn.calc_check_digit(body))


@st.composite
def imsi(draw: st.DrawFn) -> str:
    mcc, mnc = draw(st.sampled_from(IMSI_NETWORKS))
    length = draw(st.sampled_from([14, 15]))
    return mcc + mnc + draw(digits(length - len(mcc) - len(mnc)))


@st.composite
def iccid(draw: st.DrawFn) -> str:
    body = "89" + draw(digits(draw(st.sampled_from([16, 17, 18]))))
    return body + luhn.calc_check_digit(body)


mac48 = st.integers(min_value=0, max_value=2**48 - 1)


def mac_spelling(value: int, style: str, upper: bool) -> str:
    hex12 = f"{value:012X}" if upper else f"{value:012x}"
    if style == "bare":
        return hex12
    if style == "dotted":
        return ".".join(hex12[i : i + 4] for i in range(0, 12, 4))
    return style.join(hex12[i : i + 2] for i in range(0, 12, 2))


MAC_STYLES = [":", "-", "dotted", "bare"]
mac = st.builds(mac_spelling, mac48, st.sampled_from(MAC_STYLES), st.booleans())
universal_unicast_mac = st.builds(
    mac_spelling,
    mac48.map(lambda v: v & ~(0x03 << 40)),
    st.sampled_from(MAC_STYLES),
    st.booleans(),
)

android_id = st.text(alphabet="0123456789abcdef", min_size=16, max_size=16)
advertising_id = st.integers(min_value=1, max_value=2**128 - 1).map(lambda n: str(uuid.UUID(int=n, version=4)))

CODES = sorted(COUNTRY_CALLING_CODES)


@st.composite
def phone(draw: st.DrawFn, min_national: int = 4) -> str:
    code = draw(st.sampled_from(CODES))
    national = draw(st.integers(min_value=min_national, max_value=15 - len(code)))
    return "+" + code + draw(st.sampled_from("123456789")) + draw(digits(national - 1))


_ATEXT = "abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+/=?^_`{|}~-"
_atom = st.text(alphabet=_ATEXT, min_size=1, max_size=12)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@st.composite
def email(draw: st.DrawFn) -> str:
    local = ".".join(draw(st.lists(_atom, min_size=1, max_size=3)))[:64]
    local = local.rstrip(".")
    labels = draw(st.lists(_label, min_size=1, max_size=3))
    tld = draw(st.from_regex(r"[a-z]{2,6}", fullmatch=True))
    return f"{local}@{'.'.join([*labels, tld])}"


token = st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S"]), min_size=1, max_size=60).filter(
    lambda t: t == t.strip() and t.isprintable()
)

VALID: dict[str, st.SearchStrategy[str]] = {
    "imei": imei,
    "imsi": imsi(),
    "iccid": iccid(),
    "mac": mac,
    "android_id": android_id,
    "advertising_id": advertising_id,
    "phone": phone(),
    "email": email(),
    "token": token,
}
# Values every mode accepts (fpe restricts MACs, short national numbers and long addresses).
FPE_VALID: dict[str, st.SearchStrategy[str]] = {
    **VALID,
    "mac": universal_unicast_mac,
    "phone": phone(min_national=7),
    "email": email().filter(lambda e: len(e) <= 56),
}
# Values whose pseudonym space is large enough that two partners' pseudonyms colliding by chance is
# out of reach (a 4-digit phone number has only 1000 pseudonyms).
WIDE_VALID = {**VALID, "phone": phone(min_national=9)}
WIDE_FPE_VALID = {**FPE_VALID, "phone": phone(min_national=9)}
