"""The per-request state that the pipeline's stages read and fill in, in order.

A `RequestContext` starts with the incoming request and a request id; each stage adds what it found
(caller, matched route, parsed body, minimised request, disclosure record, partner answer). Nothing in
here is logged as is: the pipeline's log line picks bounded fields from it.

Two servers feed the pipeline: the lean egress server (gateway.proxy.httpserver) and aiohttp's (the
egress route of the Application, used when aiohttp owns a connection). Both provide an
`IncomingRequest`, and both write the `Answer` the pipeline returns, so no stage depends on either.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import unquote

from aiohttp import web
from multidict import MultiMapping

if TYPE_CHECKING:
    from gateway.auth import Caller
    from gateway.forward import OutboundRequest, PartnerLimiter, UpstreamResponse
    from gateway.ledger import AppendedRecord
    from gateway.policy import IssuedPseudonyms, MinimisedRequest, ValidatedBody
    from gateway.profiles import PartnerProfile, Route

EGRESS_PREFIX = "/v1/partners/"

# A caller's X-Request-Id goes to the partner, the log line and the ledger as it is, unminimised, so it is
# kept only in a shape that cannot carry a business key by accident (a phone number, an IMEI, an order
# id, a dotted name): a canonical UUID (any version, either case; lowercased) or a W3C trace-id (32
# lowercase hex digits, not all zeros). Anything else is replaced by a generated id, never echoed.
_UUID_RE = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_TRACE_ID_RE = re.compile(r"[0-9a-f]{32}")
_ZERO_TRACE_ID = "0" * 32


class _RequestIds:
    """Fresh request ids, 128 random bits in hex each (as `secrets.token_hex(16)`), cut from a pooled
    os.urandom buffer: one getrandom call per 256 ids instead of one per request. Used on the event loop
    only (not thread-safe). A forked child starts with an empty pool, so it never repeats its parent's
    next ids."""

    __slots__ = ("_offset", "_pool")

    _ID_HEX = 32
    _POOL_BYTES = 4096

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._pool = ""
        self._offset = 0

    def __call__(self) -> str:
        offset = self._offset
        if offset >= len(self._pool):
            self._pool = os.urandom(self._POOL_BYTES).hex()
            offset = 0
        self._offset = offset + self._ID_HEX
        return self._pool[offset:offset + self._ID_HEX]


new_request_id = _RequestIds()
os.register_at_fork(after_in_child=new_request_id.reset)


def request_id_from(value: str | None) -> str:
    """The caller's request id when it has a shape safe to propagate (a UUID, lowercased, or a W3C
    trace-id), else a fresh random one."""
    if value is not None:
        if len(value) == 36 and _UUID_RE.fullmatch(value):
            return value.lower()
        if len(value) == 32 and value != _ZERO_TRACE_ID and _TRACE_ID_RE.fullmatch(value):
            return value
    return new_request_id()


class BodyStream(Protocol):
    """The request body as it arrives; `read(n)` returns at most n bytes, b"" at the end."""

    async def read(self, n: int = -1) -> bytes: ...


class IncomingRequest(Protocol):
    """What the stages read of a request (aiohttp's `web.Request` is one; so is the lean server's)."""

    @property
    def method(self) -> str: ...

    @property
    def raw_path(self) -> str:
        """The request target as sent (path and query, still percent-encoded)."""
        ...

    @property
    def headers(self) -> MultiMapping[str]:
        """Case-insensitive, every value of a repeated header kept (`getall`)."""
        ...

    @property
    def content_type(self) -> str: ...

    @property
    def charset(self) -> str | None: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def body_exists(self) -> bool: ...

    @property
    def content(self) -> BodyStream: ...


class Answer(NamedTuple):
    """The pipeline's answer to one request, written by whichever server holds the connection.
    (A NamedTuple rather than a frozen dataclass: immutable at a fraction of the construction cost.)"""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    content_type: str | None = None

    def as_response(self) -> web.Response:
        """The same answer for aiohttp's server."""
        return web.Response(
            status=self.status, body=self.body, headers=self.headers or None, content_type=self.content_type
        )


@dataclass(slots=True)
class RequestContext:
    """Everything one egress request accumulates on its way through the pipeline."""

    request: IncomingRequest
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    partner_id: str = ""  # as given in the URL; not trusted until `profile` is set
    tail: str = ""  # the decoded path after /v1/partners/{partner_id}
    caller: Caller | None = None
    profile: PartnerProfile | None = None
    route: Route | None = None
    path_params: dict[str, str] = field(default_factory=dict)
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # caller headers the policy may look at
    raw_body: bytes = b""
    body: Any = None
    purpose: str | None = None
    subject_ref: str | None = None
    cross_border: bool | None = None
    transfer_basis: str | None = None
    legal_reference: str | None = None
    validated: ValidatedBody | None = None  # the schema check's result, reused by the minimise stage
    minimised: MinimisedRequest | None = None
    # The fpe pseudonyms this request sends its partner, on a route whose response re-identifies: the
    # only tokens FilterResponse may turn back (None elsewhere). Never logged or recorded.
    issued: IssuedPseudonyms | None = field(default=None, repr=False)
    sent_body: bytes | None = None
    body_digest: str | None = None
    outbound: OutboundRequest | None = None  # the exact bytes for the partner, built before the ledger
    attempt: int = 1
    # Set when the subject re-check before retry `attempt` refused it: `disclosure` is then the earlier
    # try's (its outcome already queued), and the runner records a refusal for this attempt instead.
    retry_refused: bool = False
    disclosure: AppendedRecord | None = None
    upstream: UpstreamResponse | None = None
    response: Answer | None = None
    fields_response_dropped: int = 0
    # Declared response path -> values re-identified there (for the outcome record; paths only).
    reidentified: Mapping[str, int] | None = None
    # The partner's concurrency slot, held from admission until the request ends (released by the
    # pipeline runner; a plain field instead of an AsyncExitStack, which cost ~10 µs per request).
    admitted: PartnerLimiter | None = None

    @property
    def forwarded(self) -> bool:
        """Whether a disclosure record exists, i.e. the minimised request may have left the gateway."""
        return self.disclosure is not None


def start_context(request: IncomingRequest) -> RequestContext:
    """The context of an egress request: its request id, and the partner id and tail taken from the raw
    request target, not a normalised path, so that a traversal is seen (and refused) as sent."""
    ctx = RequestContext(request, request_id_from(request.headers.get("X-Request-Id")))
    raw_path = request.raw_path.partition("?")[0]
    if raw_path.startswith(EGRESS_PREFIX):
        partner_raw, _, ctx.tail = raw_path[len(EGRESS_PREFIX):].partition("/")
        ctx.partner_id = unquote(partner_raw)
    else:
        ctx.tail = ".."  # a server resolved a dot segment that left the prefix: refused by match_route
    return ctx
