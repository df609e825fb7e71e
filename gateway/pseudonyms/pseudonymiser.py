"""The Pseudonymiser: turns (partner, identifier type, mode) into a bound function with its keys already
derived, so the per-request cost is normalising the value and one HMAC or one FF1 encryption."""

from __future__ import annotations

import hashlib
import hmac

from gateway.pseudonyms.formats import FORMATS, IdentifierFormat, Transform
from gateway.pseudonyms.keyring import ID_TYPES, PartnerKeyring

MODES = ("hmac", "fpe")

# One partner key feeds two algorithms; each gets its own subkey so HMAC-SHA256 and AES never share key
# material.
_HMAC_SUBKEY_LABEL = b"pseudonym/hmac-sha256"
_FF1_SUBKEY_LABEL = b"pseudonym/ff1-aes256"


def _format(id_type: str) -> IdentifierFormat:
    fmt = FORMATS.get(id_type)
    if fmt is None:
        raise ValueError(f"unknown identifier type {id_type!r}; expected one of {', '.join(ID_TYPES)}")
    return fmt


def normalise(id_type: str, value: str) -> str:
    """The canonical spelling of `value` as an `id_type`; raises InvalidIdentifier if it is not one."""
    return _format(id_type).normalise(value)


def is_valid(id_type: str, value: str) -> bool:
    """Whether `value` is a valid `id_type` (in any accepted spelling)."""
    return _format(id_type).is_valid(value)


class Pseudonymiser:
    """Pseudonyms for every partner from one keyring. `version` arguments pick a key version other than
    the keyring's current one (to reproduce or re-identify pseudonyms issued before a rotation)."""

    __slots__ = ("keyring",)

    def __init__(self, keyring: PartnerKeyring) -> None:
        self.keyring = keyring

    def bind(self, partner_id: str, id_type: str, mode: str, *, version: int | None = None) -> Transform:
        """The pseudonym function of `partner_id` for `id_type` in `mode` ("hmac" or "fpe"). It raises
        InvalidIdentifier for a value that is not a valid `id_type`, or that `fpe` cannot encrypt."""
        fmt = _format(id_type)
        if mode == "hmac":
            return fmt.bind_hmac(self._subkey(partner_id, id_type, version, _HMAC_SUBKEY_LABEL))
        if mode == "fpe":
            return fmt.bind_fpe(self._subkey(partner_id, id_type, version, _FF1_SUBKEY_LABEL))
        raise ValueError(f"unknown pseudonym mode {mode!r}; expected one of {', '.join(MODES)}")

    def pseudonymise(self, partner_id: str, id_type: str, mode: str, value: str, *, version: int | None = None) -> str:
        """One pseudonym; for many values bind once and call the bound function."""
        return self.bind(partner_id, id_type, mode, version=version)(value)

    def bind_reverse(self, partner_id: str, id_type: str, *, version: int | None = None) -> Transform:
        """The inverse of `bind(partner_id, id_type, "fpe")`: an fpe pseudonym back to the normalised
        value (a MAC comes back in the token's separator style and case, which the forward function took
        from the original). Raises InvalidIdentifier for a token that is not such a pseudonym."""
        fmt = _format(id_type)
        return fmt.bind_reverse(self._subkey(partner_id, id_type, version, _FF1_SUBKEY_LABEL))

    def reidentify(self, partner_id: str, id_type: str, token: str, *, version: int | None = None) -> str:
        return self.bind_reverse(partner_id, id_type, version=version)(token)

    def _subkey(self, partner_id: str, id_type: str, version: int | None, label: bytes) -> bytes:
        partner_key = self.keyring.key_for(partner_id, id_type, version)
        return hmac.digest(partner_key, label, hashlib.sha256)
