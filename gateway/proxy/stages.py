"""The stages of the egress pipeline, one small class each.

Every stage has a `name`, a `configure(services, profiles)` that takes or compiles what it needs once
(at startup and at each reload; it raises on a bad value, and the pipeline being built is then
discarded, so the running one stays), and an async `__call__(ctx)` that does its step for one request,
raising a `GatewayError` to refuse. A stage whose step never waits is a `SyncStage`: it writes the step as
`apply(ctx)`, which the runner calls directly (no coroutine per request and stage). The order lives in
gateway.proxy.pipeline.STAGES, nowhere else.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qsl, unquote

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import (
    GatewayError,
    LedgerUnavailable,
    MalformedRequest,
    NotFound,
    PayloadTooLarge,
    SchemaViolation,
    ScopeMissing,
    UnsupportedMediaType,
    UpstreamError,
    UpstreamReidentifyRefused,
    Violation,
)
from gateway.forward import STALE_CONNECTION_REASON, segment_problem
from gateway.httpheaders import HOP_BY_HOP, is_passable_value
from gateway.keys import normal_subject_id
from gateway.ledger import AppendedRecord, RecordDraft
from gateway.logs import get_logger
from gateway.policy import NO_PSEUDONYMS_ISSUED
from gateway.profiles import ProfileSet
from gateway.profiles.headers import RESPONSE_HEADER_REFUSALS
from gateway.proxy.context import Answer, RequestContext
from gateway.proxy.problems import InternalError
from gateway.proxy.services import GatewayServices
from gateway.strictjson import parse_json
from gateway.subjects import SubjectStatus, check_legal_reference, check_subject

# Headers of the caller that never reach the policy (and so never the partner): credentials, cookies,
# hop-by-hop headers, framing, and the gateway's own control headers.
STRIPPED_HEADERS = HOP_BY_HOP | frozenset(
    {
        "authorization", "cookie", "cookie2", "host", "content-length",
        "expect", "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip",
        "x-purpose", "x-request-id", "x-legal-reference",
    }
)
_MAX_QUERY_FIELDS = 100
_READ_CHUNK = 65536
_log = get_logger("gateway.proxy")


class Stage(Protocol):
    """One step of the egress pipeline."""

    name: ClassVar[str]

    def configure(self, services: GatewayServices, profiles: ProfileSet) -> None: ...

    async def __call__(self, ctx: RequestContext) -> None: ...


class SyncStage:
    """A stage whose step never waits. The pipeline runner calls `apply` directly; awaiting the stage (the
    `Stage` protocol) runs the same `apply`."""

    def apply(self, ctx: RequestContext) -> None:
        raise NotImplementedError

    async def __call__(self, ctx: RequestContext) -> None:
        self.apply(ctx)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A path segment that needs no decoding or folding (ASCII unreserved characters only): decode_tail's
# checks cannot refuse it unless it is a dot segment, so it skips them (about 4 of its 5 µs).
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


def _has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


class Authenticate:
    """Verifies the caller's JWT (gateway.auth); 401 when missing or bad."""

    name: ClassVar[str] = "authenticate"

    def configure(self, services: GatewayServices, profiles: ProfileSet) -> None:
        self._authenticator = services.authenticator

    async def __call__(self, ctx: RequestContext) -> None:
        ctx.caller = await self._authenticator.authenticate(ctx.request.headers.getall("Authorization", []))


def decode_tail(raw_tail: str) -> str:
    """The partner-relative path from its raw (still percent-encoded) form, refusing every spelling of
    a traversal: dot segments (also percent-encoded, with `;` parameters or as full-width dots), encoded
    or literal backslashes, encoded slashes, double encoding, control characters, invalid UTF-8, and
    whatever else the upstream client's segment rule (gateway.forward.segment_problem: dots and spaces
    only, also after NFKC) would refuse in a path parameter, so that it is refused here, before the
    disclosure record, and not in Forward."""
    if not raw_tail:
        return "/"
    decoded: list[str] = []
    for raw_segment in raw_tail.split("/"):
        if _PLAIN_SEGMENT.fullmatch(raw_segment) and raw_segment.strip(".") != "":
            decoded.append(raw_segment)
            continue
        try:
            segment = unquote(raw_segment, errors="strict")
        except UnicodeDecodeError:
            raise MalformedRequest("the path is not valid UTF-8", [Violation("path", "invalid UTF-8")]) from None
        folded = unicodedata.normalize("NFKC", segment)
        before_params = folded.split(";", 1)[0]
        if (
            not segment
            or (before_params and before_params.strip(". ") == "")
            or segment_problem(segment) is not None
            or "/" in folded
            or "\\" in folded
            or "%" in segment
            or _has_control(segment)
        ):
            raise MalformedRequest(
                "the path has an empty, dot, encoded or control-character segment",
                [Violation("path", "segment not allowed")],
            )
        decoded.append(segment)
    return "/" + "/".join(decoded)


class MatchRoute(SyncStage):
    """Finds the partner's profile and the route for method and path; 404 when none matches."""

    name: ClassVar[str] = "match_route"

    def configure(self, services: GatewayServices, profiles: ProfileSet) -> None:
        self._profiles = profiles

    def apply(self, ctx: RequestContext) -> None:
        ctx.profile = self._profiles.profiles.get(ctx.partner_id)
        if ctx.profile is None:
            raise NotFound("no such partner", reason="unknown-partner")
        # decode_tail refuses every traversal spelling; the profile set matches on the raw path, which it
        # decodes segment by segment itself (so an encoded slash can never split a parameter).
        decode_tail(ctx.tail)
        match = self._profiles.match(ctx.partner_id, ctx.request.method, "/" + ctx.tail)
        ctx.route = match.route
        ctx.path_params = dict(match.path_params)


class ReadBody:
    """Reads the body up to the route's limit (413 beyond it, with or without Content-Length, reading
    at most one byte more than allowed) after checking its media type (415)."""

    name: ClassVar[str] = "read_body"

    def configure(self, services: GatewayServices, profiles: ProfileSet) -> None:
        cap = services.settings.max_body_bytes
        self._limits = {pid: min(cap, p.limits.max_body_bytes) for pid, p in profiles.profiles.items()}
        self._cap = cap

    async def __call__(self, ctx: RequestContext) -> None:
        assert ctx.route is not None
        request = ctx.request
        if not request.body_exists:
            return
        media_type = request.content_type.lower() if "Content-Type" in request.headers else ""
        charset = request.charset
        if media_type not in ctx.route.media_types or (charset is not None and charset.lower() != "utf-8"):
            raise UnsupportedMediaType(
                f"media types allowed for this route: {', '.join(ctx.route.media_types)} (UTF-8)",
                [Violation("Content-Type", "not allowed for this route")],
            )
        limit = self._limits.get(ctx.partner_id, self._cap)
        declared = request.content_length
        if declared is not None and declared > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        content = request.content
        while size <= limit:
            chunk = await content.read(min(_READ_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        ctx.raw_body = b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLarge:
    # Built only when refusing: an exception with its formatted message cost every accepted request.
    return PayloadTooLarge(f"the body exceeds {limit} bytes", reason="payload-too-large")


class Parse(SyncStage):
    """Strict JSON body (gateway.strictjson), query string and caller headers; 400 when malformed, or when
    a header the route allowlists has a non-ASCII value."""

    name: ClassVar[str] = "parse"

    def configure(self, services: GatewayServices, profiles: ProfileSet) -> None:
        self._max_depth = services.settings.max_json_depth

    def apply(self, ctx: RequestContext) -> None:
        ctx.body = parse_json(ctx.raw_body, max_depth=self._max_depth) if ctx.raw_body else None
        raw_path = ctx.request.raw_path
        query_string = raw_path.partition("?")[2]
        if query_string:
            try:
                pairs = parse_qsl(
                    query_string, keep_blank_values=True, errors="strict", max_num_fields=_MAX_QUERY_FIELDS
                )
            except (UnicodeDecodeError, ValueError):
                raise MalformedRequest("bad query string", [Violation("query", "malformed")]) from None
            if any(_has_control(k) or _has_control(v) for k, v in pairs):
                raise MalformedRequest("bad query string", [Violation("query", "control character")])
            ctx.query = pairs
        headers: dict[str, str] = {}
        seen: set[str] = set()
        for name, value in ctx.request.headers.items():
            lower = name.lower()
            if lower in STRIPPED_HEADERS:
                continue
            if lower in seen:
                # Two values for one header are ambiguous for an allowlist; refuse instead of guessing.
                raise MalformedRequest("a header was sent twice", [Violation(_header_path(ctx, lower), "duplicate")])
            seen.add(lower)
            if not value.isascii():
                _refuse_non_ascii(ctx, lower)
            headers[name] = value
        ctx.headers = headers


def _header_path(ctx: RequestContext, lower: str) -> str:
    """A header's violation path: the profile's spelling when the route declares it, else `headers.*` (the
    caller chose that name, and it may be a phone number or an e-mail address)."""
    assert ctx.route is not None
    for declared in ctx.route.policy.spec.request_headers:
        if declared.lower() == lower:
            return f"headers.{declared}"
    return "headers.*"


def _refuse_non_ascii(ctx: RequestContext, lower: str) -> None:
    """Refuses a non-ASCII value in a header the route allowlists (an undeclared one is dropped anyway).
    Header bytes have no agreed charset: the servers decode UTF-8 and the upstream client writes Latin-1,
    so the partner would receive other bytes than the caller sent (and the ledger recorded as kept). The
    answer names the header, never its value."""
    path = _header_path(ctx, lower)
    if path != "headers.*":
        raise MalformedRequest(f"the header {path.removeprefix('headers.')} must be ASCII",
                               [Violation(path, "non-ASCII value")])


class Validate(SyncStage):
    """The route's JSON Schema (422 with the failing paths)."""

    name: ClassVar[str] = "validate"

    def configure(self, services: GatewayServices, profiles: ProfileSet) -> None:
        return None

    def apply(self, ctx: RequestContext) -> None:
        assert ctx.route is not None
        # The schema check and the allowlist walk run as one generated pass; policy refusals (a bad
        # identifier, a field outside the allowlist) still surface only from Minimise, after the scope check.
        ctx.validated = ctx.route.policy.validate_request(ctx.body)


class Authorize(SyncStage):
    """Picks the purpose (X-Purpose, required when the route serves several) and checks the caller's
    scope `disclose:{partner}:{purpose}` (403)."""

    name: ClassVar[str] = "authorize"

    def configure(self, services: GatewayServices, profiles: ProfileSet) -> None:
        return None

    def apply(self, ctx: RequestContext) -> None:
        assert ctx.route is not None
        assert ctx.caller is not None
        purposes = ctx.route.purposes
        asked = ctx.request.headers.getall("X-Purpose", [])
        if len(asked) > 1:
            raise MalformedRequest("X-Purpose was sent twice", [Violation("headers.X-Purpose", "duplicate")])
        if asked:
            purpose = asked[0].strip()
            if purpose not in purposes:
                raise MalformedRequest(
                    f"X-Purpose must be one of: {', '.join(purposes)}",
                    [Violation("headers.X-Purpose", "not a purpose of this route")],
                )
        elif len(purposes) == 1:
            purpose = purposes[0]
        else:
            raise MalformedRequest(
                f"this route serves several purposes; send X-Purpose (one of: {', '.join(purposes)})",
                [Violation("headers.X-Purpose", "required")],
            )
        ctx.purpose = purpose
        if not ctx.caller.may_disclose(ctx.partner_id, purpose):
            raise ScopeMissing(f"the token lacks the scope disclose:{ctx.partner_id}:{purpose}")


class CheckSubject:
    """The data subject's consent, hold and minor status (gateway.subjects registry), the transfer rule
    for the subject's residency, and the legal reference where the route requires one (403 / 451)."""

    name: ClassVar[str] = "check_subject"

    def configure(self, services: GatewayServices, profiles: ProfileSet) -> None:
        self._registry = services.subjects
        self._rules = services.transfer_rules
        self._subject_ref = services.keys.ledger.subject_ref

    def _read(self, ctx: RequestContext, source: Any) -> str | None:
        assert ctx.route is not None
        # The request's own (case-insensitive, read-only) header mapping: no copy per read.
        value = ctx.route.read(source, ctx.body, ctx.query, ctx.path_params, ctx.request.headers)
        return None if value is None else str(value)

    async def __call__(self, ctx: RequestContext) -> None:
        route, profile = ctx.route, ctx.profile
        assert route is not None
        assert profile is not None
        ctx.legal_reference = check_legal_reference(route, ctx.request.headers.get("X-Legal-Reference"))
        status = SubjectStatus.unknown_subject()
        if route.subject is not None:
            read = self._read(ctx, route.subject)
            # Blank (only white space or invisible format characters) is missing too: such an id names
            # nobody, and its reference would never carry a hold, a withdrawal or a minor flag.
            subject_id = None if read is None else normal_subject_id(read)
            if subject_id is None:
                raise SchemaViolation(
                    "the data subject's id is missing", [Violation(route.subject.path, "required")]
                )
            ctx.subject_ref = self._subject_ref(subject_id)
            status = await self._registry.status(ctx.subject_ref, route.consent_purpose)
        transfer = None
        if route.residency is not None:
            transfer = self._rules.decide(self._read(ctx, route.residency), profile.id, profile.jurisdiction)
            ctx.cross_border = transfer.cross_border
            ctx.transfer_basis = transfer.basis
        check_subject(route, status, transfer)

    async def recheck(self, ctx: RequestContext) -> None:
        """The registry half of this check again (hold, minor, consent), for the subject the request
        already named: Forward runs it before every retry, because a retry is a new disclosure and must
        not leave after a hold or withdrawal that became durable while the earlier try was in flight.
        The transfer decision and the legal reference depend only on the request and the profile set it
        runs on, which do not change between tries, so they are not re-made (a route that got here had
        its transfer allowed)."""
        route = ctx.route
        assert route is not None
        if ctx.subject_ref is None:
            return  # a route without a subject: nothing in the registry can change its answer
        status = await self._registry.status(ctx.subject_ref, route.consent_purpose)
        check_subject(route, status, None)


class Minimise(SyncStage):
    """Applies the route's request policy to body, query, path parameters and headers."""

    name: ClassVar[str] = "minimise"

    def configure(self, services: GatewayServices, profiles: ProfileSet) -> None:
        self._digest = services.keys.ledger.body_digest
        self._metrics = services.metrics

    def apply(self, ctx: RequestContext) -> None:
        assert ctx.route is not None
        policy = ctx.route.policy
        if ctx.validated is not None:
            minimised = policy.minimise_validated(ctx.validated, ctx.query, ctx.path_params, ctx.headers)
        else:
            minimised = policy.minimise_request(ctx.body, ctx.query, ctx.path_params, ctx.headers)
        ctx.minimised = minimised
        if policy.reidentifies:  # only such routes keep what they issued
            ctx.issued = policy.issued_pseudonyms(minimised)
        # Canonical bytes (sorted keys, NFC, no case/Unicode key collisions): what the partner receives and
        # what the ledger's body digest covers.
        ctx.sent_body = b"" if minimised.body is None else minimised.canonical_body()
        ctx.body_digest = self._digest(ctx.sent_body)


class Prepare(SyncStage):
    """Builds the exact bytes for the partner (request line, headers, body: gateway.forward's `prepare`)
    from the minimised request, before anything is recorded: a path parameter or header the upstream
    client cannot send is refused here (400) with a refusal record, never after a disclosure record.
    Forward sends these bytes as they are, on every try."""

    name: ClassVar[str] = "prepare"

    def configure(self, services: GatewayServices, profiles: ProfileSet) -> None:
        self._upstream = services.upstream

    def apply(self, ctx: RequestContext) -> None:
        profile, route, minimised = ctx.profile, ctx.route, ctx.minimised
        assert profile is not None
        assert route is not None
        assert minimised is not None
        body = ctx.sent_body or None
        ctx.outbound = self._upstream.prepare(
            profile, route, ctx.request.method, minimised.path_params, minimised.query, minimised.headers, body,
            request_id=ctx.request_id, content_type="application/json" if body else None,
        )


class Admit:
    """Takes a slot under the partner's rate and concurrency limits (429), held until the request ends,
    before anything is recorded: a refused call leaves a refusal, not a disclosure. Without a profile
    `max_concurrency` the limit is the pool's connection cap, so the pool never refuses after the record."""

    name: ClassVar[str] = "admit"

    def configure(self, services: GatewayServices, profiles: ProfileSet) -> None:
        self._upstream = services.upstream

    async def __call__(self, ctx: RequestContext) -> None:
        assert ctx.profile is not None
        limiter = self._upstream.limiter(ctx.profile)
        await limiter.__aenter__()
        ctx.admitted = limiter


def disclosure_draft(ctx: RequestContext, chain_id: str) -> RecordDraft:
    """The ledger record of what is about to be sent (names and a keyed digest, never values)."""
    assert ctx.profile is not None
    assert ctx.route is not None
    assert ctx.minimised is not None
    report = ctx.minimised.report
    caller = ctx.caller.service if ctx.caller is not None else None
    return RecordDraft(
        kind="disclosure",
        caller=caller,
        partner=ctx.profile.id,
        route=ctx.route.id,
        purpose=ctx.purpose,
        legal_basis=ctx.route.legal_basis,
        jurisdiction=ctx.profile.jurisdiction,
        cross_border=ctx.cross_border,
        transfer_basis=ctx.transfer_basis,
        subject_ref=ctx.subject_ref,
        fields_sent=tuple(report.kept) + tuple(report.transformed),
        fields_transformed=tuple(report.transformed),
        fields_dropped=tuple(report.dropped),
        body_digest=ctx.body_digest,
        request_id=ctx.request_id,
        legal_reference=ctx.legal_reference,
        attempt=ctx.attempt,
    )


class LedgerWriter:
    """Appends to the ledger; any failure is `LedgerUnavailable`. The ledger itself feeds the commit
    metrics (size, duration, errors) through its observer."""

    def __init__(self, services: GatewayServices) -> None:
        self._ledger = services.ledger
        self.chain_id = services.chain_id

    async def append(self, draft: RecordDraft) -> AppendedRecord:
        """Durable before it returns: for the disclosure record that must precede any byte sent."""
        try:
            return await self._ledger.append(draft)
        except LedgerUnavailable:
            raise
        except Exception as exc:
            raise LedgerUnavailable(f"the ledger failed ({type(exc).__name__})") from exc

    def append_nowait(self, draft: RecordDraft, *, request_id: str | None, event: str) -> None:
        """Queued behind the disclosure (in order) without waiting for its fsync: for outcome and refusal
        records, which a crash may lose. A failure is logged as `event` (and counted by the ledger)."""
        def report() -> None:
            _log.warning(event, request_id=request_id, partner=draft.partner)

        try:
            self._ledger.append_unawaited(draft, on_failure=report)
        except Exception as exc:
            _log.warning(event, request_id=request_id, partner=draft.partner, error=type(exc).__name__)


class RecordDisclosure:
    """Writes the disclosure record and waits until it is durable (503 otherwise: nothing is sent)."""

    name: ClassVar[str] = "record_disclosure"

    def configure(self, services: GatewayServices, profiles: ProfileSet) -> None:
        self._writer = LedgerWriter(services)
        self._series = services.metrics.series

    async def __call__(self, ctx: RequestContext) -> None:
        assert ctx.profile is not None
        ctx.disclosure = await self._writer.append(disclosure_draft(ctx, self._writer.chain_id))
        self._series.disclosures(ctx.profile.id, ctx.purpose or "").inc()


class Forward:
    """Sends the bytes Prepare built (with the partner's credentials, from gateway.forward). Routes marked
    idempotent are retried on partner failure, each try with its own disclosure and outcome record; each
    retry first re-runs the subject check (a hold or withdrawal made meanwhile refuses it: nothing more
    is sent, the retry gets a refusal record with its attempt number, the caller the subject refusal)."""

    name: ClassVar[str] = "forward"

    def configure(self, services: GatewayServices, profiles: ProfileSet) -> None:
        self._upstream = services.upstream
        self._writer = LedgerWriter(services)
        self._series = services.metrics.series
        # The CheckSubject stage's own logic (not a copy), re-run before each retry.
        self._subject = CheckSubject()
        self._subject.configure(services, profiles)

    async def _recheck_subject(self, ctx: RequestContext) -> None:
        """Refuses the retry (ctx.retry_refused: the runner records a refusal for this attempt, and the
        earlier try keeps the outcome already queued) when the subject may no longer be disclosed to."""
        try:
            await self._subject.recheck(ctx)
        except GatewayError:
            ctx.retry_refused = True
            raise
        except Exception as exc:
            # Fail closed, as the first check does: an unreadable registry sends nothing more.
            ctx.retry_refused = True
            _log.error("subject_recheck_failed", request_id=ctx.request_id, error=type(exc).__name__)
            raise InternalError("the data subject's status could not be read") from exc

    async def __call__(self, ctx: RequestContext) -> None:
        profile, route, outbound = ctx.profile, ctx.route, ctx.outbound
        assert profile is not None
        assert route is not None
        assert outbound is not None
        tries = 1 + (profile.upstream.retries if route.idempotent else 0)
        fresh = False
        while True:
            try:
                answer = await self._upstream.send_prepared(profile, outbound, fresh=fresh)
                if answer.status >= 500:
                    raise UpstreamError(f"the partner answered {answer.status}", reason="upstream-5xx")
            except GatewayError as exc:
                if exc.reason == STALE_CONNECTION_REASON and route.idempotent and not fresh:
                    # A kept-alive connection the partner closed as the call was written: one more try, on
                    # a new connection, even beyond `retries` (RFC 9112 9.3.1 allows retrying an idempotent
                    # request). Never for a route not marked idempotent: the partner may have acted on it.
                    tries = max(tries, ctx.attempt + 1)
                    fresh = True
                if ctx.attempt >= tries or exc.status not in (502, 504):
                    raise
                record_outcome(self._writer, ctx, exc.status, None, exc.reason)
                ctx.attempt += 1
                await self._recheck_subject(ctx)
                ctx.disclosure = await self._writer.append(disclosure_draft(ctx, self._writer.chain_id))
                self._series.disclosures(profile.id, ctx.purpose or "").inc()
                continue
            ctx.upstream = answer
            self._series.upstream_duration(profile.id).observe(answer.latency_s)
            return


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class FilterResponse(SyncStage):
    """Passes the partner's answer through the route's response policy (re-identifying the `fpe` tokens
    this request sent, and no other: 502 `upstream-reidentify` for any other token, which is never
    decrypted); a body that is not valid JSON is a partner error (502); a non-JSON body cannot be
    filtered field by field and is withheld."""

    name: ClassVar[str] = "filter_response"

    def configure(self, services: GatewayServices, profiles: ProfileSet) -> None:
        self._max_depth = services.settings.max_json_depth
        self._series = services.metrics.series

    def apply(self, ctx: RequestContext) -> None:
        answer, route = ctx.upstream, ctx.route
        assert answer is not None
        assert route is not None
        assert ctx.disclosure is not None
        content_type = _header(answer.headers, "Content-Type")
        parsed: Any = None
        if answer.body and _is_json(content_type):
            try:
                parsed = parse_json(answer.body, max_depth=self._max_depth)
            except GatewayError:
                raise UpstreamError("the partner answered malformed JSON", reason="upstream-malformed") from None
        policy = route.policy
        try:
            filtered = policy.filter_response(parsed, answer.headers,
                                              NO_PSEUDONYMS_ISSUED if ctx.issued is None else ctx.issued)
        except UpstreamReidentifyRefused as exc:
            assert ctx.profile is not None
            self._series.reidentifications(ctx.profile.id, route.id, "refused").inc(len(exc.violations))
            raise
        except GatewayError as exc:
            raise UpstreamError("the partner's answer could not be filtered", reason="upstream-filter") from exc
        if filtered.reidentified:
            assert ctx.profile is not None
            ctx.reidentified = filtered.reidentified
            self._series.reidentifications(ctx.profile.id, route.id, "done").inc(sum(filtered.reidentified.values()))
        headers: dict[str, str] = {}
        withheld = 0
        for name, value in filtered.headers.items():
            lowered = name.lower()
            if lowered in _FRAMING_HEADERS:
                continue
            # The loader refuses these names in `response.headers`; this holds for a profile set built any
            # other way. Values are the partner's, checked here only.
            if lowered in RESPONSE_HEADER_REFUSALS or is_passable_value(value) is None:
                withheld += 1
                continue
            headers[name] = value
        # The answer may hold personal data, re-identified values among them: no cache on the way back
        # (a shared one between caller and gateway) may keep it (rv-partner R2).
        headers["Cache-Control"] = "no-store"
        headers["X-Disclosure-Id"] = str(ctx.disclosure.id)
        headers["X-Request-Id"] = ctx.request_id
        body = b"" if filtered.body is None else orjson.dumps(filtered.body)
        ctx.fields_response_dropped = len(filtered.report.dropped) + withheld
        ctx.response = Answer(
            answer.status, tuple(headers.items()), body, "application/json" if filtered.body is not None else None
        )


# Set by the gateway from the body it writes, never copied from the partner's answer (a declared
# Content-Type is allowed and has no effect; the rest are refused at load, see RESPONSE_HEADER_REFUSALS).
_FRAMING_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding"})
# A partner's header value is passed on only when `is_passable_value` (gateway/httpheaders.py): the upstream
# client reads header bytes as Latin-1 and the caller's answer is written as ASCII, so a control character
# (\v, DEL) or a non-ASCII byte (`café` would reach the caller as `cafÃ©`) withholds the header, as a
# declared request header with a non-ASCII value is refused.


def _header(headers: Mapping[str, str], name: str) -> str | None:
    if isinstance(headers, CIMultiDict | CIMultiDictProxy):
        return headers.get(name)  # case-insensitive already (the upstream client's headers)
    lower = name.lower()
    for key, value in headers.items():
        if key.lower() == lower:
            return value
    return None


def record_outcome(
    writer: LedgerWriter, ctx: RequestContext, status: int, latency_s: float | None, reason: str | None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Queues the outcome of the current try (partner status or the gateway's error status). The answer
    does not wait for it: the disclosure record before it is already durable, and the design accepts
    that a crash leaves a disclosure without its outcome. `detail` holds declared field paths only."""
    assert ctx.profile is not None
    assert ctx.disclosure is not None
    writer.append_nowait(
        RecordDraft(
            kind="outcome",
            caller=ctx.caller.service if ctx.caller is not None else None,
            partner=ctx.profile.id,
            route=ctx.route.id if ctx.route is not None else None,
            purpose=ctx.purpose,
            subject_ref=ctx.subject_ref,
            request_id=ctx.request_id,
            disclosure_id=str(ctx.disclosure.id),
            status=status,
            latency_ms=None if latency_s is None else round(latency_s * 1000.0, 3),
            reason=reason,
            attempt=ctx.attempt,
            detail=detail,
        ),
        request_id=ctx.request_id,
        event="outcome_not_recorded",
    )


class RecordOutcome(SyncStage):
    """Queues the outcome record (partner status and latency)."""

    name: ClassVar[str] = "record_outcome"

    def configure(self, services: GatewayServices, profiles: ProfileSet) -> None:
        self._writer = LedgerWriter(services)

    def apply(self, ctx: RequestContext) -> None:
        assert ctx.upstream is not None
        # The response paths whose tokens were re-identified, and how many values each (never the values).
        detail = {"reidentified": dict(ctx.reidentified)} if ctx.reidentified else None
        record_outcome(self._writer, ctx, ctx.upstream.status, ctx.upstream.latency_s, None, detail)
