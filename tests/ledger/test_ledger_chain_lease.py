"""The chain lease (gateway.ledger.lease): one live writer per chain on SQLite and PostgreSQL, in one process
and across processes; a second writer waits, then gets a clear ChainInUse; a writer that dies (however)
frees its chain; concurrent `gateway subject` commands on one host all succeed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from ledger_helpers import disclosure_draft

from gateway.cli.ledger import verify_url
from gateway.keys import GatewayKeys
from gateway.ledger import Ledger, LedgerQuery, open_ledger
from gateway.ledger.lease import ChainInUse, PostgresChainLease

# A process that writes chain "shared" and then holds it until killed.
_HOLDER = """
import asyncio, sys
from pathlib import Path
from gateway.keys import load_keys
from gateway.ledger import RecordDraft, open_ledger

async def main():
    ledger = open_ledger(sys.argv[2], load_keys(Path(sys.argv[1]), dev_mode=False).ledger, chain_id="shared")
    await ledger.start()
    await ledger.append(RecordDraft(kind="refusal", caller="c", partner="p", route="r", status=403))
    print("holding", flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


async def writing_shared(url: str, keys: GatewayKeys) -> Ledger:
    """A started ledger on chain "shared" that has appended req-0."""
    ledger = open_ledger(url, keys.ledger, chain_id="shared")
    await ledger.start()
    await ledger.append(disclosure_draft(0, keys))
    return ledger


async def test_a_second_writer_of_a_chain_waits_then_is_refused_clearly(
        ledger_url: str, gateway_keys: GatewayKeys) -> None:
    first = await writing_shared(ledger_url, gateway_keys)
    other_chain = open_ledger(ledger_url, gateway_keys.ledger, chain_id="other", chain_wait_seconds=0)
    await other_chain.start()  # another chain never waits
    await other_chain.close()
    second = open_ledger(ledger_url, gateway_keys.ledger, chain_id="shared", chain_wait_seconds=0.3)
    started = time.monotonic()
    with pytest.raises(ChainInUse) as refused:
        await second.start()
    assert time.monotonic() - started >= 0.3
    assert "'shared' is being written by another writer" in str(refused.value)
    assert "GATEWAY_LEDGER_CHAIN_SUFFIX" in str(refused.value)
    assert not second.writable()
    # The first writer was not disturbed; once it has closed, the chain is free and continues.
    await first.append(disclosure_draft(1, gateway_keys))
    await first.close()
    third = open_ledger(ledger_url, gateway_keys.ledger, chain_id="shared", chain_wait_seconds=0)
    await third.start()
    assert (await third.append(disclosure_draft(2, gateway_keys))).sequence == 4  # after 2 records + checkpoint
    await third.close()
    report = await verify_url(ledger_url, gateway_keys.ledger.verify_key)
    assert report.ok, report.summary()


async def test_a_waiting_writer_takes_the_chain_when_the_holder_closes(
        ledger_url: str, gateway_keys: GatewayKeys) -> None:
    first = await writing_shared(ledger_url, gateway_keys)
    second = open_ledger(ledger_url, gateway_keys.ledger, chain_id="shared", chain_wait_seconds=30)
    waiting = asyncio.ensure_future(second.start())
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await first.close()
    await asyncio.wait_for(waiting, 10)
    appended = await second.append(disclosure_draft(1, gateway_keys))
    assert appended.sequence == 3  # the first one's record and closing checkpoint come before it
    await second.close()


async def test_a_chain_held_by_a_killed_process_is_free_again(
        ledger_url: str, gateway_keys: GatewayKeys, keys_dir: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(keys_dir), ledger_url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding", holder.stderr.read() if holder.stderr else ""
        blocked = open_ledger(ledger_url, gateway_keys.ledger, chain_id="shared", chain_wait_seconds=0.2)
        with pytest.raises(ChainInUse):
            await blocked.start()
        os.kill(holder.pid, signal.SIGKILL)  # no clean close: the kernel / the server must free the lease
        holder.wait(timeout=10)
        after = open_ledger(ledger_url, gateway_keys.ledger, chain_id="shared", chain_wait_seconds=10)
        await after.start()
        assert (await after.append(disclosure_draft(1, gateway_keys))).sequence == 2
        await after.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


async def test_a_lost_postgres_lease_connection_is_taken_again_or_refused(pg_url: str) -> None:
    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(pg_url)

    lease = await PostgresChainLease.claim(connect, "shared", 0)
    admin = await asyncpg.connect(pg_url)
    try:
        # The server ends the lease's session (a restart, a network cut): the lock goes with it.
        pid = lease._conn.get_server_pid()
        await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        await asyncio.sleep(0.2)
        await lease.ensure()  # taken again on a new connection
        assert lease._conn.get_server_pid() != pid
        with pytest.raises(ChainInUse):
            await PostgresChainLease.claim(connect, "shared", 0)
        # Lost again, and meanwhile another writer took the chain: refused, never written without it.
        await admin.fetchval("SELECT pg_terminate_backend($1)", lease._conn.get_server_pid())
        await asyncio.sleep(0.2)
        rival = await PostgresChainLease.claim(connect, "shared", 0)
        with pytest.raises(ChainInUse):
            await lease.ensure()
        await rival.release()
    finally:
        await lease.release()
        await admin.close()


def test_concurrent_subject_commands_on_one_host_all_succeed(tmp_path: Path, keys_dir: Path,
                                                              gateway_keys: GatewayKeys) -> None:
    """They share the host's `subject-cli` chain: each waits its turn instead of failing a commit."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"

    async def first_gateway_start() -> None:  # the subject commands refuse a ledger no gateway has run on
        server = open_ledger(url, gateway_keys.ledger, chain_id="server")
        await server.start()
        await server.close()

    asyncio.run(first_gateway_start())
    env = {**os.environ, "GATEWAY_LEDGER_URL": url, "GATEWAY_KEYS_DIR": str(keys_dir)}
    env.pop("GATEWAY_CONFIG", None)
    commands = [subprocess.Popen([sys.executable, "-m", "gateway", "subject", "consent", "grant", f"user-{n}",
                                  "marketing"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for n in range(5)]
    outputs = [command.communicate(timeout=120)[0] for command in commands]
    assert [command.returncode for command in commands] == [0] * 5, outputs

    async def check() -> None:
        reader = open_ledger(url, gateway_keys.ledger, chain_id="reader")
        await reader.start()
        registry = await reader.query(LedgerQuery(kind="registry"))
        await reader.close()
        assert len(registry) == 5
        assert len({r["chain"] for r in registry}) == 1
        report = await verify_url(url, gateway_keys.ledger.verify_key)
        assert report.ok, report.summary()

    asyncio.run(check())
