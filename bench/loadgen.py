"""A bounded HTTP load generator: wrk when installed, else a small asyncio generator of our own.

`run_load(...)` sends one fixed POST as fast as `concurrency` keep-alive connections allow for
`duration_s` seconds and returns requests, errors, req/s, p50 and p99. wrk is preferred: its C event
loop costs far less CPU than Python, so it perturbs a 2-core machine less. The Python fallback is
bounded by the same duration and reports the same fields.

Run: `python bench/loadgen.py --url http://127.0.0.1:9200/v1/partners/x/shipments/S-1 --body-file b.json
--concurrency 32 --duration 5 [--header 'Authorization: Bearer ...'] [--python]`; prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp


@dataclass(frozen=True)
class LoadResult:
    tool: str
    concurrency: int
    duration_s: float
    requests: int
    errors: int  # non-2xx answers plus socket errors
    rps: float
    p50_ms: float
    p99_ms: float


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _WRK_UNITS[match.group(2)]


def _run_wrk(url: str, body: bytes, headers: dict[str, str], concurrency: int, duration_s: float) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body"
        body_file.write_bytes(body)
        lines = [
            'wrk.method = "POST"',
            f'local f = assert(io.open("{body_file}", "rb"))',
            "wrk.body = f:read('*a')",
            "f:close()",
        ]
        lines += [f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}" for name, value in headers.items()]
        script = Path(tmp) / "post.lua"
        script.write_text("\n".join(lines) + "\n")
        threads = 1 if concurrency < 8 else 2
        duration = max(1, round(duration_s))
        command = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", str(script), url]
        output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=duration + 30).stdout
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", output, re.MULTILINE))
    return LoadResult(
        tool="wrk",
        concurrency=concurrency,
        duration_s=float(duration),
        requests=requests,
        errors=errors,
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        p50_ms=_wrk_ms(percentiles["50"]),
        p99_ms=_wrk_ms(percentiles["99"]),
    )


async def _run_python(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, duration_s: float
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session:
        deadline = time.perf_counter() + duration_s

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        if response.status >= 300:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return LoadResult(
        "python",
        concurrency,
        elapsed,
        len(latencies),
        errors,
        len(latencies) / elapsed,
        cuts[49] * 1000,
        cuts[98] * 1000,
    )


def run_load(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, duration_s: float, *, use_wrk: bool | None = None
) -> LoadResult:
    """One bounded load run; wrk unless `use_wrk` is False or wrk is not installed."""
    if use_wrk is None:
        use_wrk = wrk_available()
    if use_wrk:
        return _run_wrk(url, body, headers, concurrency, duration_s)
    return asyncio.run(_run_python(url, body, headers, concurrency, duration_s))


def main() -> None:
    parser = argparse.ArgumentParser(description="bounded HTTP POST load generator (wrk or Python)")
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--python", action="store_true", help="use the Python generator even if wrk is installed")
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    result = run_load(
        args.url,
        args.body_file.read_bytes(),
        headers,
        args.concurrency,
        args.duration,
        use_wrk=False if args.python else None,
    )
    json.dump(asdict(result), sys.stdout)
    print()


if __name__ == "__main__":
    main()
