"""Same-run before/after of the whole gateway: two `gateway serve` (an older tree and this one) and the bare
baseline, alternating, with CPU per request of each gateway's main thread and whole process.

    git worktree add --detach /tmp/before 7fe86d6
    .venv/bin/python bench/proxy_ab.py /tmp/before --rounds 4 --concurrency 1,32 --duration 5

The "before" gateway runs this virtualenv's interpreter with `PYTHONPATH=<tree>`, so its `gateway`
package is the older tree's (PYTHONPATH comes before the editable install); "after" is this checkout.
Each round drives the three targets in turn (order reversed every other round) after a 1 s warm-up and
prints one line per target; the medians over rounds close the output. Uses the harness of
proxy_bench.py (wrk when installed, else the Python load generator).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path

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
    args = parser.parse_args(argv)
    if not (args.before_tree / "gateway" / "__init__.py").is_file():
        parser.error(f"{args.before_tree} holds no gateway package")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
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


if __name__ == "__main__":
    raise SystemExit(main())
