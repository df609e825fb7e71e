"""Micro benchmark of the per-request registry read and a durable withdrawal (not collected by pytest).

    .venv/bin/python tests/subjects/bench_subject_status.py [--postgres URL]

Bounded: 5000 status() calls over 1000 subjects and 200 withdrawals per backend.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
import warnings
from pathlib import Path

from gateway.keys import GatewayKeys, load_keys
from gateway.subjects import open_registry

READS = 5000
WRITES = 200


async def measure(url: str, keys: GatewayKeys) -> tuple[float, float]:
    async with open_registry(url, keys.ledger) as registry:
        refs = [keys.ledger.subject_ref(f"bench-subject-{i}") for i in range(1000)]
        for ref in refs[:500]:
            await registry.grant_consent(ref, "location", source="bench")
        start = time.perf_counter()
        for i in range(READS):
            await registry.status(refs[i % len(refs)], "location")
        read_us = (time.perf_counter() - start) / READS * 1e6
        start = time.perf_counter()
        for ref in refs[:WRITES]:
            await registry.withdraw_consent(ref, "location", source="bench")
        write_ms = (time.perf_counter() - start) / WRITES * 1e3
    return read_us, write_ms


async def with_schema(base_url: str, keys: GatewayKeys) -> tuple[float, float]:
    import asyncpg

    schema = f"subjbench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(base_url)
    await conn.execute(f"CREATE SCHEMA {schema}")
    try:
        sep = "&" if "?" in base_url else "?"
        return await measure(f"{base_url}{sep}search_path={schema}", keys)
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--postgres", default=None, help="PostgreSQL URL (a temporary schema is used)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keys = load_keys(Path(folder) / "keys", dev_mode=True)
        db = Path(folder) / "ledger.sqlite3"
        read_us, write_ms = asyncio.run(measure(f"sqlite:///{db}", keys))
        print(f"sqlite     status {read_us:8.1f} us/call   durable withdrawal {write_ms:6.2f} ms")
        if args.postgres:
            read_us, write_ms = asyncio.run(with_schema(args.postgres, keys))
            print(f"postgresql status {read_us:8.1f} us/call   durable withdrawal {write_ms:6.2f} ms")


if __name__ == "__main__":
    main()
