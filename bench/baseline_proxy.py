"""The baseline of every proxy figure: a bare aiohttp pass-through proxy, tuned as the performance notes say.

`{METHOD} /v1/partners/{partner}/{path}` reads the body, forwards it to `--upstream`/{path} with its
Content-Type, and returns the partner's status, body and Content-Type. uvloop, one ClientSession for the
process, DummyCookieJar, no automatic decompression: the tuning /work/shared/performance-notes.md
measured, and nothing more, so it is the floor the gateway is compared against. No auth, no policy, no
ledger.

With `--forwarder gateway` the client leg is `gateway.forward.UpstreamPool` instead of a ClientSession,
which measures the gateway's upstream client alone against the same server code.

Run: `python bench/baseline_proxy.py --upstream http://127.0.0.1:9201 --port 9200`; prints `ready <port>`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field

import aiohttp
import uvloop
from aiohttp import web


async def serve_baseline(host: str, port: int, upstream: str) -> None:
    session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
    base = upstream.rstrip("/")

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        async with session.request(
            request.method,
            f"{base}/{request.match_info['path']}",
            data=body,
            headers={"Content-Type": request.headers.get("Content-Type", "application/octet-stream")},
        ) as response:
            answer = await response.read()
            return web.Response(status=response.status, body=answer, content_type=response.content_type)

    await _run(host, port, forward)


@dataclass(frozen=True)
class _Auth:
    kind: str = "bearer"
    header: str = "Authorization"
    value: str = "Bearer bench-partner-token"


@dataclass(frozen=True)
class _Upstream:
    base_url: str
    auth: _Auth | None = field(default_factory=_Auth)
    connect_timeout: float = 2.0
    total_timeout: float = 10.0
    retries: int = 0
    keep_alive: bool = True


@dataclass(frozen=True)
class _Limits:
    max_body_bytes: int = 65536
    rate_per_second: float | None = None
    burst: int | None = None
    max_concurrency: int | None = 64


@dataclass(frozen=True)
class _Profile:
    id: str
    upstream: _Upstream
    limits: _Limits = field(default_factory=_Limits)


@dataclass(frozen=True)
class _Route:
    path_template: str = "/{path}"


async def serve_gateway_forwarder(host: str, port: int, upstream: str) -> None:
    from gateway.forward import UpstreamPool

    pool = UpstreamPool()
    await pool.start()
    profile = _Profile("bench-carrier", _Upstream(upstream))
    routes: dict[str, _Route] = {}

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        # One path segment per route here, as a template "/shipments/{id}" would give.
        first, _, rest = request.match_info["path"].partition("/")
        route = routes.get(first) or routes.setdefault(first, _Route(f"/{first}/{{id}}" if rest else f"/{first}"))
        async with pool.limiter(profile):
            answer = await pool.send(
                profile,
                route,
                request.method,
                {"id": rest} if rest else {},
                [],
                {},
                body,
                content_type=request.headers.get("Content-Type"),
            )
        return web.Response(
            status=answer.status, body=answer.body, content_type=answer.headers.get("Content-Type", "application/json")
        )

    await _run(host, port, forward)


async def _run(host: str, port: int, handler: object) -> None:
    app = web.Application()
    app.router.add_route("*", "/v1/partners/{partner}/{path:.*}", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # SO_REUSEPORT lets `proxy_bench.py --targets baseline-w2` run two copies on one port, as
    # `gateway serve --workers 2` does.
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_port=REUSE_PORT)
    await site.start()
    print(f"ready {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


REUSE_PORT = False


def main() -> None:
    global REUSE_PORT
    parser = argparse.ArgumentParser(description="bare aiohttp pass-through proxy (benchmark baseline)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="partner base URL, e.g. http://127.0.0.1:9201")
    parser.add_argument("--forwarder", choices=("aiohttp", "gateway"), default="aiohttp")
    parser.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT (several copies, one port)")
    args = parser.parse_args()
    REUSE_PORT = args.reuse_port
    serve = serve_baseline if args.forwarder == "aiohttp" else serve_gateway_forwarder
    try:
        uvloop.run(serve(args.host, args.port, args.upstream))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
