"""Proxy benchmark: the gateway against a bare aiohttp pass-through proxy, in the same run, alternating.

Starts a fake partner, the baseline proxy (bench/baseline_proxy.py), optionally the baseline server with
the gateway's own upstream client (`--targets ...,forwarder`), and the gateway (`gateway serve`) as
subprocesses; then, for each concurrency and each round, drives every target in turn with the same
1.3 KB JSON POST (a carrier-like route with two pseudonymised identifiers) and reports, per target,
the median over rounds of req/s, p50, p99 and the proxy process's CPU time per request (from
/proc/<pid>/stat), plus the median per-round ratio to the baseline. The order of targets alternates
between rounds so neither always runs on a warmer machine.

    .venv/bin/python bench/proxy_bench.py                       # 3 rounds x 5 s, concurrency 1 and 32
    .venv/bin/python bench/proxy_bench.py --rounds 5 --duration 10 --targets baseline,forwarder,gateway

Until `gateway serve` exists, the gateway target is skipped with a note and the baseline runs alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import LoadResult, run_load, wrk_available

BENCH_DIR = Path(__file__).resolve().parent
PARTNER_ID = "bench-carrier"
PATH = f"/v1/partners/{PARTNER_ID}/shipments/S-2024-000001"
PARTNER_TOKEN = "bench-partner-token"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def request_body() -> bytes:
    """A 1.3 KB carrier-like shipment: a phone and an IMEI to pseudonymise, the rest kept or dropped."""
    body: dict[str, object] = {
        "order_id": "O-2024-000001",
        "recipient": {
            "customer_id": "C-000123456",
            "name": "Chen Mei-Ling",
            "phone": "+886912345678",
            "address": "No. 7, Section 5, Xinyi Road, Xinyi District, Taipei City 110",
            "country": "TW",
        },
        "device": {"imei": "490154203237518"},
        "parcel": {"weight_g": 1200, "dims": {"l_cm": 30, "w_cm": 20, "h_cm": 10}},
        "delivery_note": "Please leave the parcel at the front desk of the building.",
        "items": [],
    }
    items: list[dict[str, object]] = body["items"]  # type: ignore[assignment]
    while len(json.dumps(body, separators=(",", ":")).encode()) < 1300:
        n = len(items)
        items.append({"sku": f"SKU-{n:05d}", "quantity": 1 + n % 3, "description": f"Ceramic mug, blue, set {n}"})
    return json.dumps(body, separators=(",", ":")).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (fields 14 and 15 of /proc/<pid>/stat), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds_tree(pid: int) -> float:
    """CPU seconds of a process and all its descendants (a `--workers` supervisor and its workers)."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            with contextlib.suppress(OSError):  # the child exited between the listing and the read
                total += cpu_seconds_tree(int(child))
    return total


@contextmanager
def started(command: list[str], *, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A server subprocess and the port from its `ready <port>` line; terminated on exit."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline() if process.stdout else ""
        if not line.startswith("ready "):
            process.kill()
            stderr = process.stderr.read() if process.stderr else ""
            raise RuntimeError(f"{' '.join(command[1:3])} did not start: {line!r} {stderr[-2000:]}")
        yield process, int(line.split()[1])
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def started_gateway(
    command: list[str], partner_url: str, *, wrapper: tuple[str, ...] = (), ready_seconds: float = 30.0
) -> Iterator[tuple[subprocess.Popen[bytes], int, str]]:
    """`gateway serve` on a free port with the bench profile, fresh keys and a fresh SQLite ledger, and a token.
    `wrapper` goes before the serve command only (valgrind, say), not before the token command."""
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        port = free_port()
        env = dict(os.environ)
        env.update(
            GATEWAY_LISTEN=f"127.0.0.1:{port}",
            GATEWAY_PROFILES_DIR=str(BENCH_DIR / "profiles"),
            GATEWAY_LEDGER_URL=f"sqlite:///{tmp}/ledger.sqlite3",
            GATEWAY_KEYS_DIR=f"{tmp}/keys",
            BENCH_PARTNER_URL=partner_url,
            BENCH_PARTNER_TOKEN=PARTNER_TOKEN,
        )
        token = subprocess.run(
            [command[0], "token", "mint", "--sub", "bench-service", "--scope", f"disclose:{PARTNER_ID}:delivery"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        log = open(Path(tmp) / "gateway.log", "wb")  # noqa: SIM115 - closed below
        process = subprocess.Popen([*wrapper, *command], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            try:
                wait_ready(f"http://127.0.0.1:{port}/readyz", ready_seconds)
            except RuntimeError:
                log.flush()
                raise RuntimeError(
                    "gateway serve did not become ready:\n"
                    + (Path(tmp) / "gateway.log").read_text(errors="replace")[-3000:]
                ) from None
            yield process, port, token
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


def wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready after {timeout_s} s")
        time.sleep(0.2)


def check_once(url: str, body: bytes, headers: dict[str, str]) -> None:
    """One request before measuring: a target that answers errors would otherwise benchmark its error path."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = response.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url} answered {exc.code}: {exc.read()[:300]!r}") from None
    if b"tracking_number" not in answer:
        raise RuntimeError(f"{url} answered without the partner's body: {answer[:200]!r}")


def gateway_command() -> list[str] | None:
    """`gateway serve`, or None while the command does not exist yet."""
    exe = shutil.which("gateway", path=str(Path(sys.executable).parent)) or shutil.which("gateway")
    if exe is None:
        return None
    probe = subprocess.run([exe, "serve", "--help"], capture_output=True, text=True, timeout=60)
    return [exe, "serve"] if probe.returncode == 0 else None


@dataclass(frozen=True)
class Target:
    name: str
    pid: int
    url: str
    headers: dict[str, str]
    # Further processes serving the same port (the second copy of `baseline-w2`); their CPU counts too.
    other_pids: tuple[int, ...] = ()

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds_tree(pid) for pid in (self.pid, *self.other_pids))


@dataclass(frozen=True)
class Measurement:
    target: str
    round: int
    load: LoadResult
    cpu_us_per_request: float


def start_targets(stack: ExitStack, names: list[str], partner_url: str, strict: bool) -> list[Target]:
    python = sys.executable
    json_headers = {"Content-Type": "application/json"}
    targets: list[Target] = []
    for name in names:
        if name in ("baseline", "forwarder"):
            command = [python, str(BENCH_DIR / "baseline_proxy.py"), "--upstream", partner_url]
            if name == "forwarder":
                command += ["--forwarder", "gateway"]
            proc, port = stack.enter_context(started(command))
            targets.append(Target(name, proc.pid, f"http://127.0.0.1:{port}{PATH}", json_headers))
        elif name == "baseline-w2":
            # Two copies of the baseline on one port: the fair partner of `gateway-w2`.
            port = free_port()
            command = [python, str(BENCH_DIR / "baseline_proxy.py"), "--upstream", partner_url, "--port", str(port)]
            first, _ = stack.enter_context(started([*command, "--reuse-port"]))
            second, _ = stack.enter_context(started([*command, "--reuse-port"]))
            targets.append(Target(name, first.pid, f"http://127.0.0.1:{port}{PATH}", json_headers, (second.pid,)))
        elif name in ("gateway", "gateway-w2"):
            serve = gateway_command()
            if serve is None:
                print("note: `gateway serve` is not available yet; the gateway target is skipped (baseline only)")
                continue
            try:
                if name == "gateway-w2":
                    serve = [*serve, "--workers", "2"]
                gw, port, token = stack.enter_context(started_gateway(serve, partner_url))
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                if strict:
                    raise
                tail = str(exc).strip().splitlines()[-1:] or [""]
                print(f"note: the gateway did not start ({tail[0]}); baseline only (--strict to fail instead)")
                continue
            headers = {**json_headers, "Authorization": f"Bearer {token}"}
            targets.append(Target(name, gw.pid, f"http://127.0.0.1:{port}{PATH}", headers))
        else:
            raise SystemExit(f"unknown target {name!r} (baseline, baseline-w2, forwarder, gateway, gateway-w2)")
    return targets


def measure(
    target: Target,
    body: bytes,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    round_no: int,
    use_wrk: bool | None,
) -> Measurement:
    if warmup_s > 0:
        run_load(target.url, body, target.headers, concurrency, warmup_s, use_wrk=use_wrk)
    cpu_before = target.cpu_seconds()
    load = run_load(target.url, body, target.headers, concurrency, duration_s, use_wrk=use_wrk)
    cpu_used = target.cpu_seconds() - cpu_before
    return Measurement(target.name, round_no, load, cpu_used / max(load.requests, 1) * 1e6)


def summarise(results: list[Measurement], concurrency: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    names = list(dict.fromkeys(m.target for m in results))
    baseline_by_round = {m.round: m for m in results if m.target == "baseline"}
    for name in names:
        mine = [m for m in results if m.target == name]
        ratios = [m.load.rps / baseline_by_round[m.round].load.rps for m in mine if m.round in baseline_by_round]
        p50_deltas = [
            m.load.p50_ms - baseline_by_round[m.round].load.p50_ms for m in mine if m.round in baseline_by_round
        ]
        rows.append(
            {
                "target": name,
                "concurrency": concurrency,
                "rounds": len(mine),
                "rps": statistics.median(m.load.rps for m in mine),
                "p50_ms": statistics.median(m.load.p50_ms for m in mine),
                "p99_ms": statistics.median(m.load.p99_ms for m in mine),
                "cpu_us_per_req": statistics.median(m.cpu_us_per_request for m in mine),
                "errors": sum(m.load.errors for m in mine),
                "rps_ratio_vs_baseline": statistics.median(ratios) if ratios else None,
                "p50_delta_ms_vs_baseline": statistics.median(p50_deltas) if p50_deltas else None,
            }
        )
    return rows


def print_table(rows: list[dict[str, object]]) -> None:
    header = (
        f"{'target':<12} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10} "
        f"{'errors':>6} {'ratio':>6} {'p50 +ms':>8}"
    )
    print(header)
    for row in rows:
        ratio = row["rps_ratio_vs_baseline"]
        delta = row["p50_delta_ms_vs_baseline"]
        print(
            f"{row['target']:<12} {row['concurrency']:>4} {row['rps']:>9.0f} {row['p50_ms']:>8.3f} "
            f"{row['p99_ms']:>8.3f} {row['cpu_us_per_req']:>10.0f} {row['errors']:>6} "
            f"{'' if ratio is None else f'{ratio:.2f}x':>6} {'' if delta is None else f'{delta:+.3f}':>8}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gateway vs bare aiohttp pass-through proxy, same run, alternating")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured run (wrk: whole seconds)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load before each run")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated connection counts")
    parser.add_argument(
        "--targets",
        default="baseline,gateway",
        help="comma-separated: baseline, baseline-w2, forwarder, gateway, gateway-w2 (-w2: two processes, one port)",
    )
    parser.add_argument("--python-loadgen", action="store_true", help="use the Python load generator even with wrk")
    parser.add_argument("--strict", action="store_true", help="fail when the gateway cannot be started")
    parser.add_argument("--json", type=Path, help="also write every measurement and the summary to this file")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    if "baseline" not in names:
        names.insert(0, "baseline")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    use_wrk = False if args.python_loadgen else None
    body = request_body()
    load1 = os.getloadavg()[0]
    print(
        f"loadgen: {'wrk' if use_wrk is None and wrk_available() else 'python'}; body {len(body)} bytes; "
        f"{os.cpu_count()} CPUs; load average {load1:.2f} at start; {args.rounds} rounds x {args.duration} s"
    )
    summary: list[dict[str, object]] = []
    every: list[Measurement] = []
    with ExitStack() as stack:
        _, partner_port = stack.enter_context(started([sys.executable, str(BENCH_DIR / "fake_partner.py")]))
        partner_url = f"http://127.0.0.1:{partner_port}"
        targets = start_targets(stack, names, partner_url, args.strict)
        for target in targets:
            check_once(target.url, body, target.headers)
        for concurrency in concurrencies:
            results: list[Measurement] = []
            for round_no in range(args.rounds):
                # Alternate the order so no target always runs first (on a cooler or warmer machine).
                order = targets if round_no % 2 == 0 else list(reversed(targets))
                for target in order:
                    results.append(measure(target, body, concurrency, args.duration, args.warmup, round_no, use_wrk))
            rows = summarise(results, concurrency)
            summary.extend(rows)
            every.extend(results)
    print_table(summary)
    print(f"load average {os.getloadavg()[0]:.2f} at end (other processes share these cores)")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": [asdict(m) for m in every]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
