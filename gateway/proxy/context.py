"""The per-request state that the pipeline's stages read and fill in, in order.

A `RequestContext` starts with the aiohttp request and a request id; each stage adds what it found
(caller, matched route, parsed body, minimised request, disclosure record, partner answer). Nothing in
here is logged as is: the pipeline's log line picks bounded fields from it.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from gateway.auth import Caller
    from gateway.forward import PartnerLimiter, UpstreamResponse
    from gateway.ledger import AppendedRecord
    from gateway.policy import MinimisedRequest, ValidatedBody
    from gateway.profiles import PartnerProfile, Route

# A caller-supplied X-Request-Id is kept only when it is short and made of safe characters, so it can
# go to logs, the ledger and the partner without escaping; anything else is replaced.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(value: str | None) -> str:
    """The caller's request id when it is safe to propagate, else a fresh random one."""
    if value is not None and _REQUEST_ID_RE.match(value):
        return value
    return secrets.token_hex(16)


@dataclass(slots=True)
class RequestContext:
    """Everything one egress request accumulates on its way through the pipeline."""

    request: web.Request
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
    sent_body: bytes | None = None
    body_digest: str | None = None
    attempt: int = 1
    disclosure: AppendedRecord | None = None
    upstream: UpstreamResponse | None = None
    response: web.StreamResponse | None = None
    fields_response_dropped: int = 0
    # The partner's concurrency slot, held from admission until the request ends (released by the
    # pipeline runner; a plain field instead of an AsyncExitStack, which cost ~10 µs per request).
    admitted: PartnerLimiter | None = None

    @property
    def forwarded(self) -> bool:
        """Whether a disclosure record exists, i.e. the minimised request may have left the gateway."""
        return self.disclosure is not None
