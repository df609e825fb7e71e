"""Instructions per request of the policy bench's hmac (or fpe) path, counted by valgrind's callgrind.

Wall time on a shared 2-core machine swings by half between runs; an instruction count does not (the same
tree, inputs and hash seed give the same count within ~0.5 k whatever else the machine does). Each stage
runs under callgrind twice, with N requests and with none, and the difference over N is printed, so the
interpreter's start-up and the bench's set-up cancel out.

    .venv/bin/python bench/policy_instructions.py                 # every stage, N = 1000
    .venv/bin/python bench/policy_instructions.py full parse -n 500
    .venv/bin/python bench/policy_instructions.py --mode fpe full  # the FF1 pseudonyms instead of HMAC
    PYTHONPATH=/tmp/before .venv/bin/python /tmp/before/bench/policy_instructions.py   # an older tree

Needs valgrind (on every machine of this project). About 20 s per stage.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

STAGES = ("full", "parse", "validate", "minimise", "canonical", "pseudo")
_WARM_UP = 50


def _calls(mode: str) -> dict[str, Callable[[], Any]]:
    """One call per stage, on the bench's own route, order and headers."""
    import orjson
    import policy_bench as bench

    from gateway.pseudonyms import PartnerKeyring, Pseudonymiser
    from gateway.strictjson import parse_json

    policy = bench.build_policy(mode)
    raw = orjson.dumps(bench.ORDER)
    headers = {"Idempotency-Key": "k-1", "Authorization": "Bearer x", "User-Agent": "svc"}
    body = parse_json(raw)
    minimised = policy.minimise_validated(policy.validate_request(body), (), {}, headers)
    pseudonymiser = Pseudonymiser(PartnerKeyring(bytes(32)))
    phone = pseudonymiser.bind("carrier-tw-hct", "phone", mode)
    imei = pseudonymiser.bind("carrier-tw-hct", "imei", mode)
    return {
        "full": lambda: bench.one_request_fused(policy, raw, headers),
        "parse": lambda: parse_json(raw),
        "validate": lambda: policy.validate_request(body),
        "minimise": lambda: policy.minimise_validated(policy.validate_request(body), (), {}, headers),
        "canonical": minimised.canonical_body,
        "pseudo": lambda: (phone("+886912345678"), imei("490154203237518")),
    }


def _run_stage(stage: str, n: int, mode: str) -> None:
    """The measured process: warm up, then `n` calls of one stage."""
    call = _calls(mode)[stage]
    for _ in range(_WARM_UP):
        call()
    for _ in range(n):
        call()


def _instructions(stage: str, n: int, mode: str) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={Path(scratch) / 'cg.out'}",
             sys.executable, __file__, "--run", stage, "-n", str(n), "--mode", mode],
            env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=True,
        )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="*", metavar="STAGE",
                        help=f"stages to count: {', '.join(STAGES)} (default: all)")
    parser.add_argument("-n", type=int, default=1000, help="requests per measured run (default 1000)")
    parser.add_argument("--mode", choices=("hmac", "fpe"), default="hmac",
                        help="pseudonym mode of the bench route (default hmac)")
    parser.add_argument("--run", metavar="STAGE", help=argparse.SUPPRESS)  # the process valgrind measures
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.run:
        _run_stage(args.run, args.n, args.mode)
        return 0
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if shutil.which("valgrind") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    import gateway

    print(f"gateway from {Path(gateway.__file__).parent}; mode {args.mode}; N = {args.n}; PYTHONHASHSEED=0")
    for stage in args.stages or STAGES:
        per_request = (_instructions(stage, args.n, args.mode) - _instructions(stage, 0, args.mode)) / args.n
        print(f"{stage:10s} {per_request / 1000:8.1f} k instructions per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
