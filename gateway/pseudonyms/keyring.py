"""Per-partner pseudonym keys: one 32-byte key per (partner, identifier type, key version), derived from
the gateway's master key with HKDF-SHA256.

Binding the partner into the derivation is what makes two partners' pseudonyms of the same value
unlinkable; binding the type keeps an IMEI's key away from an email's; binding the version makes key
rotation a matter of raising a number (old pseudonyms stay reproducible with the old version).
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ID_TYPES = ("imei", "imsi", "iccid", "mac", "android_id", "advertising_id", "phone", "email", "token")

# Changing this label changes every pseudonym of every partner: it versions the derivation scheme itself,
# not a partner's key (that is `version`).
_INFO_LABEL = b"partner-data-gateway/pseudonym-key/v1"


def _field(data: bytes) -> bytes:
    # Length-prefixed, so ("ab", "c") and ("a", "bc") can never derive the same key.
    return struct.pack(">H", len(data)) + data


class PartnerKeyring:
    """Derives partner keys from the master key. `version` is the key version used when a caller does
    not name one (the current version); older versions stay derivable for re-identification."""

    __slots__ = ("_master_key", "version")

    def __init__(self, master_key: bytes, version: int = 1) -> None:
        if len(master_key) < 32:
            raise ValueError("master key must be at least 32 bytes")
        self._master_key = bytes(master_key)
        self.version = _check_version(version)

    def __repr__(self) -> str:
        return f"PartnerKeyring(version={self.version}, master_key=<hidden>)"

    def key_for(self, partner_id: str, id_type: str, version: int | None = None) -> bytes:
        """The 32-byte key of `partner_id` for `id_type` at `version` (default: the keyring's version)."""
        if not partner_id or partner_id != partner_id.strip():
            raise ValueError("partner id must be non-empty without surrounding white space")
        if id_type not in ID_TYPES:
            raise ValueError(f"unknown identifier type {id_type!r}; expected one of {', '.join(ID_TYPES)}")
        key_version = self.version if version is None else _check_version(version)
        info = (
            _INFO_LABEL
            + _field(partner_id.encode("utf-8"))
            + _field(id_type.encode("ascii"))
            + struct.pack(">I", key_version)
        )
        return HKDF(algorithm=SHA256(), length=32, salt=None, info=info).derive(self._master_key)


def _check_version(version: int) -> int:
    # bool is an int subclass; True as a key version is a bug, not version 1.
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**32:
        raise ValueError("key version must be an integer from 1 to 2**32-1")
    return version
