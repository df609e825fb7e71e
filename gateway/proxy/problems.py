"""Rendering refusals as RFC 9457 `application/problem+json` responses.

The exception decides what the caller sees (`GatewayError.to_problem()`, which never holds a personal
value); this module only turns it into bytes and headers. Errors that are not `GatewayError`s are bugs
or environment failures: the caller gets a generic problem without any detail from the exception.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.errors import GatewayError
from gateway.proxy.context import Answer

PROBLEM_JSON = "application/problem+json"


class InternalError(GatewayError):
    """An unexpected failure inside the gateway; the detail never comes from the exception."""

    status = 500
    slug = "internal"
    title = "Internal error"


def problem_answer(exc: GatewayError, request_id: str, disclosure_id: str | None = None) -> Answer:
    """The problem+json answer for a refusal, with the request id to correlate with the log line, and
    the disclosure record's id when one was written (the request may have reached the partner)."""
    headers: tuple[tuple[str, str], ...] = (("X-Request-Id", request_id),)
    if disclosure_id is not None:
        headers += (("X-Disclosure-Id", disclosure_id),)
    if exc.status == 401:
        headers += (("WWW-Authenticate", 'Bearer realm="partner-data-gateway"'),)
    elif exc.status == 429:
        headers += (("Retry-After", "1"),)
    return Answer(exc.status, headers, orjson.dumps(exc.to_problem()), PROBLEM_JSON)


def problem_response(exc: GatewayError, request_id: str) -> web.Response:
    """`problem_answer` as an aiohttp response (the Application's middleware and handlers)."""
    return problem_answer(exc, request_id).as_response()
