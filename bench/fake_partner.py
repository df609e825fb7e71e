"""A fake partner for benchmarks: an aiohttp server that reads the body and answers a small JSON document.

Run: `python bench/fake_partner.py --port 9201`. Prints `ready <port>` on stdout once listening
(port 0 picks a free one), so a harness can start it as a subprocess and wait for that line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvloop
from aiohttp import web

ANSWER = b'{"tracking_number":"TW000000001","status":"accepted","eta":"2024-05-02"}'


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    print(f"ready {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        uvloop.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
