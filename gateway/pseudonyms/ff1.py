"""FF1 format-preserving encryption (NIST SP 800-38G, Rev. 1) over the alphabet 0-9a-z, with AES from
`cryptography`.

One `FF1` object holds one AES-ECB encryptor for its key and reuses it for every call: AES-ECB of
independent blocks is exactly the block cipher CIPH_K of the standard, and building a new cipher context
per round would cost more than the round itself. The CBC-MAC (PRF) is chained by hand on top of it, and
the part of the PRF input that depends only on the length and tweak (the block P and any full blocks of
the tweak) is computed once per (length, tweak) and cached.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_ROUNDS = 10
# SP 800-38G Rev. 1 requires radix**minlen >= 1,000,000: smaller domains can be enumerated or attacked.
_MIN_DOMAIN = 1_000_000
_MAX_LEN = 2**32 - 1
_PLAN_CACHE_LIMIT = 256  # distinct (length, tweak) pairs kept per key; the gateway uses only a few


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything about one (length, tweak) that does not change between rounds or calls."""

    u: int
    v: int
    b: int
    d: int
    modulus_u: int
    modulus_v: int
    state: int  # CBC-MAC state after P and the constant full blocks of Q
    q_prefix: bytes  # the constant bytes of Q after those full blocks (tweak tail and zero padding)
    extra_blocks: int  # AES blocks beyond R needed to make S at least d bytes
    # When [i] || NUM(B) fits in Q's last block (b <= 15, every identifier here), that block is
    # q_prefix || [i] || NUM(B) and is built as an integer: last_block_base | i << round_shift | NUM(B).
    single_block: bool
    last_block_base: int
    round_shift: int


class FF1:
    """FF1 with a 128, 192 or 256-bit AES key over the first `radix` characters of 0-9a-z."""

    __slots__ = ("_digits_re", "_ecb", "_min_len", "_plans", "radix")

    def __init__(self, key: bytes, radix: int) -> None:
        if len(key) not in (16, 24, 32):
            raise ValueError("FF1 key must be 16, 24 or 32 bytes (AES-128/192/256)")
        if isinstance(radix, bool) or not 2 <= radix <= len(ALPHABET):
            raise ValueError(f"FF1 radix must be between 2 and {len(ALPHABET)}")
        self.radix = radix
        self._ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - CIPH_K of SP 800-38G
        min_len = 2
        while radix**min_len < _MIN_DOMAIN:
            min_len += 1
        self._min_len = min_len
        self._digits_re = re.compile(f"[{re.escape(ALPHABET[:radix])}]*")
        self._plans: dict[tuple[int, bytes], _Plan] = {}

    @property
    def min_length(self) -> int:
        """The shortest input this radix allows (radix**length must reach one million)."""
        return self._min_len

    def encrypt(self, digits: str, tweak: bytes = b"") -> str:
        """Encrypt a string of radix digits; the result has the same length and alphabet."""
        plan = self._plan(digits, tweak)
        radix = self.radix
        a = int(digits[: plan.u], radix)
        b = int(digits[plan.u :], radix)
        for i in range(_ROUNDS):
            y = self._round_value(plan, i, b)
            if i % 2 == 0:
                a, b = b, (a + y) % plan.modulus_u
            else:
                a, b = b, (a + y) % plan.modulus_v
        # After an even number of rounds A has length u and B length v again.
        return _to_digits(a, plan.u, radix) + _to_digits(b, plan.v, radix)

    def decrypt(self, digits: str, tweak: bytes = b"") -> str:
        """Invert `encrypt` for the same key, radix and tweak."""
        plan = self._plan(digits, tweak)
        radix = self.radix
        a = int(digits[: plan.u], radix)
        b = int(digits[plan.u :], radix)
        for i in range(_ROUNDS - 1, -1, -1):
            y = self._round_value(plan, i, a)
            if i % 2 == 0:
                a, b = (b - y) % plan.modulus_u, a
            else:
                a, b = (b - y) % plan.modulus_v, a
        return _to_digits(a, plan.u, radix) + _to_digits(b, plan.v, radix)

    def _round_value(self, plan: _Plan, i: int, half: int) -> int:
        """y = NUM(S) for round i, where Q ends with [i]_1 || [NUM(half)]_b (steps 6.i-6.iv)."""
        update = self._ecb.update
        if plan.single_block:
            block = plan.last_block_base | (i << plan.round_shift) | half
            state = int.from_bytes(update((plan.state ^ block).to_bytes(16, "big")), "big")
        else:
            tail = plan.q_prefix + bytes((i,)) + half.to_bytes(plan.b, "big")
            state = plan.state
            for offset in range(0, len(tail), 16):
                block = int.from_bytes(tail[offset : offset + 16], "big")
                state = int.from_bytes(update((state ^ block).to_bytes(16, "big")), "big")
        if plan.extra_blocks:
            # S = R || CIPH(R xor [1]) || CIPH(R xor [2]) || ...: the blocks are independent, one call.
            extra = b"".join((state ^ j).to_bytes(16, "big") for j in range(1, plan.extra_blocks + 1))
            s = state.to_bytes(16, "big") + update(extra)
            return int.from_bytes(s[: plan.d], "big")
        return state >> (8 * (16 - plan.d))

    def _plan(self, digits: str, tweak: bytes) -> _Plan:
        n = len(digits)
        plan = self._plans.get((n, tweak))
        if plan is None:
            plan = self._make_plan(n, tweak)
            if len(self._plans) >= _PLAN_CACHE_LIMIT:
                self._plans.clear()
            self._plans[(n, bytes(tweak))] = plan
        if self._digits_re.fullmatch(digits) is None:
            raise ValueError(f"FF1 input has characters outside the radix-{self.radix} alphabet")
        return plan

    def _make_plan(self, n: int, tweak: bytes) -> _Plan:
        radix = self.radix
        if not self._min_len <= n <= _MAX_LEN:
            raise ValueError(f"FF1 radix {radix} needs between {self._min_len} and {_MAX_LEN} digits, got {n}")
        t = len(tweak)
        if t > _MAX_LEN:
            raise ValueError("FF1 tweak too long")
        u = n // 2
        v = n - u
        # b = ceil(ceil(v * log2(radix)) / 8), computed exactly: bit length of radix**v - 1.
        b = ((radix**v - 1).bit_length() + 7) // 8
        d = 4 * ((b + 3) // 4) + 4
        p = bytes((1, 2, 1)) + radix.to_bytes(3, "big") + bytes((10, u % 256)) + struct.pack(">II", n, t)
        q_constant = bytes(tweak) + bytes((-t - b - 1) % 16)
        state = int.from_bytes(self._ecb.update(p), "big")
        full = len(q_constant) // 16 * 16
        for offset in range(0, full, 16):
            block = int.from_bytes(q_constant[offset : offset + 16], "big")
            state = int.from_bytes(self._ecb.update((state ^ block).to_bytes(16, "big")), "big")
        return _Plan(
            u=u,
            v=v,
            b=b,
            d=d,
            modulus_u=radix**u,
            modulus_v=radix**v,
            state=state,
            q_prefix=q_constant[full:],
            extra_blocks=(d + 15) // 16 - 1,
            single_block=len(q_constant) - full + 1 + b == 16,
            last_block_base=int.from_bytes(q_constant[full:], "big") << (8 * (1 + b)),
            round_shift=8 * b,
        )


_FORMATS = {2: "b", 8: "o", 10: "d", 16: "x"}


def _to_digits(value: int, length: int, radix: int) -> str:
    """STR^length_radix(value): big-endian, zero-padded."""
    spec = _FORMATS.get(radix)
    if spec is not None:
        return format(value, spec).zfill(length)
    out = []
    for _ in range(length):
        value, digit = divmod(value, radix)
        out.append(ALPHABET[digit])
    return "".join(reversed(out))
