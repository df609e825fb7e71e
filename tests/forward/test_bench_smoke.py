"""The proxy benchmark harness still runs: ~2 s of load through the baseline proxy and the gateway's forwarder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("loadgen", ["default", "python"])
def test_proxy_bench_runs_and_reports_figures(tmp_path: Path, loadgen: str) -> None:
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "proxy_bench.py"),
        "--rounds",
        "1",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--concurrency",
        "2",
        "--targets",
        "baseline,forwarder",
        "--json",
        str(out),
    ]
    if loadgen == "python":
        command.append("--python-loadgen")
    done = subprocess.run(command, capture_output=True, text=True, timeout=100, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(out.read_text())["summary"]
    assert [row["target"] for row in summary] == ["baseline", "forwarder"]
    for row in summary:
        assert row["errors"] == 0
        assert row["rps"] > 50
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["cpu_us_per_req"] > 0
    assert "baseline" in done.stdout
    assert "req/s" in done.stdout
