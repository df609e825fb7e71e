"""The egress pipeline: the ordered list of stages every partner call goes through, and the runner.

`STAGES` below is the one place that says what happens to a request and in which order; adding a step
means writing a stage class (gateway.proxy.stages) and listing it here. A `Pipeline` is built whole from
the long-lived services and one profile set; a reload builds a new one and swaps it in only when every
stage configured without error, so in-flight requests finish on the pipeline they started with.

The runner turns a refusal into a problem+json response, records it (a refusal in the ledger when the
partner is known and the caller authenticated, also when the ledger failed the disclosure's commit or
the subject re-check refused a retry; an outcome when the disclosure was already recorded),
and writes the metrics and the one log line of the request (just after the response has been handed
to the server, so the caller does not wait for them).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence

from gateway.errors import GatewayError, LedgerUnavailable, UpstreamError, UpstreamReidentifyRefused
from gateway.ledger import RecordDraft
from gateway.logs import get_logger
from gateway.profiles import ProfileSet
from gateway.proxy.context import Answer, RequestContext
from gateway.proxy.problems import InternalError, problem_answer
from gateway.proxy.services import GatewayServices
from gateway.proxy.stages import (
    Admit,
    Authenticate,
    Authorize,
    CheckSubject,
    FilterResponse,
    Forward,
    LedgerWriter,
    MatchRoute,
    Minimise,
    Parse,
    Prepare,
    ReadBody,
    RecordDisclosure,
    RecordOutcome,
    Stage,
    SyncStage,
    Validate,
    record_outcome,
)

STAGES: tuple[type[Stage], ...] = (
    Authenticate,  # 401
    MatchRoute,  # 404 (400 for a traversal)
    # Before the body is read: a caller without the scope learns nothing of the route's media types or
    # schema, costs no body read, and its attempt is recorded as scope-missing. Needs only the route, the
    # token and X-Purpose.
    Authorize,  # 400 (X-Purpose), 403
    ReadBody,  # 415, 413
    Parse,  # 400 (also a non-ASCII value in an allowlisted header)
    Validate,  # 422
    CheckSubject,  # 403, 451, 422
    Minimise,  # 422
    Prepare,  # 400 (a path parameter or header the partner request cannot carry)
    Admit,  # 429
    RecordDisclosure,  # 503: nothing leaves without a durable record
    Forward,  # 502, 504
    FilterResponse,  # 502
    RecordOutcome,
)

_REASON_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
_log = get_logger("gateway.proxy")


def _outcome_of(status: int, forwarded: bool) -> str:
    if status == 503:
        return "ledger_error"
    if status in (502, 504):
        return "upstream_error"
    if status >= 500:
        return "internal_error"
    return "forwarded" if forwarded else "refused"


def _reason_label(exc: GatewayError) -> str:
    """The refusal's reason as a label: its own short reason when it looks like one, else the slug."""
    return exc.reason if _REASON_RE.match(exc.reason) else exc.slug


class Pipeline:
    """The configured stages for one profile set, and the request runner."""

    def __init__(self, services: GatewayServices, profiles: ProfileSet, stages: Sequence[Stage]) -> None:
        self.services = services
        self.profiles = profiles
        self.stages = tuple(stages)
        # What the runner calls per stage: a SyncStage's `apply` directly (returns None), any other stage
        # itself (returns the coroutine to await).
        self._steps: tuple[Callable[[RequestContext], Awaitable[None] | None], ...] = tuple(
            stage.apply if isinstance(stage, SyncStage) else stage for stage in self.stages
        )
        self.partner_ids = frozenset(profiles.profiles)
        self._writer = LedgerWriter(services)
        self._metrics = services.metrics
        # Built on the loop that runs it (start-up and reload both run there): kept rather than looked up
        # for every request.
        self._loop = asyncio.get_running_loop()

    async def handle(self, ctx: RequestContext) -> Answer:
        error: GatewayError | None = None
        try:
            try:
                for step in self._steps:
                    waiting = step(ctx)
                    if waiting is not None:
                        await waiting
            finally:
                if ctx.admitted is not None:
                    await ctx.admitted.__aexit__(None, None, None)
        except GatewayError as exc:
            error = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Only the type: the message of an unexpected exception may quote the data that caused it.
            _log.error("unexpected_error", request_id=ctx.request_id, error=type(exc).__name__)
            error = (
                UpstreamError("the partner call failed", reason="internal")
                if ctx.forwarded
                else InternalError("the gateway could not process the request")
            )
        if error is not None:
            self._record_error(ctx, error)
            # A disclosure record exists, so the request may have reached the partner (a 502/504 after
            # forwarding, or a retry refused after an earlier try was sent): say which record covers it.
            disclosure = ctx.disclosure
            response = problem_answer(error, ctx.request_id, None if disclosure is None else str(disclosure.id))
        else:
            assert ctx.response is not None
            response = ctx.response
        elapsed = time.perf_counter() - ctx.started
        # Metrics and the log line are written just after the answer: call_soon runs once this task next
        # yields, which is after the server has handed the answer to the socket, so the caller does not
        # wait for them (about 25 µs at concurrency 1).
        self._loop.call_soon(self._observe, ctx, response.status, error, elapsed)
        return response

    def _record_error(self, ctx: RequestContext, error: GatewayError) -> None:
        """Queues the outcome (after a disclosure) or the refusal; the problem answer does not wait."""
        ledger_failed = isinstance(error, LedgerUnavailable)
        if ctx.profile is None or (ledger_failed and error.reason == "ledger-closed"):
            return  # a closed ledger took no disclosure of this request, and takes no refusal either
        reason = _reason_label(error)
        # A failed or timed-out disclosure commit may still land (a hung commit the watchdog gave up on):
        # the refusal queued behind it says, in the ledger itself, that this request was not forwarded.
        # A retry the subject re-check refused was never sent: the earlier try's outcome is already
        # queued, and this attempt gets a refusal.
        if ctx.forwarded and not ledger_failed and not ctx.retry_refused:
            # A refused re-identification names the response paths it refused (declared paths, no values).
            detail = ({"reidentify_refused": sorted({v.path for v in error.violations})}
                      if isinstance(error, UpstreamReidentifyRefused) else None)
            record_outcome(self._writer, ctx, error.status, None, reason, detail)
        elif ctx.caller is not None:
            self._writer.append_nowait(
                RecordDraft(
                    kind="refusal",
                    caller=ctx.caller.service,
                    partner=ctx.profile.id,
                    route=ctx.route.id if ctx.route is not None else None,
                    purpose=ctx.purpose,
                    legal_basis=ctx.route.legal_basis if ctx.route is not None else None,
                    jurisdiction=ctx.profile.jurisdiction,
                    subject_ref=ctx.subject_ref,
                    request_id=ctx.request_id,
                    status=error.status,
                    reason=reason,
                    # On a retried route an earlier try may have been forwarded under the same request id:
                    # the attempt says which try's disclosure this refusal answers.
                    attempt=ctx.attempt if ledger_failed or ctx.retry_refused else None,
                ),
                request_id=ctx.request_id,
                event="refusal_not_recorded",
            )

    def _observe(self, ctx: RequestContext, status: int, error: GatewayError | None, elapsed: float) -> None:
        series = self._metrics.series
        partner = ctx.profile.id if ctx.profile is not None else "-"
        route = ctx.route.id if ctx.route is not None else "-"
        outcome = _outcome_of(status, ctx.upstream is not None and error is None)
        series.requests(partner, route, outcome).inc()
        series.request_duration(partner, route).observe(elapsed)
        kept = transformed = dropped = 0
        if ctx.minimised is not None:
            report = ctx.minimised.report
            kept, transformed, dropped = len(report.kept), len(report.transformed), len(report.dropped)
            if ctx.forwarded:
                if dropped:
                    series.fields_dropped(partner, route).inc(dropped)
                for id_type, count in report.pseudonymised.items():
                    series.pseudonymised(partner, id_type).inc(count)
        reason = None
        if error is not None:
            reason = _reason_label(error)
            if not ctx.forwarded or ctx.retry_refused:
                series.refusals(partner, reason).inc()
        _log.info_line("request", {
            "request_id": ctx.request_id,
            "caller": ctx.caller.service if ctx.caller is not None else None,
            "partner": partner,
            "route": route,
            "purpose": ctx.purpose,
            "status": status,
            "outcome": outcome,
            "reason": reason,
            "latency_ms": round(elapsed * 1000.0, 3),
            # Tries actually sent: a retry refused by the subject re-check was not.
            "attempts": (ctx.attempt - ctx.retry_refused) if ctx.forwarded else 0,
            "fields_kept": kept,
            "fields_transformed": transformed,
            "fields_dropped": dropped,
            "response_fields_dropped": ctx.fields_response_dropped,
        })


def build_pipeline(services: GatewayServices, profiles: ProfileSet) -> Pipeline:
    """Every stage configured for this profile set; raises (leaving the caller's pipeline in place) when
    any stage refuses its configuration."""
    stages: list[Stage] = []
    for stage_class in STAGES:
        stage = stage_class()
        stage.configure(services, profiles)
        stages.append(stage)
    return Pipeline(services, profiles, stages)
