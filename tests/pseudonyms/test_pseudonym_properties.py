"""Property tests: every pseudonym is valid for its type by an independent validator, partners and key
versions never share pseudonyms, every spelling of a value gives the same pseudonym, fpe round-trips."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pseudonym_strategies import FPE_VALID, MAC_STYLES, VALID, WIDE_FPE_VALID, WIDE_VALID, mac48, mac_spelling
from stdnum import imei as std_imei
from stdnum import imsi as std_imsi
from stdnum import luhn
from stdnum import mac as std_mac

from gateway.pseudonyms import EMAIL_FPE_MAX_LENGTH, ID_TYPES, MODES, PartnerKeyring, Pseudonymiser, normalise

MASTER = bytes(range(32))
PSEUDONYMISER = Pseudonymiser(PartnerKeyring(MASTER))
BOUND = {
    (partner, id_type, mode): PSEUDONYMISER.bind(partner, id_type, mode)
    for partner in ("carrier-a", "carrier-b")
    for id_type in ID_TYPES
    for mode in MODES
}
REVERSE = {id_type: PSEUDONYMISER.bind_reverse("carrier-a", id_type) for id_type in ID_TYPES}
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_EMAIL_INDEPENDENT = re.compile(r"[a-z0-9]{1,64}@example\.com")


def assert_valid_pseudonym(id_type: str, original: str, pseudonym: str) -> None:
    """Checks a partner's validator would make, written without the module under test."""
    canonical = original.strip()
    if id_type == "imei":
        assert std_imei.is_valid(pseudonym)
        assert len(pseudonym) == 15
        assert pseudonym.isdigit()
    elif id_type == "imsi":
        assert std_imsi.is_valid(pseudonym)
        assert len(pseudonym) == len(canonical)
        mcc, mnc, _ = std_imsi.split(canonical)
        assert pseudonym.startswith(mcc + mnc)
    elif id_type == "iccid":
        assert luhn.is_valid(pseudonym)
        assert pseudonym.startswith("89")
        assert len(pseudonym) == len(canonical)
    elif id_type == "mac":
        colon_form = ":".join(re.findall("..", re.sub(r"[:.-]", "", pseudonym)))
        assert std_mac.is_valid(colon_form)
        assert std_mac.is_locally_administered(colon_form)
        assert std_mac.is_unicast(colon_form)
        # Same separator layout and case as the input.
        assert re.sub("[0-9a-fA-F]", "x", pseudonym) == re.sub("[0-9a-fA-F]", "x", canonical)
        upper = re.search("[A-F]", canonical) is not None and re.search("[a-f]", canonical) is None
        assert re.search("[a-f]" if upper else "[A-F]", pseudonym) is None
    elif id_type == "android_id":
        assert re.fullmatch(r"[0-9a-f]{16}", pseudonym)
    elif id_type == "advertising_id":
        parsed = uuid.UUID(pseudonym)
        assert str(parsed) == pseudonym
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    elif id_type == "phone":
        assert re.fullmatch(r"\+[0-9]{5,15}", pseudonym)
        assert len(pseudonym) == len(canonical)
    elif id_type == "email":
        assert _EMAIL_INDEPENDENT.fullmatch(pseudonym), pseudonym
    elif id_type == "token":
        assert re.fullmatch(r"[0-9a-z]+", pseudonym)
    else:  # pragma: no cover - a new type needs a validator here
        pytest.fail(f"no independent validator for {id_type}")


def _country_code_kept(original: str, pseudonym: str) -> bool:
    from gateway.pseudonyms.tables import country_calling_code

    code = country_calling_code(original[1:])
    return code is not None and pseudonym.startswith("+" + code + original[1 + len(code)])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("id_type", ID_TYPES)
@SETTINGS
@given(data=st.data())
def test_every_pseudonym_is_valid_for_its_type(id_type: str, mode: str, data: st.DataObject) -> None:
    value = data.draw((VALID if mode == "hmac" else FPE_VALID)[id_type])
    pseudonym = BOUND["carrier-a", id_type, mode](value)
    assert_valid_pseudonym(id_type, value, pseudonym)
    if id_type == "phone":
        assert _country_code_kept(value, pseudonym)
    assert normalise(id_type, pseudonym)  # and the gateway itself accepts it back


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("id_type", ID_TYPES)
@SETTINGS
@given(data=st.data())
def test_two_partners_never_share_a_pseudonym(id_type: str, mode: str, data: st.DataObject) -> None:
    value = data.draw((WIDE_VALID if mode == "hmac" else WIDE_FPE_VALID)[id_type])
    a = BOUND["carrier-a", id_type, mode](value)
    b = BOUND["carrier-b", id_type, mode](value)
    assert a != b
    assert a != value
    assert normalise(id_type, a) != normalise(id_type, value)


@pytest.mark.parametrize("id_type", ID_TYPES)
@SETTINGS
@given(data=st.data())
def test_fpe_round_trips(id_type: str, data: st.DataObject) -> None:
    value = data.draw(FPE_VALID[id_type])
    pseudonym = BOUND["carrier-a", id_type, "fpe"](value)
    original = REVERSE[id_type](pseudonym)
    assert normalise(id_type, original) == normalise(id_type, value)
    if id_type == "mac":
        # Re-identified in the partner's spelling, which is the caller's; a pseudonym without hex letters
        # cannot carry the case, and then comes back in lower case.
        assert original == (value if re.search("[a-fA-F]", pseudonym) else value.lower())
    else:
        assert original == normalise(id_type, value)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("id_type", ID_TYPES)
@SETTINGS
@given(data=st.data())
def test_key_version_changes_pseudonyms(id_type: str, mode: str, data: st.DataObject) -> None:
    value = data.draw((WIDE_VALID if mode == "hmac" else WIDE_FPE_VALID)[id_type])
    v1 = PSEUDONYMISER.pseudonymise("carrier-a", id_type, mode, value)
    v2 = PSEUDONYMISER.pseudonymise("carrier-a", id_type, mode, value, version=2)
    assert v1 != v2
    assert Pseudonymiser(PartnerKeyring(MASTER, version=2)).pseudonymise("carrier-a", id_type, mode, value) == v2
    assert v1 == BOUND["carrier-a", id_type, mode](value)  # deterministic


# --- spellings --------------------------------------------------------------------------------------------


def _groups(text: str, sizes: list[int], separator: str) -> str:
    out, start = [], 0
    for size in sizes:
        out.append(text[start : start + size])
        start += size
    out.append(text[start:])
    return separator.join(part for part in out if part)


@st.composite
def spellings(draw: st.DrawFn, id_type: str, value: str) -> str:
    """Another way a caller might write `value`."""
    pad = draw(st.sampled_from(["", " ", "\t", "  \n"]))
    if id_type == "imei":
        text = _groups(value, [2, 6, 6], draw(st.sampled_from([" ", "-"])))
    elif id_type in ("imsi", "iccid"):
        text = _groups(value, [3, 2, 4, 4], draw(st.sampled_from([" ", "-"])))
    elif id_type in ("android_id", "token"):
        text = value.upper() if id_type == "android_id" and draw(st.booleans()) else value
    elif id_type == "advertising_id":
        text = draw(st.sampled_from([value.upper(), value.replace("-", ""), value.replace("-", "").upper()]))
    elif id_type == "phone":
        code = value[1:4]
        rest = value[4:]
        text = draw(
            st.sampled_from(
                [
                    "00" + value[1:],
                    f"+{code} {_groups(rest, [3, 3], ' ')}",
                    f"+{code}-{_groups(rest, [2, 4], '-')}",
                    f"(+{code}) {_groups(rest, [3], ' ')}",
                    f"00 {code}.{_groups(rest, [3, 3], '.')}",
                ]
            )
        )
    elif id_type == "email":
        local, _, domain = value.partition("@")
        text = draw(st.sampled_from([f"{local}@{domain.upper()}", value.upper(), f"{local.upper()}@{domain}"]))
    else:  # pragma: no cover
        pytest.fail(id_type)
    return pad + text + pad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("id_type", [t for t in ID_TYPES if t != "mac"])
@SETTINGS
@given(data=st.data())
def test_every_spelling_gives_the_same_pseudonym(id_type: str, mode: str, data: st.DataObject) -> None:
    value = data.draw((VALID if mode == "hmac" else FPE_VALID)[id_type])
    other = data.draw(spellings(id_type, value))
    bound = BOUND["carrier-a", id_type, mode]
    assert bound(other) == bound(value)


@pytest.mark.parametrize("mode", MODES)
@SETTINGS
@given(mac=mac48, first=st.sampled_from(MAC_STYLES), second=st.sampled_from(MAC_STYLES), case=st.booleans())
def test_every_mac_spelling_gives_the_same_address(mode: str, mac: int, first: str, second: str, case: bool) -> None:
    if mode == "fpe":
        mac &= ~(0x03 << 40)
    bound = BOUND["carrier-a", "mac", mode]
    spelling_a, spelling_b = mac_spelling(mac, first, upper=case), mac_spelling(mac, second, upper=not case)
    a, b = bound(spelling_a), bound(spelling_b)
    # The same address, each written the way its input was (an input without letters gives lower case).
    assert normalise("mac", a) == normalise("mac", b)
    for spelling, pseudonym, style in ((spelling_a, a, first), (spelling_b, b, second)):
        upper = re.search("[A-F]", spelling) is not None
        assert pseudonym == mac_spelling(int(normalise("mac", pseudonym).replace(":", ""), 16), style, upper=upper)


def test_email_fpe_limit_is_the_local_part() -> None:
    # 64 base-36 characters hold every address of EMAIL_FPE_MAX_LENGTH characters, not one more.
    assert 56 ** (EMAIL_FPE_MAX_LENGTH + 1) > 36**64 > 56**EMAIL_FPE_MAX_LENGTH
    longest = "~" * (EMAIL_FPE_MAX_LENGTH - len("@ab.cd")) + "@ab.cd"
    pseudonym = BOUND["carrier-a", "email", "fpe"](longest)
    assert len(pseudonym.partition("@")[0]) <= 64
    assert REVERSE["email"](pseudonym) == longest
