"""Pseudonyms: per-partner keys (HKDF), FF1, and format-preserving pseudonyms per identifier type.

Owns: the identifier types (`ID_TYPES`) and how each is normalised and validated (`normalise`,
`is_valid`, also used by the policy's free-text scanner), the modes (`MODES`: one-way `hmac`,
reversible `fpe`), key derivation (`PartnerKeyring`) and the bound per-request functions
(`Pseudonymiser`). See docs/pseudonyms.md for what a partner sees per type.
"""

from __future__ import annotations

from gateway.pseudonyms.formats import EMAIL_DOMAIN, EMAIL_FPE_MAX_LENGTH, FORMATS, ZERO_UUID, luhn_check_digit
from gateway.pseudonyms.keyring import ID_TYPES, PartnerKeyring
from gateway.pseudonyms.pseudonymiser import MODES, Pseudonymiser, is_valid, normalise

__all__ = [
    "EMAIL_DOMAIN",
    "EMAIL_FPE_MAX_LENGTH",
    "FORMATS",
    "ID_TYPES",
    "MODES",
    "ZERO_UUID",
    "PartnerKeyring",
    "Pseudonymiser",
    "is_valid",
    "luhn_check_digit",
    "normalise",
]
