"""Child process of the crash test: appends disclosures through the real append path and, only after
append() returned, tells the fake partner the disclosure id; then queues the outcome with append_nowait
(not fsynced on its own), as the gateway does, so unsynced commits sit between durable ones. The test
SIGKILLs it at random moments.

Usage: python ledger_crash_writer.py LEDGER_URL KEYS_DIR PARTNER_URL CHAIN WRITERS
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp

from gateway.keys import load_keys
from gateway.ledger import RecordDraft, open_ledger


async def main(url: str, keys_dir: str, partner_url: str, chain: str, writers: int) -> None:
    keys = load_keys(Path(keys_dir), dev_mode=False)
    ledger = open_ledger(url, keys.ledger, chain_id=chain, checkpoint_every_records=50)
    await ledger.start()
    async with aiohttp.ClientSession() as session:

        async def writer(n: int) -> None:
            i = 0
            while True:
                i += 1
                record = await ledger.append(RecordDraft(kind="disclosure", partner="fake", route="r",
                                                         request_id=f"{n}-{i}", fields_sent=("a",)))
                async with session.post(partner_url, data=record.id.encode()) as response:
                    await response.read()
                ledger.append_nowait(RecordDraft(kind="outcome", partner="fake", route="r", request_id=f"{n}-{i}",
                                                 disclosure_id=record.id, status=response.status))

        print("ready", flush=True)
        await asyncio.gather(*(writer(n) for n in range(writers)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
