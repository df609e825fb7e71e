"""Policy engine micro-benchmark: one ~1.5 KB order through a carrier route, per request:
strict parse + JSON Schema validation + minimisation (two pseudonymised identifiers) + canonical dump
(`MinimisedRequest.canonical_body`, which checks only the keys the caller supplied).

The headline figure of each mode is the fused path the proxy calls (`validate_request` before the scope
check, `minimise_validated` after it); the separate `validate` + `minimise_request` pair follows.

    .venv/bin/python bench/policy_bench.py            # hmac and fpe, median of 7 rounds
    .venv/bin/python bench/policy_bench.py --profile  # pyinstrument profile of the hmac path

Figures go to docs/performance.md ("Policy engine (issue 2)"). Bounded: about 10 s in total.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway.policy import CompiledRoutePolicy, RoutePolicySpec, parse_action
from gateway.pseudonyms import PartnerKeyring, Pseudonymiser
from gateway.strictjson import canonical_dumps, parse_json

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["order_id", "recipient", "items"],
    "properties": {
        "order_id": {"type": "string", "minLength": 1, "maxLength": 64},
        "created_at": {"type": "string"},
        "recipient": {
            "type": "object",
            "required": ["name", "phone", "address", "country"],
            "properties": {
                "customer_id": {"type": "string"},
                "name": {"type": "string", "maxLength": 200},
                "phone": {"type": "string"},
                "email": {"type": "string"},
                "address": {"type": "object"},
                "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
                "birth_date": {"type": "string"},
            },
        },
        "device": {"type": "object", "properties": {"imei": {"type": "string"}}},
        "items": {
            "type": "array",
            "maxItems": 100,
            "items": {
                "type": "object",
                "required": ["sku", "quantity"],
                "properties": {
                    "sku": {"type": "string"},
                    "quantity": {"type": "integer", "minimum": 1},
                    "unit_price": {"type": "number"},
                    "weight_g": {"type": "integer"},
                },
            },
        },
        "parcel": {"type": "object"},
        "delivery_note": {"type": "string", "maxLength": 500},
        "payment": {"type": "object"},
    },
}

BODY_POLICY = {
    "order_id": "keep",
    "recipient.name": "keep",
    "recipient.phone": {"pseudonymise": {"type": "phone", "mode": "MODE"}},
    "recipient.address": "keep",
    "recipient.country": "keep",
    "recipient.birth_date": {"generalise": {"date": "year"}},
    "device.imei": {"pseudonymise": {"type": "imei", "mode": "MODE"}},
    "items[].sku": "keep",
    "items[].quantity": "keep",
    "items[].weight_g": "keep",
    "parcel.weight_g": "keep",
    "parcel.dims": "keep",
    "delivery_note": {"keep": {"free_text": True}},
}

ORDER = {
    "order_id": "QX-2024-00098123",
    "created_at": "2024-05-17T09:31:22Z",
    "recipient": {
        "customer_id": "c-88213901",
        "name": "Lin Mei-Hua",
        "phone": "+886912345678",
        "email": "mei.hua.lin@example.com",
        "address": {"line1": "No. 12, Lane 5, Section 3, Zhongshan Road", "line2": "7F-2", "city": "Taipei",
                    "district": "Zhongzheng", "postcode": "100", "country": "TW"},
        "country": "TW",
        "birth_date": "1988-11-02",
    },
    "device": {"imei": "490154203237518", "model": "Pixel 7", "os": "Android 14"},
    "items": [
        {"sku": f"SKU-{n:05d}", "quantity": n % 3 + 1, "unit_price": 12.5 + n, "weight_g": 120 * (n + 1),
         "title": f"Product number {n} with a descriptive title"}
        for n in range(8)
    ],
    "parcel": {"weight_g": 2400, "dims": {"l": 30, "w": 20, "h": 12}, "insured": True},
    "delivery_note": "Please leave the parcel with the building manager if nobody answers the door.",
    "payment": {"method": "card", "card_last4": "1111", "amount": 128.4, "currency": "TWD"},
}


def build_policy(mode: str) -> CompiledRoutePolicy:
    body = {path: parse_action(orjson.loads(orjson.dumps(action).replace(b"MODE", mode.encode())))
            for path, action in BODY_POLICY.items()}
    spec = RoutePolicySpec(request_body=body, request_headers={"Idempotency-Key": parse_action("keep")},
                           unknown_fields="drop", free_text="redact", schema=SCHEMA)
    pseudonymiser = Pseudonymiser(PartnerKeyring(bytes(32)))
    return CompiledRoutePolicy(spec, partner_id="carrier-tw-hct", pseudonymiser=pseudonymiser)


def one_request(policy: CompiledRoutePolicy, raw: bytes, headers: dict[str, str]) -> bytes:
    body = parse_json(raw)
    policy.validate(body)
    minimised = policy.minimise_request(body, (), {}, headers)
    return minimised.canonical_body()


def one_request_fused(policy: CompiledRoutePolicy, raw: bytes, headers: dict[str, str]) -> bytes:
    """The same request through the fused pair (`validate_request` before the scope check,
    `minimise_validated` after it): schema check and minimisation in one generated pass."""
    body = parse_json(raw)
    validated = policy.validate_request(body)
    minimised = policy.minimise_validated(validated, (), {}, headers)
    return minimised.canonical_body()


Request = Callable[[CompiledRoutePolicy, bytes, dict[str, str]], bytes]


def measure(policy: CompiledRoutePolicy, raw: bytes, rounds: int = 7, per_round: int = 2000,
            request: Request = one_request) -> float:
    headers = {"Idempotency-Key": "k-1", "Authorization": "Bearer x", "User-Agent": "svc"}
    for _ in range(500):
        request(policy, raw, headers)
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(per_round):
            request(policy, raw, headers)
        timings.append((time.perf_counter() - start) / per_round * 1e6)
    return statistics.median(timings)


def stages(policy: CompiledRoutePolicy, raw: bytes, mode: str, n: int = 5000) -> dict[str, float]:
    """Each stage alone, best of 5 rounds of `n` (less exposed to the other agents than a median)."""
    body = parse_json(raw)
    minimised = policy.minimise_request(body, (), {}, {})
    headers = {"Idempotency-Key": "k-1", "Authorization": "Bearer x", "User-Agent": "svc"}
    pseudonymiser = Pseudonymiser(PartnerKeyring(bytes(32)))
    phone = pseudonymiser.bind("carrier-tw-hct", "phone", mode)
    imei = pseudonymiser.bind("carrier-tw-hct", "imei", mode)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("parse_json", lambda: parse_json(raw)), ("validate", lambda: policy.validate(body)),
        ("minimise_request", lambda: policy.minimise_request(body, (), {}, {})),
        ("canonical_body", minimised.canonical_body),
        ("(general canonical_dumps)", lambda: canonical_dumps(minimised.body)),
        ("(within minimise: the 2 pseudonyms)", lambda: (phone("+886912345678"), imei("490154203237518"))),
    ]
    # minimise_validated takes the walk out of the value validate_request returned (a second call walks
    # again), so it is timed with its validate_request; it costs the difference of the two lines.
    calls[2:2] = [("validate_request (fused)", lambda: policy.validate_request(body)),
                  ("validate_request + minimise_validated",
                   lambda: policy.minimise_validated(policy.validate_request(body), (), {}, headers))]
    out = {}
    for name, call in calls:
        best = math.inf
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(n // 5):
                call()
            best = min(best, (time.perf_counter() - start) / (n // 5) * 1e6)
        out[name] = best
    return out


def cpu_reference_ms(rounds: int = 5) -> float:
    """A fixed CPU yardstick, `sum(range(10**6))` (median ms), to compare runs taken under contention."""
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        sum(range(10**6))
        timings.append((time.perf_counter() - start) * 1e3)
    return statistics.median(timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="profile the hmac path with pyinstrument")
    parser.add_argument("modes", nargs="*", default=["hmac", "fpe"], help="pseudonym modes to run (hmac, fpe)")
    args = parser.parse_args()
    raw = orjson.dumps(ORDER)
    if args.profile:
        from pyinstrument import Profiler

        policy = build_policy("hmac")
        headers = {"Idempotency-Key": "k-1", "Authorization": "Bearer x", "User-Agent": "svc"}
        profiler = Profiler(interval=0.0001)
        with profiler:
            for _ in range(20000):
                one_request_fused(policy, raw, headers)
        print(profiler.output_text(unicode=True, color=False))
        return 0
    print(f"payload: {len(raw)} bytes; python {sys.version.split()[0]}; "
          f"cpu reference sum(range(10**6)): {cpu_reference_ms():.1f} ms")
    for mode in args.modes:
        policy = build_policy(mode)
        fused = measure(policy, raw, request=one_request_fused)
        print(f"{mode}: {fused:.1f} µs per request, the proxy's fused path (validate_request + "
              "minimise_validated; median of 7 rounds x 2000)")
        print(f"{mode} separate (validate + minimise_request): {measure(policy, raw):.1f} µs per request")
        print("   stages: " + ", ".join(f"{k} {v:.1f} µs" for k, v in stages(policy, raw, mode).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
