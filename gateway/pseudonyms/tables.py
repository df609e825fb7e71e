"""Numbering-plan tables the format-preserving pseudonyms need: where an IMSI's MNC ends, and which
digits of an international phone number are its country calling code.

Both are deliberately compact and conservative; see docs/pseudonyms.md for their sources and limits.
"""

from __future__ import annotations

# --- IMSI: 2- or 3-digit MNC (ITU-T E.212) -------------------------------------------------------------
# The MNC length is not encoded in the IMSI itself (a SIM stores it separately, in EF_AD), so it is looked
# up from the MCC. Source: the ITU-T E.212 list of mobile network codes as compiled in python-stdnum's
# imsi.dat (stdnum 2.2, 2025) and Wikipedia's "Mobile country code" lists; the test suite cross-checks
# this table against stdnum's data.
#
# MCCs whose networks all use 3-digit MNCs (North America, the Caribbean, parts of Latin America).
MCC_THREE_DIGIT_MNC = frozenset(
    {
        "302", "310", "311", "312", "313", "314", "315", "316", "330", "334", "338", "342", "344", "346",
        "348", "352", "354", "356", "358", "360", "365", "366", "376", "708", "722", "732", "750",
    }
)  # fmt: skip
# MCCs that mix both lengths: the 3-digit MNCs in use. Where a 3-digit MNC begins with a 2-digit one of
# the same MCC (e.g. 738 002 and 738 00) the IMSI alone cannot tell them apart; we then keep 3 digits,
# which always preserves the real MNC at the cost of one MSIN digit staying visible.
MIXED_MCC_THREE_DIGIT_MNCS: dict[str, frozenset[str]] = {
    "001": frozenset({"001"}),
    "208": frozenset({"500", "670", *(str(n) for n in range(700, 715))}),
    "214": frozenset({*(str(n) for n in range(700, 710))}),
    "240": frozenset({"900"}),
    "250": frozenset({"811"}),
    "255": frozenset({"701", "702", "707"}),
    "262": frozenset({"868", "869"}),
    "350": frozenset({"007"}),
    "374": frozenset({"130", "140"}),
    "405": frozenset(
        ["024", "025", "026", "027", "028", "029", "048", *(str(n) for n in range(750, 757)), "799"]
        + [str(n) for n in range(800, 810)]
        + [str(n) for n in range(840, 933)]
    ),
    "441": frozenset({*(str(n) for n in range(200, 217))}),
    "454": frozenset({"290", "380", "382", "383", "390"}),
    "467": frozenset({"193"}),
    "502": frozenset({*(str(n) for n in range(150, 158))}),
    "525": frozenset({*(str(n) for n in range(200, 206))}),
    "710": frozenset({"300"}),
    "714": frozenset({"020"}),
    "738": frozenset({"002", "003", "040"}),
    "999": frozenset({"999"}),
}


def mnc_length(imsi: str) -> int:
    """2 or 3: how many digits after the MCC (the first three digits) form the MNC."""
    mcc = imsi[:3]
    if mcc in MCC_THREE_DIGIT_MNC:
        return 3
    mixed = MIXED_MCC_THREE_DIGIT_MNCS.get(mcc)
    if mixed is not None and imsi[3:6] in mixed:
        return 3
    return 2


# --- Phone: ITU-T E.164 country calling codes -------------------------------------------------------------
# Source: "List of ITU-T Recommendation E.164 assigned country codes" (annex to the ITU Operational
# Bulletin, position of 15 December 2016, with later bulletins through 2024: 383 Kosovo). Country codes
# form a prefix code, so at most one of the first 1, 2 or 3 digits of a number matches. Spare and
# reserved codes are absent, so a number under one is refused. Global services (800, 808, 870, 878,
# 881-883, 888, 979) count as codes; their following identification digits are treated as national digits.
COUNTRY_CALLING_CODES = frozenset(
    {
        "1", "7",
        "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47", "48",
        "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65", "66", "81",
        "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
        "211", "212", "213", "216", "218",
        "220", "221", "222", "223", "224", "225", "226", "227", "228", "229",
        "230", "231", "232", "233", "234", "235", "236", "237", "238", "239",
        "240", "241", "242", "243", "244", "245", "246", "247", "248", "249",
        "250", "251", "252", "253", "254", "255", "256", "257", "258",
        "260", "261", "262", "263", "264", "265", "266", "267", "268", "269",
        "290", "291", "297", "298", "299",
        "350", "351", "352", "353", "354", "355", "356", "357", "358", "359",
        "370", "371", "372", "373", "374", "375", "376", "377", "378", "379",
        "380", "381", "382", "383", "385", "386", "387", "389",
        "420", "421", "423",
        "500", "501", "502", "503", "504", "505", "506", "507", "508", "509",
        "590", "591", "592", "593", "594", "595", "596", "597", "598", "599",
        "670", "672", "673", "674", "675", "676", "677", "678", "679",
        "680", "681", "682", "683", "685", "686", "687", "688", "689",
        "690", "691", "692",
        "800", "808", "850", "852", "853", "855", "856", "870", "878", "880", "881", "882", "883", "886", "888",
        "960", "961", "962", "963", "964", "965", "966", "967", "968",
        "970", "971", "972", "973", "974", "975", "976", "977", "979",
        "992", "993", "994", "995", "996", "998",
    }
)  # fmt: skip


def _calling_code_by_search(digits: str) -> str | None:
    for length in (1, 2, 3):
        if digits[:length] in COUNTRY_CALLING_CODES:
            return digits[:length]
    return None


# The answer depends on the first three characters only; for ASCII digits it is looked up in one step.
CALLING_CODE_OF_PREFIX: dict[str, str | None] = {
    prefix: _calling_code_by_search(prefix)
    for size in (1, 2, 3) for prefix in (f"{n:0{size}d}" for n in range(10**size))
}


def country_calling_code(digits: str) -> str | None:
    """The country calling code that `digits` (an international number without +) starts with."""
    prefix = digits[:3]
    # `prefix` itself as the default marks a miss (not ASCII digits); searching again is exact either way.
    code = CALLING_CODE_OF_PREFIX.get(prefix, prefix)
    return _calling_code_by_search(prefix) if code is prefix else code
