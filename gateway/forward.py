"""The upstream client: everything between a minimised request and the partner's socket.

This module owns
- building the partner URL from the profile's base URL and the route's path template, with every path
  parameter encoded as exactly one segment (`build_upstream_url`; traversal in any encoding is refused);
- the outbound headers: only the minimised headers the pipeline passes, the partner's credential from the
  profile, Content-Type, Content-Length (computed by the client) and X-Request-Id; the caller's
  Authorization, cookies and hop-by-hop headers are stripped even if passed, and CR/LF/NUL is refused;
- one pooled, keep-alive `aiohttp.ClientSession` per partner, tuned for a proxy (no cookie jar, no
  decompression, no environment proxies, no automatic User-Agent/Accept headers);
- per-partner admission (`UpstreamPool.limiter`): a token bucket and a concurrency cap that refuse at
  once with `RateLimited` (429) rather than queue;
- one try of one call (`UpstreamPool.send`). Retries are the pipeline's: each try is its own ledger record.

Outcome mapping, decided here so the pipeline has one rule to apply: any HTTP answer the partner gives,
including 4xx and 5xx, comes back as an `UpstreamResponse` (the pipeline maps partner 5xx to 502).
What is not an answer raises: connection refused or reset, a malformed response, a redirect (never
followed), a body over the size cap -> `UpstreamError` (502); connect or total timeout ->
`UpstreamTimeout` (504). Error details name the failure class, never a URL or a value, since a path
parameter may be a pseudonym or worse.
"""

from __future__ import annotations

import base64
import math
import re
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.errors import (
    ConfigError,
    MalformedRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    Violation,
)

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "UpstreamPool",
    "UpstreamResponse",
    "build_upstream_url",
]

# A response bigger than this is refused as a partner failure: the gateway buffers whole bodies to run the
# response policy over them, so an unbounded read would let one partner exhaust the process's memory.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# Connection cap for a partner whose profile sets no max_concurrency: a pool must be bounded somewhere.
DEFAULT_MAX_CONCURRENCY = 100

# Never forwarded, whatever the pipeline passes: the caller's credentials and cookies, hop-by-hop headers
# (RFC 9110 7.6.1, plus the legacy ones proxies still see), and headers the client computes itself.
_STRIPPED_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "proxy-authenticate",
        "cookie",
        "cookie2",
        "set-cookie",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
        "x-request-id",
    }
)
# RFC 9110 token characters: what a header name may consist of.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\x00]")
_METHOD = re.compile(r"[A-Z]{3,10}")
_TEMPLATE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Characters that let a value escape its path segment or its line, at any decoding depth.
_SEGMENT_BREAKERS = ("/", "\\", "\x00", "\r", "\n")
# Percent-decoding is repeated to catch double (and deeper) encodings; a value still changing after this
# many rounds is refused rather than decoded further.
_MAX_DECODE_ROUNDS = 4
# Fast path: a value made only of these characters cannot hide an encoded or Unicode dot or separator.
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_~\-.]+")


class UpstreamAuthLike(Protocol):
    """What `send` needs of a profile's `UpstreamAuth` (gateway.profiles)."""

    @property
    def kind(self) -> str: ...  # "bearer" | "header" | "basic"
    @property
    def header(self) -> str: ...
    @property
    def value(self) -> str: ...


class UpstreamLike(Protocol):
    @property
    def base_url(self) -> str: ...
    @property
    def auth(self) -> UpstreamAuthLike | None: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def total_timeout(self) -> float: ...


class LimitsLike(Protocol):
    @property
    def rate_per_second(self) -> float | None: ...
    @property
    def burst(self) -> int | None: ...
    @property
    def max_concurrency(self) -> int | None: ...


class ProfileLike(Protocol):
    """The slice of `gateway.profiles.PartnerProfile` this module reads."""

    @property
    def id(self) -> str: ...
    @property
    def upstream(self) -> UpstreamLike: ...
    @property
    def limits(self) -> LimitsLike: ...


class RouteLike(Protocol):
    @property
    def path_template(self) -> str: ...


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """One HTTP answer from a partner, whatever its status; `body` is complete and within the size cap."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    latency_s: float


# --------------------------------------------------------------------------------------------- URLs


def _refuse_param(name: str, reason: str) -> MalformedRequest:
    # The violation names the parameter, never its value.
    return MalformedRequest("a path parameter cannot be used in a partner URL", [Violation(f"path.{name}", reason)])


def _check_segment(name: str, value: str) -> None:
    """Refuse a path parameter that is, or decodes to, anything but one ordinary path segment."""
    if not value:
        raise _refuse_param(name, "empty")
    if _PLAIN_SEGMENT.fullmatch(value):
        if value.strip(".") == "":
            raise _refuse_param(name, "dot segment")
        return
    current = value
    for _ in range(_MAX_DECODE_ROUNDS + 1):
        # NFKC folds look-alikes a lenient partner might normalise: fullwidth "．", "‥", "／", "＼".
        for form in (current, unicodedata.normalize("NFKC", current)):
            if form.strip(".") == "" or form.strip(". ") == "":
                raise _refuse_param(name, "dot segment")
            if any(ch in form for ch in _SEGMENT_BREAKERS):
                raise _refuse_param(name, "path separator or control character")
            if "://" in form or form.startswith("//"):
                raise _refuse_param(name, "absolute URI")
        decoded = unquote(current, errors="strict") if "%" in current else current
        if decoded == current:
            return
        current = decoded
    raise _refuse_param(name, "nested percent-encoding")


@lru_cache(maxsize=256)
def _parsed_base(base_url: str) -> tuple[str, str, str]:
    """(scheme, netloc, path without trailing slash) of a profile base URL, validated once."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("upstream base_url must be an absolute http(s) URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError("upstream base_url must not carry a query, a fragment or credentials")
    return parts.scheme, parts.netloc, parts.path.rstrip("/")


@lru_cache(maxsize=1024)
def _split_template(path_template: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A route template as (literal pieces, parameter names); len(literals) == len(names) + 1."""
    literals: list[str] = []
    names: list[str] = []
    position = 0
    for match in _TEMPLATE_PARAM.finditer(path_template):
        literals.append(path_template[position : match.start()])
        names.append(match.group(1))
        position = match.end()
    literals.append(path_template[position:])
    if not path_template.startswith("/") or any(("{" in lit or "}" in lit) for lit in literals):
        raise ConfigError("route path template is malformed")
    return tuple(literals), tuple(names)


def build_upstream_url(
    base_url: str,
    path_template: str,
    path_params: Mapping[str, str],
    query: Sequence[tuple[str, str]] = (),
) -> str:
    """The partner URL for one call: base URL (from the profile only) + template with encoded params + query.

    Each parameter becomes exactly one percent-encoded segment. A parameter that is or decodes (once or
    repeatedly, before or after NFKC normalisation) to `.`/`..`, or contains `/`, `\\`, NUL, CR or LF, or
    looks like an absolute URI, is refused with `MalformedRequest`; so is a missing one. The result is
    re-parsed and must keep the base URL's scheme, host, port and path prefix.
    """
    scheme, netloc, base_path = _parsed_base(base_url)
    literals, names = _split_template(path_template)
    pieces = [base_path, literals[0]]
    for name, literal in zip(names, literals[1:], strict=True):
        value = path_params.get(name)
        if value is None:
            raise _refuse_param(name, "missing")
        _check_segment(name, value)
        pieces.append(quote(value, safe=""))
        pieces.append(literal)
    path = "".join(pieces)
    url = f"{scheme}://{netloc}{path}"
    if query:
        url += "?" + "&".join(f"{quote(key, safe='')}={quote(value, safe='')}" for key, value in query)
    # Belt and braces: whatever the encoding did, the result must still point at the profile's partner.
    check = urlsplit(url)
    if check.scheme != scheme or check.netloc != netloc or not check.path.startswith(base_path + "/"):
        raise MalformedRequest("the partner URL would leave the partner's base URL")
    return url


# --------------------------------------------------------------------------------------------- limits


class PartnerLimiter:
    """Admission for one partner: a token bucket and an in-flight cap; refuses at once, never queues.

    It is its own async context manager (`async with limiter:`), so admitting a call allocates nothing;
    the counters are only touched from the event loop thread, so they need no lock.
    """

    __slots__ = ("_burst", "_in_flight", "_max_concurrency", "_rate", "_tokens", "_updated")

    def __init__(self, rate_per_second: float | None, burst: int | None, max_concurrency: int | None) -> None:
        self._max_concurrency = max_concurrency
        self._rate = rate_per_second
        # Without an explicit burst the bucket holds one second's worth, and at least one call.
        self._burst = float(burst if burst is not None else max(1, math.ceil(rate_per_second or 1)))
        self._tokens = self._burst
        self._updated = time.monotonic()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def __aenter__(self) -> None:
        if self._max_concurrency is not None and self._in_flight >= self._max_concurrency:
            raise RateLimited("partner concurrency limit reached", reason="concurrency-limit")
        if self._rate is not None:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
            self._updated = now
            if self._tokens < 1.0:
                raise RateLimited("partner rate limit reached", reason="rate-limit")
            self._tokens -= 1.0
        self._in_flight += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._in_flight -= 1


# --------------------------------------------------------------------------------------------- the pool


def _credential_header(auth: UpstreamAuthLike | None) -> tuple[str, str] | None:
    """The header carrying the partner's credential, computed once per partner channel."""
    if auth is None:
        return None
    if auth.kind == "bearer":
        return "Authorization", f"Bearer {auth.value}"
    if auth.kind == "basic":
        # The profile holds "username:password"; RFC 7617 sends it base64-encoded (UTF-8).
        return "Authorization", "Basic " + base64.b64encode(auth.value.encode()).decode("ascii")
    if auth.kind == "header":
        if not _HEADER_NAME.fullmatch(auth.header):
            raise ConfigError("upstream auth header name is not a valid header name")
        return auth.header, auth.value
    raise ConfigError("upstream auth kind must be bearer, header or basic")


class _PartnerChannel:
    """One partner's session, limiter and precomputed credential; replaced when its profile settings change."""

    __slots__ = ("credential", "limiter", "limits", "session", "stripped", "upstream")

    def __init__(self, profile: ProfileLike) -> None:
        upstream, limits = profile.upstream, profile.limits
        self.upstream = upstream
        self.limits = limits
        _parsed_base(upstream.base_url)
        self.credential = _credential_header(upstream.auth)
        if self.credential is not None and _FORBIDDEN_IN_VALUE.search(self.credential[1]):
            raise ConfigError("upstream credential contains a control character")
        self.stripped = _STRIPPED_HEADERS | ({self.credential[0].lower()} if self.credential else set())
        self.limiter = PartnerLimiter(limits.rate_per_second, limits.burst, limits.max_concurrency)
        connections = limits.max_concurrency or DEFAULT_MAX_CONCURRENCY
        connector = aiohttp.TCPConnector(
            limit=connections,
            limit_per_host=connections,
            ttl_dns_cache=300,
            keepalive_timeout=30.0,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            # A proxy adds nothing the caller did not send: no User-Agent, Accept or Accept-Encoding, and no
            # guessed Content-Type (the pipeline states the real one).
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(
                total=upstream.total_timeout,
                connect=upstream.connect_timeout,
                sock_connect=upstream.connect_timeout,
            ),
            raise_for_status=False,
            read_bufsize=2**16,
        )

    def outbound_headers(
        self,
        headers: Mapping[str, str],
        body: bytes | None,
        request_id: str | None,
        content_type: str | None,
    ) -> CIMultiDict[str]:
        out: CIMultiDict[str] = CIMultiDict()
        stripped = self.stripped
        for name, value in headers.items():
            lowered = name.lower()
            if lowered in stripped:
                continue
            if not _HEADER_NAME.fullmatch(name):
                raise MalformedRequest("a header name is not valid", [Violation("headers", "invalid header name")])
            if _FORBIDDEN_IN_VALUE.search(value):
                raise MalformedRequest(
                    "a header value contains a line break or NUL",
                    [Violation(f"headers.{lowered}", "control character")],
                )
            if lowered == "content-type":
                if content_type is None:
                    content_type = value
                continue
            out.add(name, value)
        if body is not None and content_type is not None:
            if _FORBIDDEN_IN_VALUE.search(content_type):
                raise MalformedRequest("the content type contains a line break or NUL")
            out["Content-Type"] = content_type
        if request_id is not None:
            if _FORBIDDEN_IN_VALUE.search(request_id):
                raise MalformedRequest("the request id contains a line break or NUL")
            out["X-Request-Id"] = request_id
        if self.credential is not None:
            out[self.credential[0]] = self.credential[1]
        return out


class UpstreamPool:
    """Pooled upstream sessions, one per partner, created on first use; `start()` before use, `close()` after."""

    def __init__(self, *, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self._max_response_bytes = max_response_bytes
        self._channels: dict[str, _PartnerChannel] = {}
        # Sessions of channels replaced by a profile reload; closed with the pool, since in-flight calls
        # may still be using them.
        self._retired: list[aiohttp.ClientSession] = []
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def close(self) -> None:
        self._started = False
        sessions = [channel.session for channel in self._channels.values()] + self._retired
        self._channels.clear()
        self._retired.clear()
        for session in sessions:
            await session.close()

    def _channel(self, profile: ProfileLike) -> _PartnerChannel:
        channel = self._channels.get(profile.id)
        if channel is not None and channel.upstream is profile.upstream and channel.limits is profile.limits:
            return channel
        if channel is not None and channel.upstream == profile.upstream and channel.limits == profile.limits:
            # A reload with the same settings keeps the connections and the limiter's state.
            channel.upstream, channel.limits = profile.upstream, profile.limits
            return channel
        if not self._started:
            raise UpstreamError("the upstream pool is not running", reason="pool-closed")
        if channel is not None:
            self._retired.append(channel.session)
        channel = _PartnerChannel(profile)
        self._channels[profile.id] = channel
        return channel

    def limiter(self, profile: ProfileLike) -> PartnerLimiter:
        """Admission for one call to this partner: `async with pool.limiter(profile):` raises `RateLimited`."""
        return self._channel(profile).limiter

    async def send(
        self,
        profile: ProfileLike,
        route: RouteLike,
        method: str,
        path_params: Mapping[str, str],
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        request_id: str | None = None,
        content_type: str | None = None,
    ) -> UpstreamResponse:
        """One try of one call. Returns any HTTP answer; raises `UpstreamError`/`UpstreamTimeout` otherwise.

        `headers` are the already-minimised request headers; `content_type` (or a Content-Type among
        `headers`) labels `body`; `request_id` goes out as X-Request-Id.
        """
        if not _METHOD.fullmatch(method):
            raise MalformedRequest("the request method is not valid")
        channel = self._channel(profile)
        url = build_upstream_url(channel.upstream.base_url, route.path_template, path_params, query)
        out_headers = channel.outbound_headers(headers, body, request_id, content_type)
        cap = self._max_response_bytes
        started = time.perf_counter()
        try:
            async with channel.session.request(
                method, URL(url, encoded=True), headers=out_headers, data=body, allow_redirects=False
            ) as response:
                status = response.status
                if 300 <= status < 400 and status != 304:
                    raise UpstreamError(
                        "the partner answered with a redirect; redirects are never followed", reason="upstream-redirect"
                    )
                length = response.content_length
                if length is not None and length > cap:
                    response.close()
                    raise UpstreamError("the partner's response is larger than allowed", reason="upstream-too-large")
                if length is not None:
                    data = await response.read()
                else:
                    data = await _read_capped(response, cap)
                return UpstreamResponse(status, response.headers, data, time.perf_counter() - started)
        except TimeoutError:
            raise UpstreamTimeout("the partner did not answer in time", reason="upstream-timeout") from None
        except aiohttp.ClientConnectorError:
            raise UpstreamError("could not connect to the partner", reason="upstream-connect") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            raise UpstreamError("the partner closed or reset the connection", reason="upstream-reset") from None
        except aiohttp.ClientResponseError:
            raise UpstreamError("the partner sent a malformed response", reason="upstream-malformed") from None
        except aiohttp.ClientPayloadError:
            raise UpstreamError("the partner sent a malformed response body", reason="upstream-malformed") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"the partner call failed ({type(exc).__name__})", reason="upstream-error") from None


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body of a response without Content-Length (chunked or read-to-close), refusing more than `cap`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await response.content.readany()
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cap:
            response.close()
            raise UpstreamError("the partner's response is larger than allowed", reason="upstream-too-large")
        chunks.append(chunk)
