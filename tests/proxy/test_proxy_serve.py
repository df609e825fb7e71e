"""`gateway serve` and `gateway demo` as real processes: workers sharing one port, SIGHUP and admin
reload in every worker, metrics aggregated across workers, SIGTERM drain and exit; the demo runs to completion on
a fresh folder."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from proxy_harness import PARTNER_ID, FakePartner, partner_environ, shipment_body

from gateway.cli.token import mint_token
from gateway.keys import GatewayKeys

REPO = Path(__file__).resolve().parents[2]
GATEWAY = [sys.executable, "-m", "gateway"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_ready(session: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the gateway exited"
        try:
            async with session.get(url + "/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("the gateway did not become ready")


@contextmanager
def two_workers(
    tmp_path: Path, keys_dir: Path, profiles_dir: Path, fake_partner: FakePartner
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`gateway serve --workers 2` on a free port with the harness's profiles, keys and partner, logging to
    a file: (process, URL, log path). Stopped on exit if a test left it running (SIGTERM, then kill)."""
    port = free_port()
    env = {
        **os.environ,
        **partner_environ(fake_partner),
        "GATEWAY_PROFILES_DIR": str(profiles_dir),
        "GATEWAY_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        "GATEWAY_KEYS_DIR": str(keys_dir),
        "GATEWAY_LOG_LEVEL": "info",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*GATEWAY, "serve", "--listen", f"127.0.0.1:{port}", "--workers", "2"], env=env, cwd=tmp_path,
            stdout=log_file, stderr=subprocess.STDOUT,
        )
        try:
            yield process, f"http://127.0.0.1:{port}", log_path
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def workers_listening(log_path: Path) -> int:
    return log_path.read_text().count('"event":"listening"')


# In a fresh interpreter, so the test process's own collector is left alone.
_FREEZE_SCRIPT = """
import gc, weakref
from gateway.cli.serve import GEN0_THRESHOLD, freeze_heap, refreeze_heap
class Node:
    pass
old = Node(); old.me = old  # a cycle, like a replaced pipeline's objects
gone = weakref.ref(old)
freeze_heap()
assert gc.get_threshold()[0] == GEN0_THRESHOLD == 7000, gc.get_threshold()
assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
del old
gc.collect()
assert gone() is not None  # frozen: a collection does not free it
refreeze_heap()
assert gone() is None  # the reload's unfreeze and collect did
assert gc.get_freeze_count() > 1000 and gc.get_threshold()[0] == 7000
print("ok")
"""


def test_the_heap_is_frozen_after_start_and_refrozen_on_reload() -> None:
    done = subprocess.run([sys.executable, "-c", _FREEZE_SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.slow
async def test_serve_with_two_workers_reload_and_drain(
    tmp_path: Path, keys_dir: Path, profiles_dir: Path, fake_partner: FakePartner, gateway_keys: GatewayKeys
) -> None:
    assert gateway_keys.jwt_dev_private is not None
    token = mint_token(gateway_keys.jwt_dev_private, subject="order-service",
                       scopes=[f"disclose:{PARTNER_ID}:delivery"], issuer="partner-data-gateway-dev",
                       audience="partner-data-gateway", ttl_seconds=300)
    with two_workers(tmp_path, keys_dir, profiles_dir, fake_partner) as (process, url, log_path):
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, url, process)
            deadline = time.monotonic() + 30
            while workers_listening(log_path) < 2:
                assert time.monotonic() < deadline, "both workers did not start:\n" + log_path.read_text()[-5000:]
                await asyncio.sleep(0.2)
            listening = [json.loads(line) for line in log_path.read_text().splitlines() if '"listening"' in line]
            assert all(line["gc_frozen"] > 1000 for line in listening), listening  # each worker froze its heap
            data = json.dumps(shipment_body()).encode()
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            for _ in range(12):
                # A fresh connection each time, so the kernel can hand it to either worker.
                async with aiohttp.ClientSession() as fresh, fresh.post(
                    url + f"/v1/partners/{PARTNER_ID}/shipments/S-1", data=data, headers=headers
                ) as response:
                    assert response.status == 200, log_path.read_text()[-3000:]
            # Metrics of both workers are summed in one scrape. A worker counts a request once its response
            # is on the way, so the last count can trail the client's read by a moment.
            forwarded = re.compile(
                r'gateway_requests_total\{outcome="forwarded",partner="carrier-test",route="create-shipment"\} 12\.0')
            deadline = time.monotonic() + 10
            while True:
                async with session.get(url + "/metrics") as response:
                    text = await response.text()
                if forwarded.search(text) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert forwarded.search(text), text[:2000]
            # The key-set metrics of both workers: loads summed, the gauges the worst live worker's (no pid label).
            assert 'gateway_jwks_refreshes_total{result="ok"} 2.0' in text
            assert re.search(r"^gateway_jwks_keys 1\.0$", text, re.MULTILINE), text[:3000]
            last = re.search(r"^gateway_jwks_last_success_timestamp_seconds (\S+)$", text, re.MULTILINE)
            assert last is not None, text[:3000]
            assert float(last.group(1)) > time.time() - 120
            process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                async with session.get(url + "/metrics") as response:
                    text = await response.text()
                if 'gateway_profile_reloads_total{result="ok"} 2.0' in text:
                    break
                await asyncio.sleep(0.2)
            assert 'gateway_profile_reloads_total{result="ok"} 2.0' in text
            await _admin_reload_reaches_every_worker(url, profiles_dir, gateway_keys)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    assert len(fake_partner.received) == 12


async def _reloads_ok(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(url + "/metrics") as response:
        found = re.search(r'gateway_profile_reloads_total\{result="ok"\} ([0-9.]+)', await response.text())
    return float(found.group(1)) if found else 0.0


async def _admin_reload_reaches_every_worker(url: str, profiles_dir: Path, gateway_keys: GatewayKeys) -> None:
    """A second partner appears in the folder; one admin call reloads it into both workers."""
    profile = (profiles_dir / f"{PARTNER_ID}.yaml").read_text(encoding="utf-8")
    (profiles_dir / "carrier-two.yaml").write_text(
        profile.replace(f"id: {PARTNER_ID}", "id: carrier-two", 1), encoding="utf-8")
    assert gateway_keys.jwt_dev_private is not None
    admin = {"Authorization": "Bearer " + mint_token(
        gateway_keys.jwt_dev_private, subject="ops", scopes=["gateway:admin"], issuer="partner-data-gateway-dev",
        audience="partner-data-gateway", ttl_seconds=300)}
    async with aiohttp.ClientSession() as session:
        before = await _reloads_ok(session, url)
        async with session.post(url + "/v1/admin/reload", headers=admin) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["workers"] == "all signalled"
        # The worker that took the call, then both workers on the supervisor's relayed SIGHUP.
        deadline = time.monotonic() + 15
        while await _reloads_ok(session, url) < before + 3:
            assert time.monotonic() < deadline, "the other worker did not reload"
            await asyncio.sleep(0.2)
    for _ in range(12):
        # Fresh connections, so the kernel hands them to both workers: each has the new set.
        async with aiohttp.ClientSession() as fresh, fresh.get(url + "/v1/admin/partners", headers=admin) as response:
            assert response.status == 200
            assert "carrier-two" in [p["id"] for p in (await response.json())["partners"]]


@pytest.mark.slow
async def test_a_reload_while_workers_start_kills_none(
    tmp_path: Path, keys_dir: Path, profiles_dir: Path, fake_partner: FakePartner
) -> None:
    """SIGHUPs to the supervisor from its first moment (as an admin reload relays them) reach workers that
    are still importing: each is held until the worker's handler is in, never its default action."""
    with two_workers(tmp_path, keys_dir, profiles_dir, fake_partner) as (process, url, log_path):
        async with aiohttp.ClientSession() as session:
            # The supervisor's handlers are in before it starts a worker: from its first child on, keep
            # signalling while the workers start.
            deadline = time.monotonic() + 30
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
            while not children.read_text().split():
                assert process.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "no worker started"
                await asyncio.sleep(0.01)
            while workers_listening(log_path) < 2:
                assert process.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "both workers did not start:\n" + log_path.read_text()[-5000:]
                process.send_signal(signal.SIGHUP)
                await asyncio.sleep(0.05)
            await wait_ready(session, url, process)
        process.send_signal(signal.SIGTERM)
        # A worker killed by a SIGHUP would make the supervisor exit 1 ("worker(s) exited with an error").
        assert process.wait(timeout=20) == 0, log_path.read_text()[-3000:]


@pytest.mark.slow
def test_demo_runs_on_a_fresh_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PARTNER_URL_"))}
    # Run outside the checkout, as after `pip install`: the demo finds the shipped profiles itself.
    result = subprocess.run(
        [*GATEWAY, "demo"], env=env, cwd=tmp_path, capture_output=True, timeout=120, check=False,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert "ledger OK" in out
    assert "transformed" in out
    assert "dropped" in out
    assert re.search(r"401 .*\(partner calls: 0\)", out)
    assert re.search(r"403 .*\(partner calls: 0\)", out)
    # The embedded defaults, so `gateway ledger verify` and `gateway subject show` see the demo's records.
    assert (tmp_path / "data" / "ledger.sqlite3").exists()
    assert (tmp_path / "keys" / "ledger-signing.pub.pem").exists()
