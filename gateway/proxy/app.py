"""The aiohttp application: wiring of the long-lived services, the egress handler, the operations and
admin endpoints, profile reload, and start/stop of one gateway process.

The egress handler does no checks of its own: it builds the request context and hands it to the current
`Pipeline` (gateway.proxy.pipeline). A reload builds a complete new pipeline from a freshly loaded profile
set and swaps one reference, so a request sees either the old set or the new one, never a mix.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import orjson
import yaml
from aiohttp import web
from multidict import MultiMapping

from gateway import __version__
from gateway.auth import CallerAuthenticator
from gateway.config import Settings
from gateway.errors import ConfigError, GatewayError, MalformedRequest, NotFound, Violation
from gateway.forward import UpstreamPool
from gateway.keys import load_keys
from gateway.ledger import default_chain_id, open_ledger
from gateway.logs import get_logger
from gateway.metrics import GatewayMetrics
from gateway.profiles import ProfileLoadError, ProfileSet, load_profiles
from gateway.proxy.context import EGRESS_PREFIX, BodyStream, request_id_from, start_context
from gateway.proxy.httpserver import LeanServer, RequestBodyTimeout
from gateway.proxy.pipeline import Pipeline, build_pipeline
from gateway.proxy.problems import InternalError, problem_response
from gateway.proxy.services import GatewayServices
from gateway.pseudonyms import PartnerKeyring, Pseudonymiser
from gateway.resources import shipped
from gateway.subjects import TransferRules, open_registry

__all__ = ["EGRESS_PREFIX", "GatewayState", "RunningGateway", "create_app", "start_gateway"]

ADMIN_SCOPE = "gateway:admin"
_log = get_logger("gateway.server")


class MethodNotAllowed(GatewayError):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


class ProfilesRejected(GatewayError):
    """A reload found errors in the profile set; the running set stays. Violations name file:line."""

    status = 422
    slug = "profiles-rejected"
    title = "The profile set has errors; the running set stays"


class NotReady(GatewayError):
    status = 503
    slug = "not-ready"
    title = "The gateway is not ready"


@dataclass(frozen=True)
class ReloadSummary:
    partners: int
    routes: int


class GatewayState:
    """One process's gateway: settings, services (after startup) and the current pipeline."""

    def __init__(self, settings: Settings, *, worker_index: int = 0, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.worker_index = worker_index
        self.environ = environ
        self._services: GatewayServices | None = None
        self._pipeline: Pipeline | None = None
        self._reload_lock = asyncio.Lock()
        self.openapi = _openapi_document()
        # Set by a worker under `serve --workers N`: after this process's admin reload succeeded, ask the
        # supervisor to reload every worker (an admin call reaches one process only); False if it could not.
        self.reload_peers: Callable[[], bool] | None = None
        # Set by `gateway serve`: run after a reload swapped a new pipeline in (it refreezes the heap, so the
        # replaced pipeline's objects are not kept in the permanent generation).
        self.after_reload: Callable[[], None] | None = None

    @property
    def services(self) -> GatewayServices:
        if self._services is None:
            raise NotReady("the gateway is starting")
        return self._services

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            raise NotReady("the gateway is starting")
        return self._pipeline

    def _chain_id(self) -> str:
        # One hash chain per writer: each worker process appends to its own chain, named after the host
        # and its index so that a restarted worker continues its chain.
        return default_chain_id(None if self.settings.workers <= 1 else f"w{self.worker_index}")

    async def start(self) -> None:
        settings = self.settings
        metrics = GatewayMetrics()
        keys = await asyncio.to_thread(load_keys, settings.keys_dir, dev_mode=settings.dev_mode)
        pseudonymiser = Pseudonymiser(PartnerKeyring(keys.master_key))
        rules = await asyncio.to_thread(TransferRules.load, settings.transfer_rules)
        authenticator = CallerAuthenticator.from_settings(settings, keys, observer=metrics.jwks_observer())
        chain_id = self._chain_id()
        ledger = open_ledger(
            settings.ledger_url, keys.ledger, chain_id=chain_id,
            checkpoint_every_records=settings.checkpoint_every_records,
            checkpoint_every_seconds=settings.checkpoint_every_seconds,
            commit_timeout_seconds=settings.ledger_commit_timeout_seconds,
            observer=metrics.ledger_observer(),
        )
        upstream = UpstreamPool()
        registry = open_registry(settings.ledger_url, keys.ledger, cache_seconds=settings.subject_cache_seconds)
        await ledger.start()
        try:
            await authenticator.start()
            await upstream.start()
            await registry.start()
            services = GatewayServices(
                settings=settings, keys=keys, metrics=metrics, authenticator=authenticator, ledger=ledger,
                upstream=upstream, subjects=registry, transfer_rules=rules, pseudonymiser=pseudonymiser,
                chain_id=chain_id,
            )
            profiles = await asyncio.to_thread(self._load_profiles, pseudonymiser)
            self._pipeline = build_pipeline(services, profiles)
        except BaseException:
            await upstream.close()
            await authenticator.close()
            await registry.close()
            await ledger.close()
            raise
        self._services = services
        metrics.prime(_routes_of(profiles))
        _log.info("started", partners=len(profiles.profiles), routes=sum(1 for _ in _routes_of(profiles)),
                  worker=self.worker_index, version=__version__)

    async def close(self) -> None:
        services, self._services, self._pipeline = self._services, None, None
        if services is None:
            return
        # Each close runs even when an earlier one fails: the ledger's final checkpoint matters most.
        closers: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("upstream", services.upstream.close), ("authenticator", services.authenticator.close),
            ("subjects", services.subjects.close), ("ledger", services.ledger.close),
        ]
        for name, close in closers:
            try:
                await close()
            except Exception as exc:
                _log.error("close_failed", component_closed=name, error=type(exc).__name__)
        _log.info("stopped", worker=self.worker_index)

    def _load_profiles(self, pseudonymiser: Pseudonymiser) -> ProfileSet:
        return load_profiles(
            self.settings.profiles_dir, pseudonymiser=pseudonymiser, environ=self.environ,
            max_json_depth=self.settings.max_json_depth,
        )

    async def reload(self) -> ReloadSummary:
        """Load the profile set again and swap it in whole; on any error keep the running one and raise."""
        services = self.services
        result = "error"
        try:
            async with self._reload_lock:
                profiles = await asyncio.to_thread(self._load_profiles, services.pseudonymiser)
                pipeline = build_pipeline(services, profiles)
                self._pipeline = pipeline
                result = "ok"
                if self.after_reload is not None:
                    self.after_reload()
        finally:
            services.metrics.profile_reloads.labels(result=result).inc()
        services.metrics.prime(_routes_of(profiles))
        summary = ReloadSummary(len(profiles.profiles), sum(1 for _ in _routes_of(profiles)))
        _log.info("profiles_reloaded", partners=summary.partners, routes=summary.routes)
        return summary

    async def reload_logged(self) -> None:
        """SIGHUP: reload, and log (never raise) a refused set."""
        try:
            await self.reload()
        except ProfileLoadError as exc:
            _log.error("profiles_reload_refused", problems=len(exc.problems), errors=str(exc))
        except ConfigError as exc:
            _log.error("profiles_reload_refused", errors=str(exc))


def _routes_of(profiles: ProfileSet) -> list[tuple[str, str]]:
    return [(pid, route.id) for pid, profile in profiles.profiles.items() for route in profile.routes]


STATE_KEY = web.AppKey("gateway_state", GatewayState)


class DeadlineBody:
    """A request body that must arrive whole within `seconds` of its first read (408 after), as the lean
    server's `request_body_timeout_seconds` deadline does: a whole-body bound, not an idle one."""

    __slots__ = ("_deadline", "_inner", "_seconds")

    def __init__(self, inner: BodyStream, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds
        self._deadline: float | None = None

    async def read(self, n: int = -1) -> bytes:
        if self._deadline is None:
            self._deadline = asyncio.get_running_loop().time() + self._seconds
        try:
            async with asyncio.timeout_at(self._deadline):
                return await self._inner.read(n)
        except TimeoutError:
            raise RequestBodyTimeout("the request body did not arrive in time") from None


class _AiohttpEgressRequest:
    """aiohttp's request as the stages read it (gateway.proxy.context.IncomingRequest), with its body
    under the body deadline. In a running gateway the lean server reads every egress request itself (a
    connection it hands to aiohttp closes after its one answer), so only a target that merely routes here
    (`/v1/p%61rtners/...`; the lean server refuses absolute-form targets) arrives, and the pipeline
    refuses it (its raw target has no partner); an app served by aiohttp alone serves egress here, under
    the same body bound."""

    __slots__ = ("_request", "content")

    def __init__(self, request: web.Request, body_timeout: float) -> None:
        self._request = request
        self.content = DeadlineBody(request.content, body_timeout)

    @property
    def method(self) -> str:
        return self._request.method

    @property
    def raw_path(self) -> str:
        return self._request.raw_path

    @property
    def headers(self) -> MultiMapping[str]:
        return self._request.headers

    @property
    def content_type(self) -> str:
        return self._request.content_type

    @property
    def charset(self) -> str | None:
        return self._request.charset

    @property
    def content_length(self) -> int | None:
        return self._request.content_length

    @property
    def body_exists(self) -> bool:
        return self._request.body_exists


async def egress(request: web.Request) -> web.StreamResponse:
    """`{METHOD} /v1/partners/{partner_id}/{path}`: everything happens in the pipeline's stages."""
    state = request.app[STATE_KEY]
    ctx = start_context(_AiohttpEgressRequest(request, state.settings.request_body_timeout_seconds))
    try:
        pipeline = state.pipeline
    except GatewayError as exc:
        return problem_response(exc, ctx.request_id)
    response = (await pipeline.handle(ctx)).as_response()
    if response.status == RequestBodyTimeout.status:
        response.force_close()  # the rest of the body is not waited for
    return response


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error outside the pipeline (unknown paths, wrong methods, ops and admin endpoints) becomes a
    problem+json body too; unexpected exceptions are logged by type only and answered without details."""
    try:
        return await handler(request)
    except GatewayError as exc:
        return problem_response(exc, request_id_from(request.headers.get("X-Request-Id")))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error: GatewayError
        if exc.status == 404:
            error = NotFound("no such endpoint")
        elif exc.status == 405:
            error = MethodNotAllowed("method not allowed for this endpoint")
        else:
            error = MalformedRequest("the request could not be processed")
        return problem_response(error, request_id_from(request.headers.get("X-Request-Id")))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        _log.error("unexpected_error", path_kind="ops", error=type(exc).__name__)
        return problem_response(InternalError("internal error"), request_id_from(None))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    services = state.services  # NotReady while starting
    if not state.pipeline.profiles.profiles:
        raise NotReady("no partner profile is loaded")
    if not services.ledger.writable():
        raise NotReady("the ledger is not writable")
    return web.json_response({"status": "ready", "partners": len(state.pipeline.profiles.profiles)})


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics = request.app[STATE_KEY].services.metrics
    response = web.Response(body=metrics.render())
    response.content_type = "text/plain"
    response.charset = "utf-8"
    response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    return response


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE_KEY].openapi, content_type="application/json")


async def admin_reload(request: web.Request) -> web.Response:
    """`POST /v1/admin/reload` (scope gateway:admin): 200 with the new set's size, or 422 with every
    problem of the refused set (file:line and reason), the running set unchanged. Under a supervisor, a
    set this process accepted is then reloaded by every worker."""
    from gateway.proxy.admin import authorise

    state = request.app[STATE_KEY]
    await authorise(state.services, request, (ADMIN_SCOPE,))
    try:
        summary = await state.reload()
    except ProfileLoadError as exc:
        raise ProfilesRejected(
            f"{len(exc.problems)} problem(s) in the profile set",
            [Violation(f"{p.file}:{p.line}" if p.line else p.file, p.reason) for p in exc.problems],
        ) from None
    except ConfigError as exc:
        raise ProfilesRejected(str(exc)) from None
    answer: dict[str, object] = {"result": "ok", "partners": summary.partners, "routes": summary.routes}
    if state.reload_peers is not None:
        # The other workers reload the same folder on the supervisor's SIGHUP (this one once more too:
        # a repeated reload is harmless, a skipped one could leave a worker on a stale set). Each worker
        # logs and counts its own result; this answer cannot wait for theirs.
        if state.reload_peers():
            answer["workers"] = "all signalled"
        else:
            _log.error("profiles_reload_not_relayed", reason="supervisor-unreachable")
            answer["workers"] = "this worker only"
    return web.json_response(answer)


def _openapi_document() -> bytes:
    """The shipped schemas/openapi.yaml as JSON, else a minimal generated description."""
    try:
        return orjson.dumps(yaml.safe_load(shipped("schemas", "openapi.yaml").read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError, TypeError):
        pass  # a broken install: still describe the egress API
    problem = {"description": "Refusal", "content": {"application/problem+json": {"schema": {"type": "object"}}}}
    return orjson.dumps({
        "openapi": "3.1.0",
        "info": {"title": "Partner Data Gateway", "version": __version__},
        "paths": {
            "/v1/partners/{partner_id}/{path}": {
                "parameters": [
                    {"name": "partner_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "X-Purpose", "in": "header", "schema": {"type": "string"}},
                    {"name": "X-Request-Id", "in": "header", "schema": {"type": "string"}},
                ],
                **{m: {"summary": "Disclose to a partner through its declared route",
                       "responses": {"200": {"description": "The partner's filtered answer"}, "default": problem}}
                   for m in ("get", "post", "put", "patch", "delete")},
            },
            "/healthz": {"get": {"responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"responses": {"200": {"description": "ready"}, "503": problem}}},
            "/metrics": {"get": {"responses": {"200": {"description": "Prometheus text format"}}}},
            "/v1/admin/reload": {"post": {"responses": {"200": {"description": "reloaded"}, "422": problem}}},
        },
    })


def create_app(
    settings: Settings, *, worker_index: int = 0, environ: Mapping[str, str] | None = None
) -> web.Application:
    """The gateway application; its services start with the app (on_startup) and close with it."""
    app = web.Application(middlewares=[problem_middleware], client_max_size=settings.max_body_bytes)
    state = GatewayState(settings, worker_index=worker_index, environ=environ)
    app[STATE_KEY] = state

    async def on_startup(_: web.Application) -> None:
        await state.start()

    async def on_cleanup(_: web.Application) -> None:
        await state.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/openapi.json", openapi)
    # The admin and audit API (gateway.proxy.admin) imports this module, hence the late import.
    from gateway.proxy.admin import add_admin_routes, logged

    # Logged like every admin endpoint: a reload changes what every partner may receive.
    app.router.add_post("/v1/admin/reload", logged("reload", admin_reload))
    add_admin_routes(app)
    app.router.add_route("*", "/v1/partners/{partner_id}", egress)
    app.router.add_route("*", "/v1/partners/{partner_id}/{tail:.*}", egress)
    return app


@dataclass
class RunningGateway:
    """A started gateway listening on a socket (tests, the demo and `gateway serve` use it)."""

    app: web.Application
    runner: web.AppRunner
    host: str
    port: int
    stopped: bool = False
    # The lean egress server (gateway.proxy.httpserver) when it owns the listening socket; None when the
    # runner's own site listens (aiohttp serves every path then, egress included).
    lean: LeanServer | None = None

    @property
    def state(self) -> GatewayState:
        return self.app[STATE_KEY]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the shutdown grace), then close the
        services (the ledger writes its checkpoint and flushes)."""
        if self.stopped:
            return
        self.stopped = True
        started = time.perf_counter()
        if self.lean is not None:
            # Egress connections first (the ledger must outlive their requests), then aiohttp's, whose
            # cleanup closes the services.
            await self.lean.stop(self.state.settings.shutdown_grace_seconds)
        await self.runner.cleanup()
        _log.info("shutdown_complete", seconds=round(time.perf_counter() - started, 3))


async def start_gateway(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    reuse_port: bool = False,
    worker_index: int = 0,
    environ: Mapping[str, str] | None = None,
) -> RunningGateway:
    """Start one gateway process's server; port 0 picks a free port (see `RunningGateway.port`).

    The lean server (gateway.proxy.httpserver) listens and serves the egress path itself; a connection
    for any other path is handed to the aiohttp runner's own server, which no site of its own exposes."""
    listen_host, listen_port = settings.listen_host_port
    host = listen_host if host is None else host
    port = listen_port if port is None else port
    app = create_app(settings, worker_index=worker_index, environ=environ)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=settings.shutdown_grace_seconds,
        keepalive_timeout=settings.keepalive_timeout_seconds,  # connections handed over for other paths
    )
    await runner.setup()
    assert runner.server is not None
    state = app[STATE_KEY]
    lean = LeanServer(
        lambda: state.pipeline, runner.server, head_timeout=settings.request_head_timeout_seconds,
        body_timeout=settings.request_body_timeout_seconds, keepalive_timeout=settings.keepalive_timeout_seconds,
    )
    try:
        bound_port = await lean.listen(host, port, reuse_port=reuse_port, backlog=1024)
    except BaseException:
        await runner.cleanup()
        raise
    return RunningGateway(app=app, runner=runner, host=host, port=bound_port, lean=lean)
