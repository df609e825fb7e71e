"""CLI command group `serve`: `gateway serve` (the server) and `gateway demo` (a first look on loopback).

`serve` runs one gateway process, or with `--workers N` a supervisor and N worker processes that share
one port through SO_REUSEPORT (the kernel spreads connections); each worker appends to its own ledger
hash chain and the metrics of all workers are aggregated through a shared PROMETHEUS_MULTIPROC_DIR.
SIGHUP reloads the profiles (in every worker), and so does `POST /v1/admin/reload` to any worker;
SIGTERM or SIGINT drains in-flight requests, closes the ledger (final checkpoint) and exits.

Once started, a gateway process freezes its heap (`gc.freeze()`: everything alive after start-up moves to
the collector's permanent generation) and collects the youngest generation every 7,000 net allocations
instead of 700, so collections walk only what requests allocate; a profile reload unfreezes, collects the
replaced pipeline and refreezes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import Settings, load_settings


def register(sub: argparse._SubParsersAction[Any]) -> None:
    serve = sub.add_parser(
        "serve", help="run the gateway server",
        description="Run the gateway. Settings: defaults < --config file (or GATEWAY_CONFIG) < GATEWAY_* "
        "environment variables < these flags. SIGHUP reloads the partner profiles; SIGTERM drains and stops.",
    )
    serve.add_argument("--config", metavar="FILE", help="settings file, YAML (default: GATEWAY_CONFIG)")
    serve.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default: GATEWAY_LISTEN)")
    serve.add_argument("--workers", metavar="N", type=int, help="worker processes sharing the port (default 1)")
    serve.set_defaults(handler=serve_command)

    demo = sub.add_parser(
        "demo", help="gateway, fake partners and sample traffic on loopback",
        description="Start the gateway with the shipped profiles and development keys, fake partners on "
        "127.0.0.1, send a short run of realistic traffic, and print what each partner received against "
        "what the services sent, then the ledger summary. Honours the GATEWAY_* variables.",
    )
    demo.add_argument("--config", metavar="FILE", help="settings file, YAML (default: GATEWAY_CONFIG)")
    demo.add_argument("--data-dir", metavar="DIR", type=Path, default=Path("data"),
                      help="where the demo's SQLite ledger lives unless GATEWAY_LEDGER_URL is set (default ./data)")
    demo.set_defaults(handler=demo_command)


def serve_command(args: argparse.Namespace) -> int:
    from gateway.logs import configure_logging

    settings = load_settings(args.config, listen=args.listen, workers=args.workers)
    configure_logging(settings.log_level)
    if settings.workers == 1:
        run_worker(settings, 0, reuse_port=False)
        return 0
    return _supervise(settings)


# The youngest generation's threshold once the heap is frozen: a request allocates a few hundred
# container objects, so at the default 700 the collector ran on most requests (see perf notes).
GEN0_THRESHOLD = 7_000


def freeze_heap() -> None:
    """Collect, then move every live object to the permanent generation, and raise gen0's threshold."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


def refreeze_heap() -> None:
    """After a reload: the replaced pipeline is in the permanent generation, where nothing is collected;
    unfreeze so its cycles are freed, then freeze what is alive now."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # optional: not available on every platform
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_worker(settings: Settings, index: int, *, reuse_port: bool, supervisor: int | None = None) -> None:
    """One gateway process until SIGTERM/SIGINT; `supervisor` is the pid of the `--workers` supervisor."""
    from gateway.logs import configure_logging

    configure_logging(settings.log_level)
    _install_uvloop()
    asyncio.run(_serve(settings, index, reuse_port, supervisor))


def _peer_reloader(supervisor: int) -> Callable[[], bool]:
    """Asks the supervisor to relay SIGHUP to every worker, and says whether it could; only while the
    supervisor is still this process's parent (an orphaned worker must not signal whatever process
    adopted it, such as a container's init)."""

    def reload_peers() -> bool:
        if os.getppid() != supervisor:
            return False
        try:
            os.kill(supervisor, signal.SIGHUP)
        except OSError:
            return False
        return True

    return reload_peers


async def _serve(settings: Settings, index: int, reuse_port: bool, supervisor: int | None = None) -> None:
    from gateway.logs import get_logger
    from gateway.proxy import start_gateway

    log = get_logger("gateway.server")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload_wanted = asyncio.Event()
    # Handlers go in before the (possibly slow) start: a SIGHUP during start-up must not kill the process
    # (its default action), and a SIGTERM must still stop it.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_wanted.set)
    # A worker starts with SIGHUP blocked (see _supervise): one relayed before this point is delivered now,
    # to the handler, instead of killing the process.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    gateway = await start_gateway(settings, reuse_port=reuse_port, worker_index=index)
    if supervisor is not None:
        gateway.state.reload_peers = _peer_reloader(supervisor)
    freeze_heap()
    gateway.state.after_reload = refreeze_heap
    log.info("listening", url=gateway.url, worker=index, pid=os.getpid(), gc_frozen=gc.get_freeze_count())

    async def reloader() -> None:
        while True:
            await reload_wanted.wait()
            reload_wanted.clear()
            await gateway.state.reload_logged()

    reloads = loop.create_task(reloader())
    try:
        await stop.wait()
    finally:
        reloads.cancel()
        log.info("draining", worker=index, grace_seconds=settings.shutdown_grace_seconds)
        await gateway.stop()


def _worker_main(settings: Settings, index: int) -> None:
    # A worker ignores SIGINT from the terminal's process group: the supervisor forwards one SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run_worker(settings, index, reuse_port=True, supervisor=os.getppid())


def _supervise(settings: Settings) -> int:
    """Start the workers (fresh interpreters, so each imports prometheus-client in multiprocess mode),
    forward SIGHUP/SIGTERM/SIGINT to them, and wait until they have all exited."""
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker_main, args=(settings, index), name=f"gateway-worker-{index}")
        for index in range(settings.workers)
    ]

    def forward(signum: int, _frame: object) -> None:
        relay = signal.SIGHUP if signum == signal.SIGHUP else signal.SIGTERM
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, relay)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        # Workers inherit a blocked SIGHUP (the mask survives fork and exec) until their handler is in:
        # a reload relayed while one is still starting would otherwise end it (SIGHUP's default action).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            for worker in workers:
                worker.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        for worker in workers:
            worker.join()
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    failed = [w.name for w in workers if w.exitcode not in (0, -signal.SIGTERM)]
    if failed:
        print(f"gateway: error: worker(s) exited with an error: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(config_file=args.config, data_dir=args.data_dir)
