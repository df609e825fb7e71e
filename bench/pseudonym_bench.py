"""Micro-benchmark of the bound pseudonym functions (the per-request cost once `bind` has run).

Run: .venv/bin/python bench/pseudonym_bench.py [--repeat 5] [--number 20000]
Prints µs per call, best of `repeat` runs of `number` calls, for every type in both modes.
"""

from __future__ import annotations

import argparse
import timeit

from gateway.pseudonyms import ID_TYPES, MODES, PartnerKeyring, Pseudonymiser

SAMPLES = {
    "imei": "35-209900-176148-1",
    "imsi": "450051234567890",
    "iccid": "8982300123456789013",
    "mac": "00:1A:2B:3C:4D:5E",
    "android_id": "9774d56d682e549c",
    "advertising_id": "f47ac10b-58cc-4372-a567-0e02b2c3d479",
    "phone": "+82 10-1234-5678",
    "email": "Kim.Minjun@Example.co.kr",
    "token": "cust-000123456",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args()
    pseudonymiser = Pseudonymiser(PartnerKeyring(bytes(range(32))))
    print(f"{'type':<16}" + "".join(f"{mode + ' µs':>10}" for mode in MODES) + f"{'reverse µs':>12}")
    for id_type in ID_TYPES:
        row = f"{id_type:<16}"
        for mode in MODES:
            bound = pseudonymiser.bind("bench-partner", id_type, mode)
            value = SAMPLES[id_type]
            best = min(timeit.repeat(lambda: bound(value), number=args.number, repeat=args.repeat))  # noqa: B023
            row += f"{best / args.number * 1e6:>10.2f}"
        reverse = pseudonymiser.bind_reverse("bench-partner", id_type)
        token = pseudonymiser.pseudonymise("bench-partner", id_type, "fpe", SAMPLES[id_type])
        best = min(timeit.repeat(lambda: reverse(token), number=args.number, repeat=args.repeat))  # noqa: B023
        row += f"{best / args.number * 1e6:>12.2f}"
        print(row)
    bind_best = min(timeit.repeat(lambda: pseudonymiser.bind("p", "imei", "fpe"), number=2000, repeat=3))
    print(f"bind() once per route: {bind_best / 2000 * 1e6:.1f} µs")


if __name__ == "__main__":
    main()
