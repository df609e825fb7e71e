"""Durable ledger appends per second: adaptive group commit against one commit per record, on SQLite and
PostgreSQL, at 1, 16 and 128 concurrent writers, through the real `Ledger.append` path.

One commit per record is the same ledger with `max_batch_records=1`, so the only difference measured is
batching. Each cell runs for `--duration` seconds (bounded: 12 cells x duration plus setup). Reports
appends/s, append latency p50/p99 and process CPU per append (writer thread included).

    .venv/bin/python bench/ledger_bench.py --duration 2
    .venv/bin/python bench/ledger_bench.py --backends sqlite --duration 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import asyncpg

from gateway.keys import LedgerKeys, load_keys
from gateway.ledger import RecordDraft, open_ledger

WRITER_COUNTS = (1, 16, 128)


def draft(keys: LedgerKeys, n: int) -> RecordDraft:
    return RecordDraft(
        kind="disclosure", caller="billing", partner="acme", route="claims.create", purpose="claims",
        legal_basis="contract", jurisdiction="KR", cross_border=False, subject_ref=keys.subject_ref(f"s{n % 97}"),
        fields_sent=("claim.amount", "claim.device_ref", "claim.date"), fields_transformed=("claim.device_ref",),
        fields_dropped=("claim.notes",), body_digest=keys.body_digest(b"x" * 64), request_id=f"req-{n}",
    )


async def run_cell(url: str, keys: LedgerKeys, writers: int, group: bool, duration: float) -> dict[str, float]:
    ledger = open_ledger(url, keys, chain_id=f"bench-{uuid.uuid4().hex[:8]}",
                         max_batch_records=4096 if group else 1)
    await ledger.start()
    latencies: list[float] = []
    deadline = time.perf_counter() + duration
    sample = draft(keys, 0)

    async def writer() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await ledger.append(sample)
            latencies.append(time.perf_counter() - started)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await ledger.close()
    latencies.sort()
    return {
        "rate": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000 if len(latencies) >= 100 else latencies[-1] * 1000,
        "cpu_us": cpu / len(latencies) * 1e6,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per cell")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--pg-url", default=os.environ.get("GATEWAY_TEST_POSTGRES_URL",
                                                           "postgresql://127.0.0.1:5432/test"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keys = load_keys(Path(tmp) / "keys", dev_mode=True).ledger
        urls: dict[str, str] = {}
        schema = f"ledger_bench_{uuid.uuid4().hex[:8]}"
        if "sqlite" in args.backends:
            urls["SQLite"] = f"sqlite:///{tmp}/bench.sqlite3"
        if "postgres" in args.backends:
            conn = await asyncpg.connect(args.pg_url)
            await conn.execute(f"CREATE SCHEMA {schema}")
            await conn.close()
            sep = "&" if "?" in args.pg_url else "?"
            urls["PostgreSQL"] = f"{args.pg_url}{sep}search_path={schema}"
        try:
            print("| backend | writers | group commit appends/s | one commit per record appends/s | ratio | "
                  "group p50 / p99 ms | single p50 / p99 ms | group CPU us/append |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- |")
            for name, url in urls.items():
                for writers in WRITER_COUNTS:
                    group = await run_cell(url, keys, writers, True, args.duration)
                    single = await run_cell(url, keys, writers, False, args.duration)
                    print(f"| {name} | {writers} | {group['rate']:,.0f} | {single['rate']:,.0f} | "
                          f"{group['rate'] / single['rate']:.1f}x | {group['p50_ms']:.2f} / {group['p99_ms']:.2f} | "
                          f"{single['p50_ms']:.2f} / {single['p99_ms']:.2f} | {group['cpu_us']:.0f} |", flush=True)
        finally:
            if "PostgreSQL" in urls:
                conn = await asyncpg.connect(args.pg_url)
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                await conn.close()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
