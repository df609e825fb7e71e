"""Header names a profile may not hand to the partner's side of a call or take from it, and which values
a partner credential may hold: what the loader refuses (file, line, reason) and what FilterResponse drops
whatever a profile says.

Two lists, both in lower case (header names are compared case-insensitively):

- `RESPONSE_HEADER_REFUSALS`: names a route's `response.headers` may not declare. The gateway writes the
  caller's answer itself: its own framing over a body it re-serialised, its own Date, Server,
  X-Request-Id and X-Disclosure-Id. A partner's copy of any of these is wrong (Content-Encoding: gzip over
  a body the gateway never compressed), forged (a second, lower-case X-Disclosure-Id), acts on the
  gateway's origin rather than the partner's (a cookie, an HSTS pin, an alternative service, a CORS
  grant), or contradicts the gateway's own `Cache-Control: no-store`.
  Content-Type is not in the list: most profiles declare it, and the gateway always writes its own.
- `CREDENTIAL_HEADER_REFUSALS`: names `upstream.auth.header` may not be. The credential line is added to
  the request the gateway builds, after its own framing and X-Request-Id: a `Content-Length` there is a
  second length (request smuggling at the partner), a `Host` a second host, and so on.
"""

from __future__ import annotations

import re
from typing import Final

from gateway.httpheaders import HOP_BY_HOP

_HOP_BY_HOP = "a hop-by-hop header (it belongs to one connection, not to the message)"
_BODY_BYTES = "it describes the partner's body bytes, and the gateway re-serialises the filtered body"
_OWNED = "the gateway writes its own (a partner's copy would be a second, forged one)"
_ORIGIN = "it would act on the gateway's origin, not the partner's"
_CACHING = ("the gateway marks the answer `Cache-Control: no-store` itself (it may hold re-identified "
            "personal data), and a partner's caching instruction would contradict it")
_URL = ("it points the caller at a URL the response policy cannot filter (and that may carry personal "
        "data); pass the partner's resource id in a declared body field instead")

RESPONSE_HEADER_REFUSALS: Final[dict[str, str]] = {
    **dict.fromkeys(sorted(HOP_BY_HOP), _HOP_BY_HOP),
    **dict.fromkeys(("content-length", "content-encoding", "content-range", "content-md5", "digest",
                     "content-digest", "repr-digest"), _BODY_BYTES),
    **dict.fromkeys(("date", "server", "x-request-id", "x-disclosure-id"), _OWNED),
    **dict.fromkeys(("set-cookie", "set-cookie2", "alt-svc", "strict-transport-security"), _ORIGIN),
    # What a browser would apply to the gateway's origin (review rv-partner R3): CORS grants, site data
    # clearing, content and embedding policies, reporting endpoints, preload links.
    **dict.fromkeys(("access-control-allow-origin", "access-control-allow-credentials",
                     "access-control-allow-headers", "access-control-allow-methods",
                     "access-control-expose-headers", "access-control-max-age",
                     "access-control-allow-private-network", "clear-site-data", "content-security-policy",
                     "content-security-policy-report-only", "cross-origin-embedder-policy",
                     "cross-origin-opener-policy", "cross-origin-resource-policy", "permissions-policy",
                     "origin-agent-cluster", "x-frame-options", "report-to", "reporting-endpoints", "nel",
                     "link"), _ORIGIN),
    "content-disposition": _BODY_BYTES,
    # The gateway marks every partner answer it passes on `Cache-Control: no-store` (it may hold
    # re-identified personal data); a partner's caching instruction would contradict it (rv-partner R2).
    **dict.fromkeys(("cache-control", "expires", "pragma", "vary", "age"), _CACHING),
    **dict.fromkeys(("location", "content-location", "refresh"), _URL),
    "www-authenticate": "a challenge for the partner's credential, which the gateway holds, not the caller",
}

_FRAMING = "the gateway frames the request itself (a second one would split or smuggle the request)"
CREDENTIAL_HEADER_REFUSALS: Final[dict[str, str]] = {
    **dict.fromkeys(sorted(HOP_BY_HOP), _HOP_BY_HOP),  # transfer-encoding: the framing reason below
    **dict.fromkeys(("host", "content-length", "transfer-encoding", "content-type", "content-encoding",
                     "expect"), _FRAMING),
    **dict.fromkeys(("x-request-id", "x-disclosure-id"), "the gateway's own header"),
}

# A credential sent as a header value (`Bearer <token>`, an API key): visible ASCII, single spaces inside.
# No control character (CR/LF would split the request head; the upstream client refuses them at every
# call, which made every call a 500), no non-ASCII (header bytes have no agreed charset: a non-Latin-1
# character made every call a 400 that blamed the caller), no space at either end (stripped by parsers).
_HEADER_CREDENTIAL = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
# A Basic username or password is sent base64-encoded (UTF-8, RFC 7617), so any character but a control
# character can travel; a control character in one is a copy-and-paste or file-format mistake.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def header_credential_problem(value: str) -> str | None:
    """Why `value` cannot be sent as a credential header value, or None. Never quotes the value."""
    if _HEADER_CREDENTIAL.fullmatch(value):
        return None
    return ("must be visible ASCII characters, with single spaces only between them (no control character, "
            "line break, non-ASCII character or surrounding space)")


def basic_credential_problem(value: str) -> str | None:
    """Why `value` cannot be a Basic username or password, or None. Never quotes the value."""
    if not value:
        return "must not be empty"
    if _CONTROL.search(value):
        return "must not contain a control character or line break"
    return None
