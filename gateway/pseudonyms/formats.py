"""What each identifier type looks like: how a value is normalised and validated, and how its keyed
pseudonym is built in mode `hmac` (one-way) and mode `fpe` (FF1, reversible) so that it still looks like
that type to the partner.

Every format follows the same construction: split the normalised value into the part that stays visible
(an IMSI's MCC and MNC, an ICCID's 89, a phone's country code, a MAC's two flag bits, check digits) and
the part that identifies the person; replace only the latter, then recompute whatever the kept part
implies (Luhn digit, flag bits). In `fpe` the kept part is the FF1 tweak, so the same subscriber digits
under two different operators do not map alike.

Errors name the type and the reason, never the value (they end up in problem bodies and logs).
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from gateway.errors import InvalidIdentifier
from gateway.pseudonyms.ff1 import ALPHABET, FF1
from gateway.pseudonyms.tables import CALLING_CODE_OF_PREFIX, country_calling_code, mnc_length

Transform = Callable[[str], str]

# Reserved for documentation and examples (RFC 2606 section 3, RFC 6761 section 6.5): mail to it is never
# delivered to anyone, yet ordinary validators accept it, unlike the special-use TLDs .invalid or .test.
EMAIL_DOMAIN = "example.com"

_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


def _hmac_states(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """The SHA-256 states after the inner and the outer padded key of HMAC-SHA256 (RFC 2104)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    block = key.ljust(64, b"\0")
    return hashlib.sha256(block.translate(_IPAD)), hashlib.sha256(block.translate(_OPAD))


def keyed_sha256(key: bytes) -> Callable[[bytes], bytes]:
    """HMAC-SHA256 (RFC 2104) under `key`, with the inner and outer hash states of the padded key
    computed once: a call then costs two state copies and two short hashes, under half of what
    `hmac.digest` spends re-deriving both pads on every call. Equality with `hmac` is tested."""
    inner, outer = _hmac_states(key)

    def mac(message: bytes) -> bytes:
        inner_hash = inner.copy()
        inner_hash.update(message)
        outer_hash = outer.copy()
        outer_hash.update(inner_hash.digest())
        return outer_hash.digest()

    return mac


def _invalid(id_type: str, reason: str) -> InvalidIdentifier:
    return InvalidIdentifier(f"{id_type}: {reason}", reason="invalid-identifier")


def _text(id_type: str, value: object) -> str:
    if not isinstance(value, str):
        raise _invalid(id_type, "expected a string")
    return value.strip()


def _ascii_digits(text: str) -> bool:
    # str.isdigit alone accepts other scripts' digits (e.g. Arabic-Indic), which no validator downstream does.
    return text.isascii() and text.isdigit()


def _without_separators(text: str) -> str:
    return "".join(text.split()).replace("-", "")


# Luhn: digits in odd positions counting from the right of the body (the check digit's neighbours) are
# doubled (and 10..18 reduced to their digit sum). bytes.translate maps every ASCII digit to its
# contribution in C, which is twice as fast as a Python loop on the per-request path.
_LUHN_DOUBLED = bytes(range(256)).maketrans(b"0123456789", bytes(((2 * d) // 10 + (2 * d) % 10) for d in range(10)))
_LUHN_PLAIN = bytes(range(256)).maketrans(b"0123456789", bytes(range(10)))


def luhn_check_digit(body: str) -> str:
    """The Luhn (ISO/IEC 7812-1) check digit to append to a string of ASCII digits."""
    data = body.encode("ascii")
    # The undoubled digits are summed as their ASCII codes (one translate fewer), less 48 for each.
    total = sum(data[::-2].translate(_LUHN_DOUBLED) + data[-2::-2]) - 48 * (len(data) // 2)
    return str(-total % 10)


def _luhn_valid(number: str) -> bool:
    """Whether the last of `number`'s ASCII digits is the Luhn check digit of the others: the same test as
    `luhn_check_digit(number[:-1]) == number[-1]`, without the slice and the string of the digit."""
    data = number.encode("ascii")
    # As in luhn_check_digit: the undoubled digits summed as ASCII codes, less 48 for each.
    return (sum(data[-2::-2].translate(_LUHN_DOUBLED) + data[::-2]) - 48 * ((len(data) + 1) // 2)) % 10 == 0


def _luhn_sums(double_units: bool) -> tuple[int, ...]:
    """The Luhn contributions of each 4-digit group 0000..9999, with the units digit doubled (a body that
    a check digit will follow) or not (a whole number ending in its check digit). A group of even length
    keeps the doubling pattern the same in every group, so a number's sum is its groups' sums."""
    doubled = [(2 * d) // 10 + (2 * d) % 10 for d in range(10)]
    # Each pair of digits (tens, units) of a group follows the same pattern.
    pairs = [doubled[t] + u if not double_units else t + doubled[u] for t in range(10) for u in range(10)]
    return tuple(high + low for high in pairs for low in pairs)


# For the IMEI's 15 digits, on the integer: four table lookups instead of per-digit work on the text.
_LUHN_BODY_SUMS = _luhn_sums(double_units=True)
_LUHN_WHOLE_SUMS = _luhn_sums(double_units=False)


def _imei_luhn_valid(digits: bytes) -> bool:
    """`_luhn_valid` for exactly 15 ASCII digits (given as bytes), on their integer in four 4-digit groups.
    The one division by 10**8 leaves numbers below 2**30, whose divisions CPython does in one step."""
    high, low = divmod(int(digits), 100_000_000)
    sums = _LUHN_WHOLE_SUMS
    return (sums[low % 10_000] + sums[low // 10_000] + sums[high % 10_000] + sums[high // 10_000]) % 10 == 0


# 10**n for every count a 256-bit digest can fill (78 digits): a power per call cost as much as the rest.
_POW10 = tuple(10**n for n in range(78))


def _digits(digest: bytes, count: int) -> str:
    # A 256-bit digest reduced modulo 10**count (count <= 21 here): the bias is below 2**-180, far below
    # anything observable, so no rejection sampling is needed.
    modulus = _POW10[count] if 0 <= count < 78 else 10**count
    return str(int.from_bytes(digest, "big") % modulus).zfill(count)


def format_base36(number: int) -> str:
    """`number` in base 36 over 0-9a-z (the FF1 alphabet), no padding."""
    out = []
    while number:
        number, digit = divmod(number, 36)
        out.append(ALPHABET[digit])
    return "".join(reversed(out)) or "0"


class IdentifierFormat(ABC):
    """One identifier type. `normalise` gives the canonical spelling the keys are applied to."""

    id_type: ClassVar[str]

    @abstractmethod
    def normalise(self, value: str) -> str:
        """The canonical form of `value`; raises InvalidIdentifier when it is not a valid identifier."""

    @abstractmethod
    def bind_hmac(self, key: bytes) -> Transform:
        """The one-way pseudonym function for a 32-byte HMAC-SHA256 key."""

    @abstractmethod
    def bind_fpe(self, key: bytes) -> Transform:
        """The reversible pseudonym function for a 32-byte AES-256 key (FF1)."""

    @abstractmethod
    def bind_reverse(self, key: bytes) -> Transform:
        """The inverse of `bind_fpe(key)`: pseudonym back to the normalised value."""

    def is_valid(self, value: str) -> bool:
        try:
            self.normalise(value)
        except InvalidIdentifier:
            return False
        return True

    def _not_a_pseudonym(self) -> InvalidIdentifier:
        return _invalid(self.id_type, "not a reversible (fpe) pseudonym of this partner and key version")


class FF1Format(IdentifierFormat):
    """A type whose reversible pseudonym is one FF1 cipher over part of the normalised value: `bind_fpe`
    and `bind_reverse` differ only in the cipher's direction, so each type writes the framing once."""

    ff1_radix: ClassVar[int]

    def bind_fpe(self, key: bytes) -> Transform:
        return self._bind_ff1(FF1(key, self.ff1_radix).encrypt)

    def bind_reverse(self, key: bytes) -> Transform:
        return self._bind_ff1(FF1(key, self.ff1_radix).decrypt)

    @abstractmethod
    def _bind_ff1(self, cipher: Callable[[str, bytes], str]) -> Transform:
        """The framing around the cipher (either direction): which part of the value it transforms."""


class ImeiFormat(FF1Format):
    """15 digits: 14 identifying digits (TAC and serial) and a Luhn check digit. The pseudonym replaces
    all 14 (a TAC would name the device model) and recomputes the check digit."""

    id_type = "imei"
    ff1_radix = 10

    def normalise(self, value: str) -> str:
        # Already 15 ASCII digits (the usual spelling): nothing to strip; the slow path would return it as is.
        if type(value) is str and len(value) == 15 and value.isdigit() and value.isascii():
            if not _imei_luhn_valid(value.encode()):
                raise _invalid("imei", "check digit does not match")
            return value
        digits = _without_separators(_text("imei", value))
        if len(digits) != 15 or not _ascii_digits(digits):
            raise _invalid("imei", "expected 15 digits")
        if not _luhn_valid(digits):
            raise _invalid("imei", "check digit does not match")
        return digits

    def bind_hmac(self, key: bytes) -> Transform:
        inner, outer = _hmac_states(key)
        inner_copy, outer_copy = inner.copy, outer.copy
        normalise = self.normalise
        from_bytes, modulus = int.from_bytes, _POW10[14]
        sums = _LUHN_BODY_SUMS

        def pseudonymise(value: str) -> str:
            # normalise's fast path, keyed_sha256, _digits(..., 14) and luhn_check_digit written out: this
            # runs once per device in a request. The body's check digit is taken from its integer.
            if type(value) is str and len(value) == 15 and value.isdigit() and value.isascii():
                data = value.encode()
                if not _imei_luhn_valid(data):
                    raise _invalid("imei", "check digit does not match")
            else:
                data = normalise(value).encode()
            mac = inner_copy()
            mac.update(data)
            outer_mac = outer_copy()
            outer_mac.update(mac.digest())
            body = from_bytes(outer_mac.digest(), "big") % modulus
            high, low = divmod(body, 100_000_000)
            total = sums[low % 10_000] + sums[low // 10_000] + sums[high % 10_000] + sums[high // 10_000]
            # The 14 digits (leading zeros kept) and the check digit, as one 15-digit number.
            return str(body * 10 + -total % 10).zfill(15)

        return pseudonymise

    def _bind_ff1(self, cipher: Callable[[str, bytes], str]) -> Transform:
        # The 14 digits before the check digit go through FF1 (either way); the Luhn digit is recomputed.
        normalise = self.normalise

        def transform(value: str) -> str:
            body = cipher(normalise(value)[:14], b"")
            return body + luhn_check_digit(body)

        return transform


class ImsiFormat(FF1Format):
    """14 or 15 digits: MCC (3), MNC (2 or 3, see tables.mnc_length) and the MSIN. Only the MSIN, the
    subscriber part, is replaced; the network stays visible (partners route and rate by it)."""

    id_type = "imsi"
    ff1_radix = 10

    def normalise(self, value: str) -> str:
        digits = _without_separators(_text("imsi", value))
        if len(digits) not in (14, 15) or not _ascii_digits(digits):
            raise _invalid("imsi", "expected 14 or 15 digits")
        if digits[0] not in "234567" and not digits.startswith(("001", "9")):
            raise _invalid("imsi", "not a mobile country code")
        return digits

    @staticmethod
    def split(imsi: str) -> tuple[str, str]:
        """(MCC+MNC, MSIN) of a normalised IMSI."""
        cut = 3 + mnc_length(imsi)
        return imsi[:cut], imsi[cut:]

    def bind_hmac(self, key: bytes) -> Transform:
        keyed = keyed_sha256(key)
        normalise, split = self.normalise, self.split

        def pseudonymise(value: str) -> str:
            imsi = normalise(value)
            network, msin = split(imsi)
            return network + _digits(keyed(imsi.encode()), len(msin))

        return pseudonymise

    def _bind_ff1(self, cipher: Callable[[str, bytes], str]) -> Transform:
        normalise, split = self.normalise, self.split

        def apply(value: str) -> str:
            network, msin = split(normalise(value))
            return network + cipher(msin, network.encode())

        return apply


class IccidFormat(FF1Format):
    """ITU-T E.118 SIM serial: `89` (telecom), 15 to 19 further digits, and a Luhn check digit. The
    digits between `89` and the check digit are replaced, the check digit recomputed."""

    id_type = "iccid"
    ff1_radix = 10

    def normalise(self, value: str) -> str:
        digits = _without_separators(_text("iccid", value))
        if not 18 <= len(digits) <= 22 or not _ascii_digits(digits):
            raise _invalid("iccid", "expected 18 to 22 digits")
        if not digits.startswith("89"):
            raise _invalid("iccid", "expected the telecom prefix 89")
        if luhn_check_digit(digits[:-1]) != digits[-1]:
            raise _invalid("iccid", "check digit does not match")
        return digits

    def bind_hmac(self, key: bytes) -> Transform:
        keyed = keyed_sha256(key)
        normalise = self.normalise

        def pseudonymise(value: str) -> str:
            iccid = normalise(value)
            body = "89" + _digits(keyed(iccid.encode()), len(iccid) - 3)
            return body + luhn_check_digit(body)

        return pseudonymise

    def _bind_ff1(self, cipher: Callable[[str, bytes], str]) -> Transform:
        normalise = self.normalise

        def apply(value: str) -> str:
            body = "89" + cipher(normalise(value)[2:-1], b"")
            return body + luhn_check_digit(body)

        return apply


# MAC spellings, in one pattern so a value costs one match: pairs with ':' or '-' (one separator
# throughout), Cisco's dotted quads, or bare hex.
_MAC = re.compile(
    r"[0-9a-fA-F]{2}(?P<pair>[:-])[0-9a-fA-F]{2}(?:(?P=pair)[0-9a-fA-F]{2}){4}"
    r"|[0-9a-fA-F]{4}(?P<dot>\.)[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}"
    r"|[0-9a-fA-F]{12}"
)
_MAC_LOCAL = 0x02 << 40  # I/G and U/L flags live in the first octet, the 48-bit value's top byte
_MAC_MULTICAST = 0x01 << 40
_LOW_40 = (1 << 40) - 1


def _parse_mac(value: str) -> tuple[int, str, bool]:
    """(48-bit value, separator, upper case) of a MAC in any of the accepted spellings."""
    text = _text("mac", value)
    match = _MAC.fullmatch(text)
    if match is None:
        raise _invalid("mac", "expected 12 hex digits as aa:bb:cc:dd:ee:ff, aa-bb-.., aabb.ccdd.eeff or bare")
    separator = match.group("pair") or match.group("dot") or ""
    hex_digits = text.replace(separator, "") if separator else text
    # Mixed case gives lower case: only an all-upper-case input is echoed in upper case.
    return int(hex_digits, 16), separator, hex_digits.isupper()


def _render_mac(mac: int, separator: str, upper: bool) -> str:
    h = f"{mac:012X}" if upper else f"{mac:012x}"
    if not separator:
        return h
    if separator == ".":
        return f"{h[:4]}.{h[4:8]}.{h[8:]}"
    s = separator
    return f"{h[:2]}{s}{h[2:4]}{s}{h[4:6]}{s}{h[6:8]}{s}{h[8:10]}{s}{h[10:]}"


class MacFormat(IdentifierFormat):
    """EUI-48. The pseudonym is a locally administered unicast address (U/L bit set, I/G bit clear), so
    it can never be a vendor-assigned address, written in the input's separator style and case; the
    canonical form is lower-case colon pairs. In `fpe` the 46 other bits are encrypted, so only
    universally administered unicast inputs (whose two flag bits are known) can be reversed."""

    id_type = "mac"

    def normalise(self, value: str) -> str:
        return _render_mac(_parse_mac(value)[0], ":", False)

    def bind_hmac(self, key: bytes) -> Transform:
        keyed = keyed_sha256(key)
        def pseudonymise(value: str) -> str:
            mac, separator, upper = _parse_mac(value)
            canonical = _render_mac(mac, ":", False)
            drawn = int.from_bytes(keyed(canonical.encode())[:6], "big")
            return _render_mac((drawn | _MAC_LOCAL) & ~_MAC_MULTICAST, separator, upper)

        return pseudonymise

    def bind_fpe(self, key: bytes) -> Transform:
        encrypt = FF1(key, 2).encrypt

        def pseudonymise(value: str) -> str:
            mac, separator, upper = _parse_mac(value)
            if mac & (_MAC_LOCAL | _MAC_MULTICAST):
                raise _invalid(
                    "mac", "fpe needs a universally administered unicast address (the pseudonym sets the flag bits)"
                )
            free = ((mac >> 42) << 40) | (mac & _LOW_40)  # the 46 bits that are not flags
            out = int(encrypt(f"{free:046b}"), 2)
            return _render_mac(((out >> 40) << 42) | _MAC_LOCAL | (out & _LOW_40), separator, upper)

        return pseudonymise

    def bind_reverse(self, key: bytes) -> Transform:
        decrypt = FF1(key, 2).decrypt

        def reidentify(token: str) -> str:
            mac, separator, upper = _parse_mac(token)
            if mac & (_MAC_LOCAL | _MAC_MULTICAST) != _MAC_LOCAL:
                raise self._not_a_pseudonym()
            free = ((mac >> 42) << 40) | (mac & _LOW_40)
            out = int(decrypt(f"{free:046b}"), 2)
            return _render_mac(((out >> 40) << 42) | (out & _LOW_40), separator, upper)

        return reidentify


_ANDROID_ID = re.compile(r"[0-9a-fA-F]{16}")


class AndroidIdFormat(IdentifierFormat):
    """Settings.Secure.ANDROID_ID: 64 bits as 16 lower-case hex digits; all 64 are replaced."""

    id_type = "android_id"

    def normalise(self, value: str) -> str:
        text = _text("android_id", value)
        if _ANDROID_ID.fullmatch(text) is None:
            raise _invalid("android_id", "expected 16 hex digits")
        return text.lower()

    def bind_hmac(self, key: bytes) -> Transform:
        keyed = keyed_sha256(key)
        normalise = self.normalise

        def pseudonymise(value: str) -> str:
            return keyed(normalise(value).encode())[:8].hex()

        return pseudonymise

    def bind_fpe(self, key: bytes) -> Transform:
        normalise, encrypt = self.normalise, FF1(key, 16).encrypt
        return lambda value: encrypt(normalise(value))

    def bind_reverse(self, key: bytes) -> Transform:
        normalise, decrypt = self.normalise, FF1(key, 16).decrypt
        return lambda token: decrypt(normalise(token))


_UUID_HYPHENATED = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_UUID_BARE = re.compile(r"[0-9a-fA-F]{32}")
_UUID_V4_MASK = (0xF << 76) | (0x3 << 62)
_UUID_V4_BITS = (0x4 << 76) | (0x2 << 62)  # version 4, RFC 9562 variant 10
_LOW_62 = (1 << 62) - 1
# The all-zero advertising ID is what iOS (App Tracking Transparency denied) and Android (ads
# personalisation opted out) report instead of an ID: it is shared by every such device and identifies
# no one, and partners recognise it as "limit ad tracking". Replacing it would invent an identifier
# where the user chose to have none, so it passes unchanged in every mode.
ZERO_UUID = "00000000-0000-0000-0000-000000000000"


def _render_uuid(value: int) -> str:
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class AdvertisingIdFormat(FF1Format):
    """Advertising ID (Google GAID, Apple IDFA): a UUID. Pseudonyms are random-looking version-4 UUIDs in
    lower-case canonical form. `fpe` encrypts the 122 random bits of a version-4 input and keeps the
    version and variant bits, so it needs a version-4 input (as real advertising IDs are)."""

    id_type = "advertising_id"
    ff1_radix = 2

    def normalise(self, value: str) -> str:
        return _render_uuid(self._parse(value))

    @staticmethod
    def _parse(value: str) -> int:
        text = _text("advertising_id", value)
        if _UUID_HYPHENATED.fullmatch(text) is not None:
            return int(text.replace("-", ""), 16)
        if _UUID_BARE.fullmatch(text) is not None:
            return int(text, 16)
        raise _invalid("advertising_id", "expected a UUID (8-4-4-4-12 hex digits)")

    def bind_hmac(self, key: bytes) -> Transform:
        keyed = keyed_sha256(key)
        parse = self._parse

        def pseudonymise(value: str) -> str:
            uuid = parse(value)
            if uuid == 0:
                return ZERO_UUID
            drawn = int.from_bytes(keyed(_render_uuid(uuid).encode())[:16], "big")
            return _render_uuid((drawn & ~_UUID_V4_MASK) | _UUID_V4_BITS)

        return pseudonymise

    def _bind_ff1(self, cipher: Callable[[str, bytes], str]) -> Transform:
        parse = self._parse

        def apply(value: str) -> str:
            uuid = parse(value)
            if uuid == 0:
                return ZERO_UUID
            if uuid & _UUID_V4_MASK != _UUID_V4_BITS:
                raise _invalid("advertising_id", "fpe needs a version-4 UUID (RFC 9562 variant)")
            free = ((uuid >> 80) << 74) | (((uuid >> 64) & 0xFFF) << 62) | (uuid & _LOW_62)
            out = int(cipher(f"{free:0122b}", b""), 2)
            return _render_uuid(((out >> 74) << 80) | (((out >> 62) & 0xFFF) << 64) | (out & _LOW_62) | _UUID_V4_BITS)

        return apply


_PHONE_NOISE = re.compile(r"[\s\-.()/]")
_PHONE_MIN_NATIONAL = 4
_PHONE_FPE_MIN_NATIONAL = 7  # the first national digit is kept; FF1 needs at least 6 more


class PhoneFormat(FF1Format):
    """International phone number, normalised to E.164 `+CC...`. The pseudonym keeps the country calling
    code and the first national digit as written (for a mobile it mostly tells the kind of number; for a
    fixed line in plans with geographic area codes it narrows the region; a trunk 0 written after the
    country code, `+82 010...`, is kept as a 0); the remaining national digits are replaced, same count,
    with no regard to the numbering plan, so the result is often a stranger's valid number and sometimes
    an invalid one (docs/pseudonyms.md). Numbers without an international prefix (`+` or `00`) are
    refused: their country is unknown."""

    id_type = "phone"
    ff1_radix = 10

    def normalise(self, value: str) -> str:
        return self._parse(value)[0]

    @staticmethod
    def _parse(value: str) -> tuple[str, str]:
        """(normalised number, its country calling code), so the code is looked up once per value."""
        if type(value) is str and value[:1] == "+" and (digits := value[1:]).isdigit() and digits.isascii():
            # Already E.164 (the usual spelling): nothing to strip, and `number` is `value` itself.
            number = value
        else:
            text = _text("phone", value)
            # "+44 (0)20 ..." writes the national trunk prefix in brackets; it is not dialled internationally.
            digits = _PHONE_NOISE.sub("", text.replace("(0)", ""))
            if digits.startswith("+"):
                digits = digits[1:]
            elif digits.startswith("00"):
                digits = digits[2:]
            else:
                raise _invalid("phone", "expected international form (+ or 00 and the country code)")
            if not _ascii_digits(digits):
                raise _invalid("phone", "expected digits")
            number = "+" + digits
        code = country_calling_code(digits)
        if code is None:
            raise _invalid("phone", "unknown country calling code")
        if len(digits) > 15 or len(digits) - len(code) < _PHONE_MIN_NATIONAL:
            raise _invalid("phone", "expected 4 or more national digits and at most 15 digits in all (E.164)")
        return number, code

    def _split(self, value: str) -> tuple[str, str, str]:
        """(normalised number, kept prefix "+CC" and first national digit, replaced national digits)."""
        number, code = self._parse(value)
        cut = 2 + len(code)
        return number, number[:cut], number[cut:]

    def bind_hmac(self, key: bytes) -> Transform:
        inner, outer = _hmac_states(key)
        inner_copy, outer_copy = inner.copy, outer.copy
        parse = self._parse
        code_of_prefix, from_bytes, powers = CALLING_CODE_OF_PREFIX, int.from_bytes, _POW10

        def pseudonymise(value: str) -> str:
            # `_split`, keyed_sha256 and `_digits` written out: "+CC" and the first national digit stay, the
            # rest is replaced. An E.164 value whose code the table knows skips `_parse` (the same tests).
            if (type(value) is str and value[:1] == "+" and (digits := value[1:]).isdigit() and digits.isascii()
                    and (code := code_of_prefix.get(digits[:3])) is not None
                    and len(digits) <= 15 and len(digits) - len(code) >= _PHONE_MIN_NATIONAL):
                number = value
            else:
                number, code = parse(value)
            cut = 2 + len(code)
            mac = inner_copy()
            mac.update(number.encode())
            outer_mac = outer_copy()
            outer_mac.update(mac.digest())
            count = len(number) - cut  # at most 14 (E.164): within the table
            return number[:cut] + str(from_bytes(outer_mac.digest(), "big") % powers[count]).zfill(count)

        return pseudonymise

    def _bind_ff1(self, cipher: Callable[[str, bytes], str]) -> Transform:
        split = self._split

        def apply(value: str) -> str:
            _, kept, replaced = split(value)
            if len(replaced) < _PHONE_FPE_MIN_NATIONAL - 1:
                raise _invalid("phone", f"fpe needs at least {_PHONE_FPE_MIN_NATIONAL} national digits")
            return kept + cipher(replaced, kept.encode())

        return apply


_EMAIL_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_EMAIL_LOCAL = re.compile(rf"{_EMAIL_ATOM}(?:\.{_EMAIL_ATOM})*")
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_EMAIL_DOMAIN_RE = re.compile(rf"(?:{_DNS_LABEL}\.)+[a-z](?:[a-z0-9-]{{0,61}}[a-z0-9])?")
# fpe packs the whole normalised address into the pseudonym's 64-character local part: the address as a
# bijective base-56 number over every character a normalised address can hold, written in base 36.
_EMAIL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.@-_+!#$%&'*/=?^`{|}~"
_EMAIL_INDEX = {ch: i + 1 for i, ch in enumerate(_EMAIL_CHARS)}
_LOCAL_MAX = 64
_EMAIL_HMAC_LENGTH = 20  # 36**20 > 2**103: collisions are out of reach for any realistic population
_FF1_MIN_36 = 4


def _longest_packable() -> int:
    capacity = 36**_LOCAL_MAX
    length, largest = 0, 0
    while True:
        largest = largest * len(_EMAIL_CHARS) + len(_EMAIL_CHARS)  # all characters at the top digit
        if largest >= capacity:
            return length
        length += 1


EMAIL_FPE_MAX_LENGTH = _longest_packable()


class EmailFormat(IdentifierFormat):
    """E-mail address, normalised to lower case without surrounding white space (the usual matching
    rule; providers treat local parts case-insensitively in practice). ASCII addresses only; quoted local
    parts and address literals are refused. The pseudonym is `<local>@example.com`: 20 base-36
    characters in `hmac`; in `fpe` the FF1 encryption of the whole address, so it is reversible only
    for addresses of at most EMAIL_FPE_MAX_LENGTH characters."""

    id_type = "email"

    def normalise(self, value: str) -> str:
        text = _text("email", value)
        if not text.isascii():
            raise _invalid("email", "only ASCII addresses are supported")
        address = text.lower()
        local, at, domain = address.rpartition("@")
        if not at or len(address) > 254 or not 1 <= len(local) <= _LOCAL_MAX or len(domain) > 253:
            raise _invalid("email", "expected local@domain within the RFC 5321 length limits")
        if _EMAIL_LOCAL.fullmatch(local) is None:
            raise _invalid("email", "local part is not a dot-atom")
        if _EMAIL_DOMAIN_RE.fullmatch(domain) is None:
            raise _invalid("email", "domain is not a host name")
        return address

    def bind_hmac(self, key: bytes) -> Transform:
        keyed = keyed_sha256(key)
        normalise = self.normalise

        def pseudonymise(value: str) -> str:
            drawn = int.from_bytes(keyed(normalise(value).encode()), "big")
            return f"{format_base36(drawn % 36**_EMAIL_HMAC_LENGTH).zfill(_EMAIL_HMAC_LENGTH)}@{EMAIL_DOMAIN}"

        return pseudonymise

    def bind_fpe(self, key: bytes) -> Transform:
        normalise, encrypt = self.normalise, FF1(key, 36).encrypt

        def pseudonymise(value: str) -> str:
            address = normalise(value)
            if len(address) > EMAIL_FPE_MAX_LENGTH:
                raise _invalid("email", f"fpe needs an address of at most {EMAIL_FPE_MAX_LENGTH} characters")
            number = 0
            for ch in address:
                number = number * len(_EMAIL_CHARS) + _EMAIL_INDEX[ch]
            packed = format_base36(number)
            return f"{encrypt(packed.zfill(_FF1_MIN_36))}@{EMAIL_DOMAIN}"

        return pseudonymise

    def bind_reverse(self, key: bytes) -> Transform:
        normalise, decrypt = self.normalise, FF1(key, 36).decrypt

        def reidentify(token: str) -> str:
            local, _, domain = normalise(token).rpartition("@")
            if domain != EMAIL_DOMAIN or len(local) < _FF1_MIN_36 or not local.isalnum():
                raise self._not_a_pseudonym()
            number = int(decrypt(local), 36)
            chars = []
            while number:
                number, digit = divmod(number - 1, len(_EMAIL_CHARS))
                chars.append(_EMAIL_CHARS[digit])
            address = "".join(reversed(chars))
            if not self.is_valid(address):
                raise self._not_a_pseudonym()
            return address

        return reidentify


_TOKEN_MAX = 256


class TokenFormat(IdentifierFormat):
    """Any other opaque identifier (customer number, account id): printable text up to 256 characters,
    compared exactly after trimming surrounding white space. `hmac` gives 32 lower-case hex digits; `fpe`
    gives a base-36 string about 1.6 times the UTF-8 length, reversible for up to 256 bytes."""

    id_type = "token"

    def normalise(self, value: str) -> str:
        text = _text("token", value)
        if not text or len(text) > _TOKEN_MAX:
            raise _invalid("token", f"expected 1 to {_TOKEN_MAX} characters")
        if not text.isprintable():
            raise _invalid("token", "control or other non-printable characters are not allowed")
        return text

    def bind_hmac(self, key: bytes) -> Transform:
        keyed = keyed_sha256(key)
        normalise = self.normalise

        def pseudonymise(value: str) -> str:
            return keyed(normalise(value).encode())[:16].hex()

        return pseudonymise

    def bind_fpe(self, key: bytes) -> Transform:
        normalise, encrypt = self.normalise, FF1(key, 36).encrypt

        def pseudonymise(value: str) -> str:
            data = normalise(value).encode()
            if len(data) > _TOKEN_MAX:
                raise _invalid("token", f"fpe needs at most {_TOKEN_MAX} UTF-8 bytes")
            # A leading 0x01 byte makes the length recoverable from the number.
            return encrypt(format_base36(int.from_bytes(b"\x01" + data, "big")).zfill(_FF1_MIN_36))

        return pseudonymise

    def bind_reverse(self, key: bytes) -> Transform:
        decrypt = FF1(key, 36).decrypt
        alphabet = frozenset(ALPHABET)

        def reidentify(token: str) -> str:
            text = _text("token", token)
            if not _FF1_MIN_36 <= len(text) <= 2 * _TOKEN_MAX or not alphabet.issuperset(text):
                raise self._not_a_pseudonym()
            number = int(decrypt(text), 36)
            data = number.to_bytes((number.bit_length() + 7) // 8, "big")
            try:
                if data[:1] != b"\x01":
                    raise ValueError("no length marker")
                return self.normalise(data[1:].decode("utf-8"))
            except (ValueError, InvalidIdentifier):
                raise self._not_a_pseudonym() from None

        return reidentify


FORMATS: dict[str, IdentifierFormat] = {
    fmt.id_type: fmt
    for fmt in (
        ImeiFormat(),
        ImsiFormat(),
        IccidFormat(),
        MacFormat(),
        AndroidIdFormat(),
        AdvertisingIdFormat(),
        PhoneFormat(),
        EmailFormat(),
        TokenFormat(),
    )
}
