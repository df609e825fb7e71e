"""The admin and audit API under `/v1/admin/`: partners and routes, disclosure queries with cursor paging,
one data subject's access report, and the registry changes (consent, holds, minors).

Owns the request and response shapes of these endpoints (the JSON Schemas below are the same ones
`schemas/openapi.yaml` publishes; a test keeps the two equal), their scopes, and the translation of a
request into calls on `SubjectRights`, `build_access_report` and `Ledger.query`. `POST /v1/admin/reload`
stays in gateway.proxy.app.

Privacy rules these endpoints keep:
- a raw subject id only ever travels in a POST body (never a URL or query string, which end up in access
  logs); responses name the subject by its keyed reference only;
- no log line holds a subject id, a subject reference or a request body: one line per admin request with
  the endpoint, the calling service, the status and the latency;
- every registry change is recorded in the ledger before it takes effect (SubjectRights), and a ledger
  that cannot record it turns the request into a 503 with nothing changed.

Scopes: `gateway:audit` or `gateway:admin` for reads, `gateway:admin` for changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from gateway.auth import Caller
from gateway.errors import (
    GatewayError,
    MalformedRequest,
    NotFound,
    PayloadTooLarge,
    ScopeMissing,
    Unprocessable,
    UnsupportedMediaType,
    Violation,
)
from gateway.ledger import KINDS, LedgerQuery
from gateway.ledger.records import format_time
from gateway.logs import get_logger
from gateway.profiles import PartnerProfile
from gateway.profiles.model import Route
from gateway.proxy.services import GatewayServices
from gateway.strictjson import parse_json
from gateway.subjects.report import LedgerReader, build_access_report
from gateway.subjects.rights import RegistryChange, SubjectRights, consent_purposes_of

if TYPE_CHECKING:
    from gateway.proxy.app import GatewayState

AUDIT_SCOPE: Final = "gateway:audit"
ADMIN_SCOPE: Final = "gateway:admin"
READ_SCOPES: Final = (AUDIT_SCOPE, ADMIN_SCOPE)
CHANGE_SCOPES: Final = (ADMIN_SCOPE,)

ADMIN_PREFIX: Final = "/v1/admin"
# Admin bodies are a subject id and a few labels; anything larger is not an admin request.
MAX_ADMIN_BODY_BYTES: Final = 16 * 1024
DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000
# Records fetched beyond a page when resuming at a cursor, for the records sharing the cursor's time
# that precede it; doubled until the cursor's place is found.
_RESUME_SLACK: Final = 64

_log = get_logger("gateway.admin")
# The authenticated caller's service name, kept on the request for the endpoint's log line.
_CALLER_KEY: Final = web.RequestKey("admin_caller", str)
# Set once the routes are registered, so a second add_admin_routes on the same app is a no-op.
_ROUTES_ADDED_KEY: Final = web.AppKey("admin_routes_added", bool)

# -- request schemas (published verbatim in schemas/openapi.yaml, components.schemas) -------------------
_SUBJECT_ID: Final[dict[str, Any]] = {
    "type": "string", "minLength": 1, "maxLength": 256, "pattern": "\\S",
    "description": "The raw data subject id (as the services know it). Used to compute the keyed subject "
                   "reference; never stored, logged or echoed.",
}
_LABEL: Final[dict[str, Any]] = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"}

REQUEST_SCHEMAS: Final[Mapping[str, dict[str, Any]]] = {
    "SubjectReportRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["subject_id"],
        "properties": {"subject_id": _SUBJECT_ID},
    },
    "ConsentChangeRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["subject_id", "purpose", "action"],
        "properties": {
            "subject_id": _SUBJECT_ID,
            "purpose": {**_LABEL, "description": "A consent purpose (a route's `consent`)."},
            "action": {"type": "string", "enum": ["grant", "withdraw"]},
        },
    },
    "HoldChangeRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["subject_id", "action"],
        "properties": {
            "subject_id": _SUBJECT_ID,
            "action": {"type": "string", "enum": ["place", "lift"]},
            "reason": {**_LABEL, "description": "Why processing is restricted, e.g. correction_pending; "
                                                "required to place a hold, refused when lifting one."},
        },
        "if": {"properties": {"action": {"const": "place"}}},
        "then": {"required": ["reason"]},
        "else": {"not": {"required": ["reason"]}},
    },
    "MinorChangeRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["subject_id", "minor", "guardian_consent"],
        "properties": {
            "subject_id": _SUBJECT_ID,
            "minor": {"type": "boolean"},
            "guardian_consent": {"type": "boolean", "description": "Only meaningful (and only true) for a minor."},
        },
        "if": {"properties": {"minor": {"const": False}}},
        "then": {"properties": {"guardian_consent": {"const": False}}},
    },
}
_VALIDATORS: Final = {name: Draft202012Validator(schema) for name, schema in REQUEST_SCHEMAS.items()}

# Query labels (partner, route, caller and purpose names): what profiles and service names are made of.
_QUERY_LABEL_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")
_SUBJECT_REF_RE: Final = re.compile(r"[0-9a-f]{64}")
_LIMIT_RE: Final = re.compile(r"[0-9]{1,4}")
_SAFE_FIELD_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SOURCE_UNSAFE_RE: Final = re.compile(r"[^A-Za-z0-9._:/-]")
_LABEL_FILTERS: Final = ("partner", "route", "caller", "purpose")
_QUERY_PARAMS: Final = frozenset({*_LABEL_FILTERS, "kind", "subject_ref", "since", "until", "limit", "cursor"})


class AdminRequestInvalid(Unprocessable):
    """A well-formed JSON body that does not match the endpoint's request schema."""

    slug = "admin-request-invalid"
    title = "The request does not match the endpoint's schema"


# -- authentication ------------------------------------------------------------------------------------
async def authorise(services: GatewayServices, request: web.Request, scopes: Sequence[str]) -> Caller:
    """The authenticated caller, if its token carries one of `scopes`; else 401 / 403. The service is
    noted on the request as soon as its token verifies, so a refused (403) call is logged with its caller:
    privilege probing by a service must be attributable."""
    caller = await services.authenticator.authenticate(request.headers.getall("Authorization", []))
    request[_CALLER_KEY] = caller.service
    if not any(caller.has_scope(scope) for scope in scopes):
        raise ScopeMissing(f"the token lacks the scope {' or '.join(scopes)}")
    return caller


# Hex digits of SHA-256 that tell apart services whose names the label cannot spell as they are.
_SOURCE_DIGEST_CHARS: Final = 24
_SOURCE_MAX: Final = 128


def change_source(caller: Caller) -> str:
    """The registry source label of an admin service, one label per service (the ledger's record of who
    changed consent or a hold must tell services apart). A name the label can spell (no '@' or '+', short
    enough) is `admin:<service>`; any other is `admin/<readable part>:<digest of the exact name>`, whose
    different prefix keeps it from ever equalling a spelt name, so only a SHA-256 collision (96 bits
    kept) could give two services one label."""
    service = caller.service
    plain = "admin:" + service
    if len(plain) <= _SOURCE_MAX and _SOURCE_UNSAFE_RE.search(service) is None:
        return plain
    digest = hashlib.sha256(service.encode("utf-8")).hexdigest()[:_SOURCE_DIGEST_CHARS]
    readable = _SOURCE_UNSAFE_RE.sub("_", service)[: _SOURCE_MAX - len("admin/") - 1 - _SOURCE_DIGEST_CHARS]
    return f"admin/{readable}:{digest}"


# -- request bodies ------------------------------------------------------------------------------------
async def read_json_object(request: web.Request, schema_name: str) -> dict[str, Any]:
    """The strictly parsed JSON object of an admin POST, validated against its request schema."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType("admin requests take application/json")
    if request.content_length is not None and request.content_length > MAX_ADMIN_BODY_BYTES:
        raise PayloadTooLarge(f"admin request bodies are limited to {MAX_ADMIN_BODY_BYTES} bytes")
    body = bytearray()
    # Read in chunks with our own bound: a chunked body has no Content-Length to refuse up front.
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > MAX_ADMIN_BODY_BYTES:
            raise PayloadTooLarge(f"admin request bodies are limited to {MAX_ADMIN_BODY_BYTES} bytes")
    value = parse_json(bytes(body), max_depth=8)
    violations = schema_violations(_VALIDATORS[schema_name], value)
    if violations:
        raise AdminRequestInvalid(f"the body does not match {schema_name}", violations)
    assert isinstance(value, dict)  # the schema requires an object
    return value


def schema_violations(validator: Draft202012Validator, value: Any) -> list[Violation]:
    """Violations naming field paths and the rule broken, never the value (jsonschema's messages quote the
    instance, so they are not used)."""
    found: list[Violation] = []
    for error in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path))):
        found.extend(_violations_of(error))
    return sorted(set(found), key=lambda v: (v.path, v.reason))


def _field_path(name: object) -> str:
    # An unknown key is the caller's text: name it only when it looks like a field name.
    return name if isinstance(name, str) and _SAFE_FIELD_RE.fullmatch(name) else "$"


def _violations_of(error: ValidationError) -> list[Violation]:
    path = ".".join(str(p) for p in error.absolute_path) or "$"
    rule = error.validator
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if rule == "additionalProperties" and isinstance(error.instance, dict):
        known = set(schema.get("properties", {}))
        return [Violation(_field_path(k), "unknown field") for k in error.instance if k not in known]
    if rule == "required" and isinstance(error.instance, dict) and isinstance(error.validator_value, list):
        return [Violation(str(name), "required") for name in error.validator_value if name not in error.instance]
    if rule == "not" and isinstance(error.validator_value, dict) and "required" in error.validator_value:
        return [Violation(str(name), "not allowed with this action") for name in error.validator_value["required"]]
    reasons = {
        "type": f"expected {error.validator_value}",
        "enum": "expected one of " + ", ".join(map(str, error.validator_value))
        if isinstance(error.validator_value, list) else "not an allowed value",
        "const": f"must be {orjson.dumps(error.validator_value).decode()} here",
        "pattern": "not an acceptable value for this field",
        "minLength": "too short",
        "maxLength": "too long",
    }
    return [Violation(path, reasons.get(str(rule), f"violates {rule}"))]


# -- partners ------------------------------------------------------------------------------------------
def route_summary(route: Route) -> dict[str, Any]:
    return {
        "id": route.id,
        "method": route.method,
        "path": route.path_template,
        "purposes": list(route.purposes),
        "legal_basis": route.legal_basis,
        "consent_purpose": route.consent_purpose,
        "essential": route.essential,
        "allowed_during_hold": route.allowed_during_hold,
        "legal_reference_required": route.legal_reference_required,
        "idempotent": route.idempotent,
        "media_types": list(route.media_types),
    }


def partner_summary(profile: PartnerProfile) -> dict[str, Any]:
    """What an auditor needs to know of a partner; the upstream (URL, credentials) is left out."""
    return {
        "id": profile.id,
        "name": profile.name,
        "category": profile.category,
        "jurisdiction": profile.jurisdiction,
        "description": profile.description,
        "consent_purposes": list(profile.consent_purposes),
        "routes": [route_summary(route) for route in profile.routes],
    }


# -- disclosure queries and cursors --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RecordKey:
    """A record's place in the ledger's query order (time, chain, sequence): what a cursor resumes after."""

    time: str
    chain: str
    sequence: int

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> RecordKey:
        return cls(str(record["time"]), str(record["chain"]), int(record["sequence"]))


@dataclass(frozen=True, slots=True)
class DisclosureQuery:
    """A validated `GET /v1/admin/disclosures`: the ledger filters, the page size and where to resume."""

    filters: LedgerQuery
    limit: int
    after: RecordKey | None

    @property
    def fingerprint(self) -> str:
        """Binds a cursor to its filters, so a cursor cannot silently resume a different query."""
        f = self.filters
        text = orjson.dumps([f.kind, f.partner, f.route, f.caller, f.purpose, f.subject_ref, f.since, f.until])
        return hashlib.sha256(text).hexdigest()[:16]


def encode_cursor(key: RecordKey, fingerprint: str) -> str:
    raw = orjson.dumps({"v": 1, "t": key.time, "c": key.chain, "s": key.sequence, "q": fingerprint})
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, fingerprint: str) -> RecordKey:
    """Parse an opaque cursor; a malformed one, or one from another query, is a 400."""
    bad = MalformedRequest("the cursor is not valid", [Violation("cursor", "not a cursor of this endpoint")])
    if len(cursor) > 512 or not re.fullmatch(r"[A-Za-z0-9_-]+", cursor):
        raise bad
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise bad from None
    if not (isinstance(data, dict) and data.get("v") == 1 and isinstance(data.get("t"), str)
            and isinstance(data.get("c"), str) and type(data.get("s")) is int and isinstance(data.get("q"), str)):
        raise bad
    if data["q"] != fingerprint:
        raise MalformedRequest("the cursor belongs to a query with other filters",
                               [Violation("cursor", "filters changed since this cursor was issued")])
    return RecordKey(data["t"], data["c"], data["s"])


def _iso_time(name: str, text: str) -> str:
    """A date or ISO 8601 time as the ledger's fixed-width UTC text (naive means UTC)."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise MalformedRequest(f"{name} must be an ISO 8601 date or time",
                               [Violation(name, "not an ISO 8601 date or time")]) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return format_time(value)
    except (OverflowError, ValueError):
        raise MalformedRequest(f"{name} is out of range", [Violation(name, "out of range")]) from None


def parse_disclosure_query(params: Sequence[tuple[str, str]]) -> DisclosureQuery:
    """Validate the query string of `GET /v1/admin/disclosures`; every problem is one violation (400)."""
    violations: list[Violation] = []
    values: dict[str, str] = {}
    for name, value in params:
        if name not in _QUERY_PARAMS:
            violations.append(Violation(_field_path(name), "unknown query parameter"))
        elif name in values:
            violations.append(Violation(name, "given more than once"))
        else:
            values[name] = value
    labels: dict[str, str] = {}
    for name in _LABEL_FILTERS:
        if name in values:
            if _QUERY_LABEL_RE.fullmatch(values[name]):
                labels[name] = values[name]
            else:
                violations.append(Violation(name, "not a valid name"))
    kind = values.get("kind")
    if kind is not None and kind not in KINDS:
        violations.append(Violation("kind", "expected one of " + ", ".join(KINDS)))
    subject_ref = values.get("subject_ref")
    if subject_ref is not None and not _SUBJECT_REF_RE.fullmatch(subject_ref):
        violations.append(Violation("subject_ref", "expected a keyed subject reference (64 lower-case hex)"))
    times: dict[str, str] = {}
    for name in ("since", "until"):
        if name in values:
            try:
                times[name] = _iso_time(name, values[name])
            except MalformedRequest as exc:
                violations.extend(exc.violations)
    if "since" in times and "until" in times and times["since"] >= times["until"]:
        violations.append(Violation("until", "must be later than since"))
    limit = DEFAULT_PAGE_SIZE
    if "limit" in values:
        raw = values["limit"]
        if _LIMIT_RE.fullmatch(raw) and 1 <= int(raw) <= MAX_PAGE_SIZE:
            limit = int(raw)
        else:
            violations.append(Violation("limit", f"expected an integer from 1 to {MAX_PAGE_SIZE}"))
    if violations:
        raise MalformedRequest("the query has invalid filters", violations)
    query = DisclosureQuery(
        filters=LedgerQuery(
            kind=kind, partner=labels.get("partner"), route=labels.get("route"), caller=labels.get("caller"),
            purpose=labels.get("purpose"), subject_ref=subject_ref, since=times.get("since"),
            until=times.get("until"), limit=None,
        ),
        limit=limit, after=None,
    )
    if "cursor" in values:
        query = replace(query, after=decode_cursor(values["cursor"], query.fingerprint))
    return query


def _resume_index(rows: Sequence[Mapping[str, Any]], after: RecordKey, complete: bool) -> int | None:
    """Where the page after `after` starts in `rows` (fetched with since = after.time, in ledger order).

    Found by position, not by comparing keys: the database's collation orders chains, and Python's string
    order may differ from it. When the cursor's record is gone (pruned), fall back to comparing keys. None
    when `rows` is a truncated run of records all at the cursor's time: fetch more and ask again."""
    for index, row in enumerate(rows):
        key = RecordKey.of(row)
        if key == after:
            return index + 1
        if key.time > after.time:
            break
    else:
        if not complete:
            return None
    for index, row in enumerate(rows):
        key = RecordKey.of(row)
        if key.time > after.time or (key.chain, key.sequence) > (after.chain, after.sequence):
            return index
    return len(rows)


async def disclosure_page(
    ledger: LedgerReader, query: DisclosureQuery
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of records in ledger order (time, chain, sequence) and the cursor of the next page.

    The ledger's query has no "after this key" filter, so a page that resumes at a cursor asks for the
    records from the cursor's time on and skips those up to the cursor: correct however many records
    share one timestamp (a group commit stamps a whole batch alike), at the cost of re-reading them."""
    wanted = query.limit + 1  # one more than the page tells whether a next page exists
    if query.after is None:
        rows: list[dict[str, Any]] = await ledger.query(replace(query.filters, limit=wanted))
        remaining = rows
    else:
        after = query.after
        since = after.time if query.filters.since is None else max(after.time, query.filters.since)
        fetch = wanted + _RESUME_SLACK
        while True:
            rows = await ledger.query(replace(query.filters, since=since, limit=fetch))
            complete = len(rows) < fetch
            start = _resume_index(rows, after, complete)
            if start is not None and (complete or len(rows) - start >= wanted):
                remaining = rows[start:]
                break
            fetch *= 2
    page = remaining[: query.limit]
    next_cursor = encode_cursor(RecordKey.of(page[-1]), query.fingerprint) if len(remaining) > query.limit else None
    return page, next_cursor


# -- handlers ------------------------------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def logged(endpoint: str, handler: Handler) -> Handler:
    """One log line per admin request: endpoint, caller service (when known), status and latency only."""

    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except GatewayError as exc:
            status = exc.status
            raise
        finally:
            _log.info("admin_request", endpoint=endpoint, caller=request.get(_CALLER_KEY), status=status,
                      latency_ms=round((time.perf_counter() - started) * 1000, 3))

    return handle


def _state(request: web.Request) -> GatewayState:
    # Imported here, not at the top: app.py imports this module to register the routes.
    from gateway.proxy.app import STATE_KEY

    return request.app[STATE_KEY]


async def _caller(request: web.Request, scopes: Sequence[str]) -> tuple[GatewayState, Caller]:
    state = _state(request)
    return state, await authorise(state.services, request, scopes)


# Admin answers carry subject references, consents, holds and disclosure listings: no cache between the
# operator and the gateway may keep them (as partner answers passed on, rv-transforms R5).
_NO_STORE = {"Cache-Control": "no-store"}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json",
                        headers=_NO_STORE)


async def list_partners(request: web.Request) -> web.Response:
    """`GET /v1/admin/partners`: every loaded partner and its routes, ordered by id."""
    state, _ = await _caller(request, READ_SCOPES)
    profiles = state.pipeline.profiles.profiles
    return _json({"partners": [partner_summary(profiles[pid]) for pid in sorted(profiles)]})


async def get_partner(request: web.Request) -> web.Response:
    """`GET /v1/admin/partners/{partner_id}`: one partner, 404 when no loaded profile has that id."""
    state, _ = await _caller(request, READ_SCOPES)
    profile = state.pipeline.profiles.profiles.get(request.match_info["partner_id"])
    if profile is None:
        raise NotFound("no loaded partner profile has this id")
    return _json(partner_summary(profile))


async def list_disclosures(request: web.Request) -> web.Response:
    """`GET /v1/admin/disclosures`: ledger records by filters, a page at a time."""
    state, _ = await _caller(request, READ_SCOPES)
    query = parse_disclosure_query(list(request.query.items()))
    records, next_cursor = await disclosure_page(state.services.ledger, query)
    return _json({"records": records, "next_cursor": next_cursor})


async def subject_report(request: web.Request) -> web.Response:
    """`POST /v1/admin/subjects/report`: the access report of one subject (by raw id in the body)."""
    state, _ = await _caller(request, READ_SCOPES)
    body = await read_json_object(request, "SubjectReportRequest")
    services = state.services
    rights = SubjectRights(services.subjects, services.ledger, services.keys.ledger)
    report = await build_access_report(services.subjects, services.ledger, rights.subject_ref(body["subject_id"]))
    return _json(report.as_dict())


def _change_response(change: RegistryChange, *, purpose_declared: bool | None = None) -> web.Response:
    record = change.record
    body: dict[str, Any] = {
        "subject_ref": change.event.subject_ref,
        "event": change.event.as_detail(),
        "ledger_record": {"id": record.id, "chain": record.chain, "sequence": record.sequence, "time": record.time},
    }
    if purpose_declared is not None:
        body["purpose_declared"] = purpose_declared
    return _json(body)


def _rights(state: GatewayState) -> SubjectRights:
    services = state.services
    return SubjectRights(services.subjects, services.ledger, services.keys.ledger)


async def change_consent(request: web.Request) -> web.Response:
    """`POST /v1/admin/subjects/consent`: grant or withdraw consent for one consent purpose.

    A grant must name a consent purpose some loaded profile uses (a typo would otherwise record a consent
    nobody asked for); a withdrawal is accepted for any well-formed purpose, so a withdrawal is never
    lost because a profile happens to be unloaded at the time. The response says whether a loaded profile
    declares the purpose (`purpose_declared`): false for a withdrawal means it changed no route's consent,
    which for a misspelt purpose leaves the consent meant still granted."""
    state, caller = await _caller(request, CHANGE_SCOPES)
    body = await read_json_object(request, "ConsentChangeRequest")
    rights, source, purpose = _rights(state), change_source(caller), body["purpose"]
    known = consent_purposes_of(state.pipeline.profiles)
    if body["action"] == "grant":
        if purpose not in known:
            raise AdminRequestInvalid(
                "consent can be granted only for a consent purpose of a loaded profile: " + ", ".join(sorted(known)),
                [Violation("purpose", "not a consent purpose of any loaded profile")],
            )
        change = await rights.grant_consent(body["subject_id"], purpose, source=source)
    else:
        change = await rights.withdraw_consent(body["subject_id"], purpose, source=source)
    return _change_response(change, purpose_declared=purpose in known)


async def change_hold(request: web.Request) -> web.Response:
    """`POST /v1/admin/subjects/hold`: place (with a reason) or lift a restriction of processing."""
    state, caller = await _caller(request, CHANGE_SCOPES)
    body = await read_json_object(request, "HoldChangeRequest")
    rights, source = _rights(state), change_source(caller)
    if body["action"] == "place":
        change = await rights.place_hold(body["subject_id"], body["reason"], source=source)
    else:
        change = await rights.lift_hold(body["subject_id"], source=source)
    return _change_response(change)


async def change_minor(request: web.Request) -> web.Response:
    """`POST /v1/admin/subjects/minor`: record minor status and whether a guardian consented."""
    state, caller = await _caller(request, CHANGE_SCOPES)
    body = await read_json_object(request, "MinorChangeRequest")
    change = await _rights(state).set_minor(
        body["subject_id"], body["minor"], body["guardian_consent"], source=change_source(caller))
    return _change_response(change)


def add_admin_routes(app: web.Application) -> None:
    """Register every admin and audit endpoint (except reload, which create_app registers) on an app built
    by `create_app`, before it starts. Calling it again on the same app changes nothing."""
    if app.get(_ROUTES_ADDED_KEY):
        return
    app[_ROUTES_ADDED_KEY] = True
    routes: list[tuple[str, str, str, Handler]] = [
        ("GET", "/partners", "partners", list_partners),
        ("GET", "/partners/{partner_id}", "partner", get_partner),
        ("GET", "/disclosures", "disclosures", list_disclosures),
        ("POST", "/subjects/report", "subject_report", subject_report),
        ("POST", "/subjects/consent", "subject_consent", change_consent),
        ("POST", "/subjects/hold", "subject_hold", change_hold),
        ("POST", "/subjects/minor", "subject_minor", change_minor),
    ]
    for method, path, endpoint, handler in routes:
        app.router.add_route(method, ADMIN_PREFIX + path, logged(endpoint, handler))
