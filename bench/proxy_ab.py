"""Same-run before/after of the whole gateway: two `gateway serve` (an older tree and this one) and the bare
baseline, alternating, with CPU per request of each gateway's main thread and whole process.

    git worktree add --detach /tmp/before 7fe86d6
    .venv/bin/python bench/proxy_ab.py /tmp/before --rounds 4 --concurrency 1,32 --duration 5

The "before" gateway runs this virtualenv's interpreter with `PYTHONPATH=<tree>`, so its `gateway`
package is the older tree's (PYTHONPATH comes before the editable install); "after" is this checkout.
Each round drives the three targets in turn (order reversed every other round) after a 1 s warm-up and
prints one line per target; the medians over rounds close the output. Uses the harness of
proxy_bench.py (wrk when installed, else the Python load generator).

    .venv/bin/python bench/proxy_ab.py /tmp/before --instructions 1000 --concurrency 1,32

counts instead the instructions per request of each gateway process (all its threads) under valgrind's
callgrind: each tree's `gateway serve` runs under callgrind with instrumentation off, gets a warm-up, then
instrumentation is switched on for exactly N requests at each concurrency (callgrind_control), and the count
over N is printed. The count does not depend on load on the machine (same tree, same hash seed), though
the run itself loads it (take the bench lock for other people's timings); about a minute per 1000 requests
and tree. Spread between runs of one tree: ~0.3 % at
concurrency 1, ~1.5 % at 32 (how requests batch per loop iteration varies).

    .venv/bin/python bench/proxy_ab.py /tmp/before --syscalls 2000 --concurrency 1,32

counts system calls per request the same way (strace -c attached to every thread for exactly N requests).
`--after TREE` puts another checkout in this one's place in every mode.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import proxy_bench as pb
from loadgen import run_load

TICKS = os.sysconf("SC_CLK_TCK")


def main_thread_seconds(pid: int) -> float:
    """utime + stime of the process's main thread (the event loop), from /proc."""
    stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gateway before/after and the bare baseline, same run")
    parser.add_argument("before_tree", type=Path, help="a checkout (git worktree) of the older commit")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--instructions", type=int, metavar="N", default=0,
                        help="count instructions per request over N requests under callgrind instead")
    parser.add_argument("--syscalls", type=int, metavar="N", default=0,
                        help="count system calls per request over N requests under strace -c instead")
    parser.add_argument("--after", type=Path, metavar="TREE",
                        help="another checkout as the after tree (default: this one)")
    args = parser.parse_args(argv)
    if not (args.before_tree / "gateway" / "__init__.py").is_file():
        parser.error(f"{args.before_tree} holds no gateway package")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.instructions:
        return count_instructions(args.before_tree, concurrencies, args.instructions, args.after)
    if args.syscalls:
        return count_syscalls(args.before_tree, concurrencies, args.syscalls, args.after)
    results: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
    with ExitStack() as stack:
        _, partner_port = stack.enter_context(pb.started([sys.executable, str(pb.BENCH_DIR / "fake_partner.py")]))
        partner_url = f"http://127.0.0.1:{partner_port}"
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(args.before_tree.resolve())
        try:
            (before,) = pb.start_targets(stack, ["gateway"], partner_url, True)
        finally:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
        if args.after is None:
            (after,) = pb.start_targets(stack, ["gateway"], partner_url, True)
        else:
            with _tree_environ(args.after):
                (after,) = pb.start_targets(stack, ["gateway"], partner_url, True)
        (baseline,) = pb.start_targets(stack, ["baseline"], partner_url, True)
        targets = {"before": before, "after": after, "baseline": baseline}
        body = pb.request_body()
        for target in targets.values():
            pb.check_once(target.url, body, target.headers)
        for round_no in range(args.rounds):
            order = list(targets) if round_no % 2 == 0 else list(reversed(targets))
            for concurrency in concurrencies:
                for name in order:
                    target = targets[name]
                    run_load(target.url, body, target.headers, concurrency, 1.0)
                    main0, process0 = main_thread_seconds(target.pid), pb.cpu_seconds(target.pid)
                    load = run_load(target.url, body, target.headers, concurrency, args.duration)
                    main1, process1 = main_thread_seconds(target.pid), pb.cpu_seconds(target.pid)
                    n = max(load.requests, 1)
                    row = (1e6 * (main1 - main0) / n, 1e6 * (process1 - process0) / n, load.rps, load.p50_ms)
                    results.setdefault((name, concurrency), []).append(row)
                    print(f"round {round_no} {name:8s} conc {concurrency:3d}: main {row[0]:6.0f} µs/req, "
                          f"process {row[1]:6.0f} µs/req, {row[2]:7.0f} req/s, p50 {row[3]:.2f} ms, "
                          f"errors {load.errors}", flush=True)
    print("medians over rounds:")
    for concurrency in concurrencies:
        base_rps = statistics.median(r[2] for r in results[("baseline", concurrency)])
        base_p50 = statistics.median(r[3] for r in results[("baseline", concurrency)])
        for name in targets:
            rows = results[(name, concurrency)]
            rps, p50 = statistics.median(r[2] for r in rows), statistics.median(r[3] for r in rows)
            print(f"  {name:8s} conc {concurrency:3d}: main {statistics.median(r[0] for r in rows):6.0f} µs/req, "
                  f"process {statistics.median(r[1] for r in rows):6.0f} µs/req, {rps:7.0f} req/s "
                  f"({rps / base_rps:.2f}x), p50 {p50:.2f} ms ({p50 - base_p50:+.2f} ms)")
    return 0


# -- instructions per request (callgrind) ---------------------------------------------------------------

_WARM_UP = 300


@contextmanager
def _tree_environ(tree: Path | None) -> Iterator[None]:
    """PYTHONPATH at `tree` (None: this checkout) and a fixed hash seed, for the processes started inside."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "PYTHONHASHSEED")}
    os.environ["PYTHONHASHSEED"] = "0"
    if tree is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = str(tree.resolve())
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def _exactly(url: str, body: bytes, headers: dict[str, str], concurrency: int, n: int) -> None:
    """`n` requests over `concurrency` keep-alive connections, every one of which must succeed."""
    left = [n]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"status {response.status}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def _callgrind(args: list[str], pid: int) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def _dumped_total(out_dir: Path, before: set[Path]) -> int:
    """The instruction total of the one dump file that appeared since `before`."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = sorted(set(out_dir.glob("callgrind.out*")) - before)
        for path in new:
            match = re.search(r"^(?:summary|totals): (\d+)", path.read_text(errors="replace"), re.MULTILINE)
            if match:
                return int(match.group(1))
        time.sleep(0.5)
    raise RuntimeError("callgrind wrote no dump")


def _count_tree(name: str, tree: Path | None, partner_url: str, concurrencies: list[int], n: int,
                body: bytes) -> dict[int, float]:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="gateway-callgrind-") as out, _tree_environ(tree):
        out_dir = Path(out)
        wrapper = ("valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no",
                   f"--callgrind-out-file={out_dir}/callgrind.out.%p")
        command = pb.gateway_command()
        if command is None:
            raise SystemExit("`gateway serve` is not installed in this virtualenv")
        with pb.started_gateway(command, partner_url, wrapper=wrapper, ready_seconds=300.0) as (process, port, token):
            url = f"http://127.0.0.1:{port}{pb.PATH}"
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
            result: dict[int, float] = {}
            for concurrency in concurrencies:
                asyncio.run(_exactly(url, body, headers, concurrency, _WARM_UP))
                # Instrumentation on (it starts off: start-up runs at near native speed), counters zeroed,
                # N requests, dump, off again; the dump's total is the N requests' instructions.
                _callgrind(["-i", "on"], process.pid)
                _callgrind(["-z"], process.pid)
                asyncio.run(_exactly(url, body, headers, concurrency, n))
                before = set(out_dir.glob("callgrind.out*"))
                _callgrind(["-d"], process.pid)
                result[concurrency] = _dumped_total(out_dir, before) / n
                _callgrind(["-i", "off"], process.pid)
                print(f"{name:8s} conc {concurrency:3d}: {result[concurrency] / 1000:9.1f} k instructions/request",
                      flush=True)
            return result


TreeMeasure = Callable[[str, Path | None, str, list[int], int, bytes], dict[int, float]]


def _compare_trees(measure_tree: TreeMeasure, before_tree: Path, after_tree: Path | None, concurrencies: list[int],
                   n: int, title: str, unit: Callable[[float], str]) -> int:
    """Run `measure_tree` on the before tree, then the after tree, against one fake partner; print both."""
    body = pb.request_body()
    with ExitStack() as stack:
        _, partner_port = stack.enter_context(pb.started([sys.executable, str(pb.BENCH_DIR / "fake_partner.py")]))
        partner_url = f"http://127.0.0.1:{partner_port}"
        before = measure_tree("before", before_tree, partner_url, concurrencies, n, body)
        after = measure_tree("after", after_tree, partner_url, concurrencies, n, body)
    print(title)
    for concurrency in concurrencies:
        old, new = before[concurrency], after[concurrency]
        print(f"  conc {concurrency:3d}: before {unit(old)}, after {unit(new)} ({new / old - 1:+.1%})")
    return 0


def count_instructions(before_tree: Path, concurrencies: list[int], n: int, after_tree: Path | None = None) -> int:
    """Instructions per request of the before tree's gateway and this one's, each over `n` requests."""
    return _compare_trees(_count_tree, before_tree, after_tree, concurrencies, n,
                          f"instructions per request over {n} requests (callgrind, all threads of the gateway):",
                          lambda value: f"{value / 1000:9.1f} k")


# -- system calls per request (strace -c) ---------------------------------------------------------------


def _strace_calls(summary: str) -> int:
    """The call count of strace -c's total line ("100.00  0.01  1  8000  123 total")."""
    for line in reversed(summary.splitlines()):
        fields = line.split()
        if fields and fields[-1] == "total":
            return int(fields[3])
    raise RuntimeError("strace wrote no summary")


def _syscalls_of_tree(name: str, tree: Path | None, partner_url: str, concurrencies: list[int], n: int,
                      body: bytes) -> dict[int, float]:
    command = pb.gateway_command()
    if command is None:
        raise SystemExit("`gateway serve` is not installed in this virtualenv")
    result: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="gateway-strace-") as out, _tree_environ(tree), \
            pb.started_gateway(command, partner_url) as (process, port, token):
        url = f"http://127.0.0.1:{port}{pb.PATH}"
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        for concurrency in concurrencies:
            asyncio.run(_exactly(url, body, headers, concurrency, _WARM_UP))
            summary = Path(out) / f"strace-{concurrency}.txt"
            # -f with -p attaches every thread of the process (the ledger's writer thread too).
            strace = subprocess.Popen(["strace", "-f", "-c", "-o", str(summary), "-p", str(process.pid)],
                                      stderr=subprocess.PIPE, text=True)
            assert strace.stderr is not None
            if "attached" not in strace.stderr.readline():
                strace.kill()
                raise RuntimeError("strace did not attach")
            time.sleep(0.5)
            asyncio.run(_exactly(url, body, headers, concurrency, n))
            strace.send_signal(2)  # SIGINT: detach and write the summary
            strace.communicate(timeout=60)
            result[concurrency] = _strace_calls(summary.read_text()) / n
            print(f"{name:8s} conc {concurrency:3d}: {result[concurrency]:6.1f} system calls/request", flush=True)
    return result


def count_syscalls(before_tree: Path, concurrencies: list[int], n: int, after_tree: Path | None = None) -> int:
    """System calls per request of the before tree's gateway and this one's (all threads), over `n` requests."""
    if shutil.which("strace") is None:
        raise SystemExit("--syscalls needs strace (apt-get install strace)")
    return _compare_trees(_syscalls_of_tree, before_tree, after_tree, concurrencies, n,
                          f"system calls per request over {n} requests (strace -c, all threads of the gateway):",
                          lambda value: f"{value:6.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
