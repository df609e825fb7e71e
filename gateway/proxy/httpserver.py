"""The lean HTTP/1.1 server of the egress path: an asyncio protocol over `httptools` (llhttp).

Why: aiohttp's server machinery (request handler, `web.Request`, router, middleware chain, response and
stream writer) was about a quarter of the event loop's CPU per egress request. This protocol parses
with llhttp, builds a small request object the pipeline reads (`LeanRequest`, an `IncomingRequest`),
runs the pipeline and writes the answer's bytes itself.

Only `{METHOD} /v1/partners/...` is served here. A target that is not a path (absolute, authority or
asterisk form) is refused here (400): the gateway serves none of them. A request for any other path (ops
endpoints, the admin API, unknown paths) is read here up to the end of its head, with this server's
checks, limits and head deadline, then hands its connection to aiohttp's own protocol for the unchanged
Application: a `RequestHandler` as aiohttp's server would have created it (`_HandedOverHandler`: its error
answers are value-free problem+json, it answers a client that half-closed, and it ends by a deadline)
takes the transport and is fed the bytes of that request from its first byte (and no further when the
request is complete in them), once the requests ahead of it are answered. aiohttp answers that one
request with `Connection: close` and closes the connection, so every egress request is read here, under
this server's limits and deadlines, and never by aiohttp's parser (whose errors quote the request in its
log records and error answers; gateway.logs strips those records too).

llhttp reports no byte offsets, so where that request begins is found from the bytes read since the
last point a fresh parser could start from (`_replay`): a read that began between messages, or the
known end of a Content-Length body. When the request begins right there (how
every non-pipelining client sends) that is free; when egress requests precede it in those bytes, a
scratch parser finds where they end (`_end_of_messages`). Only when that point is unknown (a pipelined
request behind a chunked body over `_REPLAY_MAX_BYTES` spread over several reads) is it refused with 400
and the connection closed (fail closed).

HTTP behaviour, as aiohttp's server had it unless said otherwise:
- HTTP/1.0 and HTTP/1.1 only: any other version (llhttp takes a request line without one as 0.9) gets
  505; the status line always says `HTTP/1.1` (the server's version, RFC 9110 6.2), so a close is always
  said with `Connection: close`; an HTTP/1.1 request needs exactly one Host (400);
- keep-alive by default for HTTP/1.1, close for HTTP/1.0 unless `Connection: keep-alive`; pipelined
  requests are answered in order, one at a time (reading pauses while one waits behind another);
- a client that half-closes (FIN after its requests) still gets the answers owed, then the connection
  closes; with none owed it closes at once;
- bodies with Content-Length or chunked framing are handed to the pipeline as they arrive; the body
  stream holds at most about `_BODY_HIGH_WATER` bytes before reading pauses, so the route's limit
  (ReadBody) is enforced while reading; an answer given before the body was read to its end (413, or
  any refusal) closes the connection instead of reading the rest;
- headers that must appear once (Host, Content-Type, ...: aiohttp's list) appear once (400);
- Transfer-Encoding is `chunked` or absent: a coding before chunked gets 501 (RFC 9112 6.1), one whose
  last coding is not chunked 400 (6.3), and any on an HTTP/1.0 request 400;
- limits: request target 8,190 bytes (414), a header line 8,190 bytes, 128 headers, 64 KiB of head
  (431); malformed requests (llhttp's strict checks: CR/LF/NUL in values, Content-Length with
  Transfer-Encoding, duplicate Content-Length, bad chunk framing, ...) get 400; all as problem+json,
  then the connection is closed;
- `Expect: 100-continue` (HTTP/1.1) is answered `100 Continue` when the pipeline first reads the body,
  so a refusal before that never invites the body; any other expectation gets 417 and a close;
- an `Upgrade` request is answered as a plain request, then the connection is closed.
- a head that has begun must be complete within `request_head_timeout_seconds`, and a body whose
  reading has begun within `request_body_timeout_seconds` (a deadline for the whole body, not an idle
  limit between reads, which a trickling client would reset at will); 408 and close after either;
- a keep-alive connection idle (no request in progress, no answer owed) for `keepalive_timeout_seconds`
  is closed, and one whose client has read nothing of a pending answer for as long is aborted.
Nothing from the request (target, headers, body) goes into a log line or an error body here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final, cast

import httptools
from aiohttp import StreamReader, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import parse_content_type
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

from gateway.errors import GatewayError, MalformedRequest
from gateway.httpheaders import find_unpassable_character
from gateway.logs import get_logger
from gateway.proxy.context import EGRESS_PREFIX, Answer, request_id_from, start_context
from gateway.proxy.pipeline import Pipeline
from gateway.proxy.problems import InternalError, problem_answer

__all__ = ["EgressProtocol", "LeanRequest", "LeanServer"]

MAX_TARGET_BYTES: Final = 8190
MAX_FIELD_BYTES: Final = 8190
MAX_HEADERS: Final = 128
MAX_HEAD_BYTES: Final = 65536
# Defaults of the settings (gateway.config); docs/operations.md says why these values.
KEEPALIVE_SECONDS: Final = 75.0
# A head that has begun must be complete within this bound (408 and close after): a client trickling
# header bytes would otherwise hold its connection for as long as it likes. Bodies likewise.
HEAD_TIMEOUT_SECONDS: Final = 30.0
BODY_TIMEOUT_SECONDS: Final = 30.0
_BODY_HIGH_WATER: Final = 65536
# Bytes of a message spread over several reads kept to locate a request pipelined behind it (only a
# chunked body needs them all; a head is bounded by MAX_HEAD_BYTES anyway).
_REPLAY_MAX_BYTES: Final = 262144
LINGER_BYTES: Final = 4 * 1024 * 1024
LINGER_SECONDS: Final = 3.0
_EGRESS_PREFIX_BYTES: Final = EGRESS_PREFIX.encode("ascii")
_NO_BODY_STATUS: Final = frozenset({204, 304})
_FRAMING: Final = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
# Headers that aiohttp's parser refuses to see twice (its SINGLETON_HEADERS): two values would be
# ambiguous (which Content-Type did the media-type check see?), so both servers refuse them.
_SINGLETON_HEADERS: Final = (
    "Content-Length", "Content-Location", "Content-Range", "Content-Type", "ETag", "Max-Forwards", "Server",
    "Transfer-Encoding", "User-Agent",
)  # and Host, checked on its own (exactly one in HTTP/1.1)
# An answer's header line holds only what `find_unpassable_character` (gateway/httpheaders.py) accepts:
# FilterResponse withholds other partner values; this is the last check before the bytes go out.
# Always HTTP/1.1, whatever 1.x the request named: a server sends its own version (RFC 9110, 6.2).
_STATUS_LINES: Final = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
_SERVER: Final = f"Server: {SERVER_SOFTWARE}\r\n"
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_log = get_logger("gateway.server")


class HeadersTooLarge(GatewayError):
    status = 431
    slug = "headers-too-large"
    title = "Request header fields too large"


class TargetTooLong(GatewayError):
    status = 414
    slug = "target-too-long"
    title = "Request target too long"


class RequestHeadTimeout(GatewayError):
    status = 408
    slug = "request-timeout"
    title = "Request head not received in time"


class RequestBodyTimeout(GatewayError):
    status = 408
    slug = "request-timeout"
    title = "Request body not received in time"


class ExpectationFailed(GatewayError):
    status = 417
    slug = "expectation-failed"
    title = "Expectation not supported"


class HttpVersionNotSupported(GatewayError):
    status = 505
    slug = "http-version-not-supported"
    title = "HTTP version not supported"


class TransferCodingNotImplemented(GatewayError):
    status = 501
    slug = "transfer-coding-not-implemented"
    title = "Transfer coding not implemented"


class _Stop(Exception):
    """Raised from a parser callback to stop parsing; the reason is on the protocol (`_stop`)."""


_HANDOFF: Final = "handoff"
_STOP_READING: Final = "stop-reading"

_date_cache: list[Any] = [0, ""]


def _date_header() -> str:
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[0] = now
        _date_cache[1] = f"Date: {formatdate(now, usegmt=True)}\r\n"
    return str(_date_cache[1])


class LeanBody:
    """One request's body as it arrives (the pipeline's `content`). Holds what the parser delivered
    until the pipeline reads it; past the high-water mark the connection stops reading."""

    __slots__ = (
        "_chunks", "_eof", "_error", "_expect_continue", "_protocol", "_size", "_started", "_waiter", "complete",
        "received",
    )

    def __init__(self, protocol: EgressProtocol, *, expect_continue: bool) -> None:
        self._protocol = protocol
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._expect_continue = expect_continue
        self._started = False  # the pipeline has asked for the body
        self.complete = False  # the parser saw the end of this message
        self.received = 0  # body bytes the parser delivered (where a Content-Length body ends)

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self.received += len(data)
        if self._size > _BODY_HIGH_WATER:
            self._protocol.pause_body()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self.complete = True
        self._wake()

    def set_exception(self, error: BaseException) -> None:
        if not self._eof:
            self._error = error
            self._eof = True
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def read(self, n: int = -1) -> bytes:
        if not self._started:
            self._started = True
            self._protocol.body_wanted(self, expect_continue=self._expect_continue)
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        chunk = self._chunks.popleft()
        if 0 <= n < len(chunk):
            self._chunks.appendleft(chunk[n:])
            chunk = chunk[:n]
        self._size -= len(chunk)
        if self._size <= _BODY_HIGH_WATER // 4:
            self._protocol.resume_body()
        return chunk


class LeanRequest:
    """The request as the pipeline's stages read it (an `IncomingRequest`)."""

    __slots__ = (
        "_charset",
        "_content_type",
        "_parsed_type",
        "body_exists",
        "content",
        "content_length",
        "headers",
        "keep_alive",
        "method",
        "raw_path",
        "version",
    )

    def __init__(
        self, method: str, raw_path: str, headers: CIMultiDict[str], version: str, keep_alive: bool,
        content: LeanBody, *, chunked: bool,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.content = content
        declared = headers.get("Content-Length")
        # llhttp has already refused a malformed, negative or repeated Content-Length.
        self.content_length = None if declared is None else int(declared)
        self.body_exists = chunked or bool(self.content_length)
        self._parsed_type = False
        self._content_type = "application/octet-stream"
        self._charset: str | None = None

    def _parse_type(self) -> None:
        # aiohttp's own parser of the header, so both servers see the same media type and charset.
        raw = self.headers.get("Content-Type")
        if raw is not None:
            self._content_type, params = parse_content_type(raw)
            self._charset = params.get("charset")
        self._parsed_type = True

    @property
    def content_type(self) -> str:
        if not self._parsed_type:
            self._parse_type()
        return self._content_type

    @property
    def charset(self) -> str | None:
        if not self._parsed_type:
            self._parse_type()
        return self._charset


class LeanServer:
    """The listening socket and its connections; hands non-egress connections to aiohttp's server, which
    answers the one request it is given and closes (its requests are all marked `Connection: close`)."""

    def __init__(
        self, pipeline_of: Callable[[], Pipeline], aiohttp_server: web.Server, *,
        head_timeout: float = HEAD_TIMEOUT_SECONDS, body_timeout: float = BODY_TIMEOUT_SECONDS,
        keepalive_timeout: float = KEEPALIVE_SECONDS,
    ) -> None:
        self.pipeline_of = pipeline_of
        _close_after_answer(aiohttp_server)
        _HandedOverHandler.check(aiohttp_server)
        self.aiohttp_server = aiohttp_server
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[EgressProtocol] = set()
        self._server: asyncio.AbstractServer | None = None
        self._idle: asyncio.Event = asyncio.Event()
        self._idle.set()

    async def listen(self, host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024) -> int:
        """Start listening; returns the bound port (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: EgressProtocol(self), host, port, backlog=backlog, reuse_port=reuse_port or None,
        )
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else port

    def register(self, protocol: EgressProtocol) -> None:
        self.connections.add(protocol)
        self._idle.clear()

    def forget(self, protocol: EgressProtocol) -> None:
        self.connections.discard(protocol)
        if not self.connections:
            self._idle.set()

    async def stop(self, grace_seconds: float) -> None:
        """Stop accepting, close idle keep-alive connections, let in-flight requests finish (each
        connection closes after its answer) for up to `grace_seconds`, then abort what is left."""
        if self._server is not None:
            self._server.close()
        for protocol in list(self.connections):
            protocol.shutdown()
        try:
            await asyncio.wait_for(self._idle.wait(), grace_seconds)
        except TimeoutError:
            left = list(self.connections)
            _log.warning("shutdown_aborted_requests", connections=len(left))
            for protocol in left:
                protocol.abort()


class EgressProtocol(asyncio.Protocol):
    """One client connection (HTTP/1.1, keep-alive, pipelining)."""

    def __init__(self, server: LeanServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[LeanRequest] = deque()  # headers complete; the first one is being answered
        self._task: asyncio.Task[None] | None = None
        self._current: LeanRequest | None = None  # the message whose body the parser is reading
        self._stop: GatewayError | str | None = None
        # Input: `_input_done` is final (Connection: close, an upgrade, an error, shutdown); reading is
        # paused while any reason holds (see `_update_reading`).
        self._input_done = False
        self._closing = False  # the next answer closes the connection (shutdown)
        self._eof = False  # the client half-closed: nothing more arrives, answers owed are still written
        self._refusal: Answer | None = None  # written after the queued answers, then the connection closes
        self._queue_paused = False
        self._body_paused = False
        self._reading_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._drain_since = 0.0  # when the client last read some of the answer it is waited on to read
        self._drain_buffered = 0  # the unsent bytes then
        self._last_activity = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._lingering: asyncio.Transport | None = None  # closing: input is read and discarded
        self._linger_left = 0
        self._linger_timer: asyncio.TimerHandle | None = None
        # Parse state of the message being read.
        self._in_message = False
        self._in_head = False
        self._deciding = False
        self._clean_start = False
        self._chunk = b""
        # The bytes read since the last point a fresh parser could start from, and how many messages had
        # been completed by then (see `_locate_handoff`); None when no such point is known.
        self._replay: list[bytes] | None = None
        self._replay_size = 0
        self._replay_base = 0
        self._completed = 0  # messages completed on this connection
        self._handoff: bytes | None = None  # bytes to give aiohttp once the requests ahead are answered
        self._url = b""
        self._version = "1.1"  # of the message being read, once its request line is (see `_decide`)
        self._header_list: list[tuple[str, str]] = []
        self._head_size = 0
        self._head_bytes = 0

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._server.register(self)
        self._last_activity = self._loop.time()
        self._idle_timer = self._loop.call_at(self._last_activity + self._server.keepalive_timeout, self._check_idle)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._transport = None
        self._lingering = None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self._input_done = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._cancel_head_timer()
        self._cancel_body_timer()
        lost = ConnectionResetError("the client closed the connection")
        for request in self._queue:
            request.content.set_exception(lost)
        if self._current is not None:
            self._current.content.set_exception(lost)
        self._wake_drain()
        self._server.forget(self)

    def eof_received(self) -> bool:
        """The client half-closed (FIN after its request, as `nc -N` or a shell pipe does): it sends nothing
        more but still reads. The answers owed are written, then the connection closes; with none owed it
        closes now (False lets the transport close it)."""
        transport = self._transport
        if transport is None:  # already closing (lingering): nothing more to wait for
            return False
        self._eof = True
        self._input_done = True
        self._cancel_head_timer()  # a head begun will never be completed
        self._cancel_body_timer()
        current = self._current
        if current is not None:
            # Its body can never arrive whole: its own pipeline run answers (the body read fails with a
            # 400, or an earlier refusal), and nothing is forwarded.
            current.content.set_exception(MalformedRequest("the request body ended early"))
        handoff = self._handoff
        if handoff is not None and _end_of_messages(handoff, 1) is None:
            self._handoff = None  # a request for another path that can no longer be completed
        # True keeps the write side open for what is owed.
        return self._task is not None or bool(self._queue) or self._handoff is not None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            self._linger_left -= len(data)
            if self._linger_left <= 0:
                self._lingering.close()
            return
        if self._handoff is not None:
            self._handoff += data
            return
        if self._input_done:
            return
        self._last_activity = self._loop.time()
        if not self._in_message:
            self._replay = [data]
            self._replay_size = len(data)
            self._replay_base = self._completed
        else:
            self._extend_replay(data)
            if self._in_head:
                self._head_bytes += len(data)
        self._chunk = data
        self._clean_start = not self._in_message
        stopped = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            # Acted on after the `try`: a hand-off run in here would chain this exception (and the
            # parser's state) to anything aiohttp raises or logs.
            stopped = True
        except httptools.HttpParserUpgrade:
            # Upgrades are not offered: the request is answered as a plain one, then the connection closes.
            self._end_input()
        except httptools.HttpParserError:
            self._stop = None
            self._refuse(MalformedRequest("the request is not valid HTTP/1.1"))
        else:
            # httptools holds a header it has not finished in its own buffers: bound the unfinished head
            # (counted from the read it began in, so the bound is exact when it began a read).
            if self._in_head:
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._refuse(HeadersTooLarge("the request head is too large"))
                elif self._head_timer is None and not self._queue_paused:
                    # Timed from the read it began in; a head that arrives whole in one read (nearly
                    # every one) never needs the timer.
                    self._head_timer = self._loop.call_at(
                        self._last_activity + self._server.head_timeout, self._head_timed_out
                    )
        finally:
            self._chunk = b""
            if not self._in_message:
                self._replay = None
        if stopped:
            self._stopped()

    def _extend_replay(self, data: bytes) -> None:
        """A read that continues a message: keep what is needed to locate a request pipelined behind it."""
        current = self._current
        if (
            not self._in_head and current is not None and current.content_length is not None
            and "Transfer-Encoding" not in current.headers
        ):
            # A Content-Length body ends exactly this many bytes into the read: a fresh parser can start there.
            left = current.content_length - current.content.received
            self._replay = [data[left:]]
            self._replay_size = len(data) - left
            self._replay_base = self._completed + 1
        elif self._replay is not None:
            self._replay_size += len(data)
            if self._replay_size > _REPLAY_MAX_BYTES + MAX_HEAD_BYTES:
                self._replay = None
            else:
                self._replay.append(data)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and self._transport is not None and not self._input_done and self._handoff is None:
            self._refuse(RequestHeadTimeout("the request head did not arrive in time"))

    def body_wanted(self, body: LeanBody, *, expect_continue: bool) -> None:
        """The pipeline starts reading a body: invite it (100 Continue) and time it unless it is all here."""
        if expect_continue:
            self.send_continue()
        if not body.complete and self._body_timer is None and self._transport is not None and not self._input_done:
            self._body_timer = self._loop.call_later(self._server.body_timeout, self._body_timed_out)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        current = self._current
        if current is None or self._transport is None or self._input_done:
            return
        _log.debug("http_request_refused", status=RequestBodyTimeout.status, reason="body-timeout")
        # Read nothing more: the pipeline's read fails with the 408, its answer closes the connection
        # (the body was not read to its end), and nothing was forwarded.
        self._input_done = True
        self._update_reading()
        current.content.set_exception(RequestBodyTimeout("the request body did not arrive in time"))

    def _stopped(self) -> None:
        stop, self._stop = self._stop, None
        if stop == _HANDOFF:
            self._begin_handoff()
        elif stop == _STOP_READING:
            self._end_input()
        elif isinstance(stop, GatewayError):
            self._refuse(stop)
        else:  # a bug in a callback: never answer from a half-parsed request
            self._refuse(MalformedRequest("the request could not be read"))

    # -- httptools callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._in_head = True
        self._deciding = True
        self._head_bytes = len(self._chunk) if self._clean_start else 0
        self._head_size = 0
        self._url = b""
        self._header_list = []
        self._clean_start = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_TARGET_BYTES:
            self._stop = TargetTooLong("the request target is too long")
            raise _Stop

    def _decide(self) -> None:
        """The request line is complete: a version other than HTTP/1.0 or 1.1 is refused (llhttp takes
        a line without one as 0.9 and parses any digit pair), and so is a target that is not origin-form
        (absolute, authority or asterisk form: the gateway serves none of them, and aiohttp's request
        building can fail on them without answering). Whether the request is handed to aiohttp is
        decided once the whole head is read (`_hand_over_head`)."""
        self._deciding = False
        version = self._parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._stop = HttpVersionNotSupported("only HTTP/1.0 and HTTP/1.1 are served")
            raise _Stop
        self._version = version
        if not self._url.startswith(b"/"):
            self._stop = MalformedRequest("the request target must be a path (origin-form)")
            raise _Stop

    def _hand_over_head(self) -> None:
        """The head is complete and passed this server's checks: an egress request stays here, any other
        is handed to aiohttp, whose parser thus only ever reads heads llhttp and these checks accepted
        (its own refusals quote the offending line)."""
        data = self._locate_handoff()
        if data is None:
            self._stop = MalformedRequest("a pipelined request for another endpoint; send it on its own")
        else:
            self._handoff = data
            self._stop = _HANDOFF
        raise _Stop

    def _locate_handoff(self) -> bytes | None:
        """The bytes from the first byte of the request being parsed to the end of this read, or None
        when they cannot be located exactly (fail closed)."""
        replay = self._replay
        if replay is None:
            return None
        data = replay[0] if len(replay) == 1 else b"".join(replay)
        ahead = self._completed - self._replay_base  # messages in `data` before this request
        start = 0 if ahead == 0 else _end_of_messages(data, ahead)
        if start is None:
            return None
        # llhttp skips empty lines before a request line (and spaces after the method); the request must
        # then begin as parsed, else the offset is wrong and nothing is handed over.
        rest = data[start:].lstrip(b"\r\n")
        method = self._parser.get_method()
        if not (rest.startswith(method + b" ") and rest[len(method):].lstrip(b" ").startswith(self._url)):
            return None
        return rest

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._deciding:
            self._decide()
        size = len(name) + len(value)
        self._head_size += size
        if size > MAX_FIELD_BYTES or len(self._header_list) >= MAX_HEADERS or self._head_size > MAX_HEAD_BYTES:
            self._stop = HeadersTooLarge("too many or too large header fields")
            raise _Stop
        # llhttp strips the whitespace before a value but not after it (aiohttp strips both).
        value = value.rstrip(b" \t")
        self._header_list.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        if self._deciding:
            self._decide()
        self._in_head = False
        if self._head_timer is not None:
            self._cancel_head_timer()
        parser = self._parser
        headers: CIMultiDict[str] = CIMultiDict(self._header_list)
        self._header_list = []
        version = self._version
        hosts = len(headers.getall("Host", ()))
        if hosts != 1 and (hosts or version == "1.1"):
            # RFC 9112, 3.2: exactly one Host in HTTP/1.1 (at most one in 1.0).
            self._stop = MalformedRequest("an HTTP/1.1 request needs exactly one Host header")
            raise _Stop
        for name in _SINGLETON_HEADERS:
            if name in headers and len(headers.getall(name)) > 1:
                self._stop = MalformedRequest("a header that must appear once was sent twice")
                raise _Stop
        coding = headers.get("Transfer-Encoding")
        if coding is not None and (version == "1.0" or coding.lower() != "chunked"):
            if version == "1.0":  # HTTP/1.0 has no transfer codings: faulty framing (RFC 9112, 6.1)
                self._stop = MalformedRequest("an HTTP/1.0 request cannot use Transfer-Encoding")
            elif coding.rpartition(",")[2].strip().lower() != "chunked":
                # The body's length cannot be known: 400 (RFC 9112, 6.3; llhttp would refuse it next).
                self._stop = MalformedRequest("the request is not valid HTTP/1.1")
            else:  # another coding before chunked: understood by no one here (RFC 9112, 6.1)
                self._stop = TransferCodingNotImplemented("only the transfer coding chunked is supported")
            raise _Stop
        expect = headers.get("Expect")
        expect_continue = False
        if expect is not None:
            if expect.strip().lower() != "100-continue":
                self._stop = ExpectationFailed("only the expectation 100-continue is supported")
                raise _Stop
            expect_continue = version == "1.1"
        if not self._url.startswith(_EGRESS_PREFIX_BYTES):
            self._hand_over_head()
        request = LeanRequest(
            parser.get_method().decode("ascii"), self._url.decode("utf-8", "surrogateescape"), headers, version,
            parser.should_keep_alive(), LeanBody(self, expect_continue=expect_continue), chunked=coding is not None,
        )
        self._current = request
        self._queue.append(request)
        if self._task is None:
            self._task = self._loop.create_task(self._serve(request))
        elif not self._queue_paused:
            # A request waits behind another: read no further until it is the one being answered.
            self._queue_paused = True
            self._update_reading()

    def on_body(self, body: bytes) -> None:
        if self._current is not None:
            self._current.content.feed(body)

    def on_message_complete(self) -> None:
        current = self._current
        self._current = None
        self._in_message = False
        self._clean_start = False
        self._completed += 1
        if self._body_timer is not None:
            self._cancel_body_timer()
        if current is not None:
            current.content.feed_eof()
            if not current.keep_alive:
                self._stop = _STOP_READING
                raise _Stop

    # -- answering -----------------------------------------------------------------------------------

    async def _serve(self, request: LeanRequest) -> None:
        """Answers the queued requests in order (usually just one)."""
        while True:
            answer = await self._answer(request)
            if self._queue and self._queue[0] is request:
                self._queue.popleft()
            self._write(request, answer)
            if self._transport is None:
                break
            if self._write_paused:
                self._drain = self._loop.create_future()
                self._drain_since = self._loop.time()
                self._drain_buffered = self._transport.get_write_buffer_size()
                await self._drain
                if self._transport is None:
                    break
            if not self._queue:
                break
            request = self._queue[0]
            if self._queue_paused and len(self._queue) == 1:
                self._resume_queue()  # its body may still be on its way
        self._task = None
        transport = self._transport
        if transport is None:
            return
        self._last_activity = self._loop.time()  # the keep-alive idle time counts from the last answer
        if self._refusal is not None:
            self._write(None, self._refusal, close=True)
        elif self._handoff is not None:
            self._hand_over(self._handoff)
        elif self._input_done:
            self._close(transport)
        elif self._queue_paused:
            self._resume_queue()

    def _resume_queue(self) -> None:
        self._queue_paused = False
        self._update_reading()
        if self._in_head and self._head_timer is None and not self._input_done:
            # A head that began while reading was paused behind the answers is timed from now.
            self._head_timer = self._loop.call_later(self._server.head_timeout, self._head_timed_out)

    async def _answer(self, request: LeanRequest) -> Answer:
        ctx = start_context(request)
        try:
            pipeline = self._server.pipeline_of()
        except GatewayError as exc:
            return problem_answer(exc, ctx.request_id)
        try:
            return await pipeline.handle(ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Pipeline.handle answers every error itself; this is a last guard
            _log.error("unexpected_error", request_id=ctx.request_id, error=type(exc).__name__)
            return problem_answer(InternalError("internal error"), ctx.request_id)

    def _write(self, request: LeanRequest | None, answer: Answer, *, close: bool = False) -> None:
        transport = self._transport
        if transport is None:
            return
        version = "1.1" if request is None else request.version
        # Reading on after an answer needs the whole request consumed; otherwise the rest of its body
        # would be parsed as the next request, so the connection closes instead.
        close = close or self._closing or request is None or not request.keep_alive or not request.content.complete
        status = answer.status
        try:
            head = _head(version, answer, close)
        except ValueError:
            _log.error("unsafe_answer_header", status=status)
            answer = problem_answer(InternalError("internal error"), _request_id(answer))
            status = answer.status
            head = _head(version, answer, close)
        if (request is not None and request.method == "HEAD") or status in _NO_BODY_STATUS:
            transport.write(head)
        else:
            transport.write(head + answer.body)
        if close:
            self._close(transport)

    def _close(self, transport: asyncio.Transport) -> None:
        """Close after the last answer. Input the gateway did not read (the rest of a refused body, a
        request after `Connection: close`) would make the kernel reset the connection, and a reset can
        destroy the answer before the client reads it; so the write side is shut first and what still
        arrives is read and discarded, up to `LINGER_BYTES` or `LINGER_SECONDS`."""
        self._input_done = True
        self._transport = None
        self._lingering = transport
        self._linger_left = LINGER_BYTES
        if self._eof:
            # The client already half-closed: nothing can arrive to reset the answer; close once it is sent.
            transport.close()
            self._linger_timer = self._loop.call_later(LINGER_SECONDS, _close_or_abort, transport)
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        self._linger_timer = self._loop.call_later(LINGER_SECONDS, _close_or_abort, transport)

    def _refuse(self, error: GatewayError) -> None:
        """A request that cannot be read: answer it after the ones ahead of it, then close."""
        _log.debug("http_request_refused", status=error.status, reason=error.slug)
        self._input_done = True
        self._update_reading()
        current = self._current
        if current is not None:
            # Its head was read: its own pipeline run answers (the body read fails), then the connection
            # closes because the body was not read to its end.
            current.content.set_exception(MalformedRequest("the request body is malformed"))
            return
        answer = problem_answer(error, request_id_from(None))
        if self._task is None:
            self._write(None, answer, close=True)
        else:
            self._refusal = answer

    def _end_input(self) -> None:
        """Parse nothing more on this connection (after `Connection: close`, an upgrade or an error);
        it closes once the requests already read are answered."""
        self._input_done = True
        self._update_reading()
        if self._task is None and not self._queue and self._transport is not None:
            self._close(self._transport)

    def send_continue(self) -> None:
        if self._transport is not None and not self._input_done:
            self._transport.write(_CONTINUE)

    # -- flow control ----------------------------------------------------------------------------------

    def _update_reading(self) -> None:
        if self._transport is not None:
            self._update_reading_of(
                self._transport,
                paused=self._input_done or self._queue_paused or self._body_paused or self._handoff is not None,
            )

    def _update_reading_of(self, transport: asyncio.Transport, *, paused: bool) -> None:
        if paused != self._reading_paused:
            self._reading_paused = paused
            if paused:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def pause_body(self) -> None:
        if not self._body_paused:
            self._body_paused = True
            self._update_reading()

    def resume_body(self) -> None:
        if self._body_paused:
            self._body_paused = False
            self._update_reading()

    def _wake_drain(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- hand-off to aiohttp ---------------------------------------------------------------------------

    def _begin_handoff(self) -> None:
        data = self._handoff
        assert data is not None
        if self._task is None:
            self._hand_over(data)
            return
        # Egress requests ahead of it are still being answered: keep its bytes (and any that follow,
        # appended by data_received) and stop reading until then.
        self._update_reading()

    def _hand_over(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        self._handoff = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._cancel_head_timer()
        self._cancel_body_timer()
        self._replay = None
        self._server.forget(self)
        self._transport = None
        self._input_done = True
        # aiohttp answers this one request and closes (see `LeanServer`); what the client pipelined behind
        # it is not given to aiohttp's parser (any egress request in it is sent again on a new connection,
        # to this server). Only a request not complete in these bytes gets the rest as it arrives.
        end = _end_of_messages(data, 1)
        if end is not None:
            data = data[:end]
        handler = _HandedOverHandler.of(self._server.aiohttp_server, complete=end is not None)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        # A backstop: however aiohttp fares with the request (a body that never ends, a handler or a build
        # of the request that fails without answering), the connection ends by this deadline.
        handler.deadline = self._loop.call_later(
            self._server.body_timeout + self._server.keepalive_timeout, _abort_unless_closed, transport,
        )
        if self._reading_paused and not self._eof:  # after EOF, aiohttp would close on reading it again
            transport.resume_reading()
        handler.data_received(data)

    # -- idle and shutdown -------------------------------------------------------------------------------

    def _check_idle(self) -> None:
        """The keep-alive limit: one timer per connection, re-armed from the last read or answer rather
        than moved on each of them (the hot path only stores a time)."""
        self._idle_timer = None
        transport = self._transport
        if transport is None:
            return
        limit = self._server.keepalive_timeout
        now = self._loop.time()
        if self._drain is not None:
            # An answer waits for the client to read it: one that has read nothing for the whole idle
            # limit is gone or stalling on purpose, and would hold the answer's memory forever. Progress
            # is seen at each check, so a slow reader that keeps reading is never cut off.
            buffered = transport.get_write_buffer_size()
            if buffered < self._drain_buffered:
                self._drain_buffered, self._drain_since = buffered, now
            if now < self._drain_since + limit:
                self._idle_timer = self._loop.call_at(self._drain_since + limit, self._check_idle)
                return
            _log.debug("http_connection_aborted", reason="answer-not-read")
            self._transport = None
            transport.abort()
            return
        if self._queue or self._in_message or self._task is not None:
            # Busy: a request's head or body has its own timer, an answer is the gateway's to give.
            self._idle_timer = self._loop.call_at(now + limit, self._check_idle)
            return
        if now < self._last_activity + limit:
            self._idle_timer = self._loop.call_at(self._last_activity + limit, self._check_idle)
            return
        self._transport = None
        _close_or_abort(transport)

    def shutdown(self) -> None:
        """Graceful stop: an idle connection closes now, a busy one after its current answer."""
        if self._transport is None:
            return
        self._closing = True
        if self._current is None:  # else its body is still arriving: keep reading it
            self._end_input()

    def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for transport in (self._transport, self._lingering):
            if transport is not None:
                transport.abort()


def _close_after_answer(server: web.Server) -> None:
    """Make every request `server` reads one that closes its connection after the answer (aiohttp then
    writes `Connection: close` and parses nothing more on it): so egress requests are always read by the
    lean server, with its limits, deadlines and refusals, never by aiohttp's on a handed-over connection."""
    make_request = server.request_factory

    def make_closing_request(
        message: RawRequestMessage, payload: StreamReader, protocol: RequestHandler, writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> BaseRequest:
        try:
            return make_request(message._replace(should_close=True), payload, protocol, writer, task)
        except Exception:
            # Nothing can answer a request that could not be built (aiohttp's task ends here): close now
            # rather than leave the connection open past every deadline.
            if protocol.transport is not None:
                protocol.transport.abort()
            raise

    server.request_factory = make_closing_request


class _HandedOverHandler(RequestHandler):
    """aiohttp's protocol for a handed-over connection, as `web.Server()` would build it, except:
    - its error answers (a head its parser refuses, a handler that raises) are value-free problem+json:
      aiohttp's own are text/plain and quote the parser's message, i.e. the offending request bytes;
    - a client that half-closes after a complete request still gets the answer (aiohttp closes at the
      FIN and drops it, while the handler, an admin write say, still runs): safe because the request is
      the only one given to it and its answer closes the connection;
    - it ends by `deadline` (set by `EgressProtocol._hand_over`) whatever happens, and cancels it when
      it ends first."""

    def __init__(self, manager: web.Server, *, complete: bool, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.complete = complete  # the whole request is in the bytes given at the hand-off
        self.deadline: asyncio.TimerHandle | None = None

    @staticmethod
    def check(server: web.Server) -> None:
        """Refuse to start on an aiohttp whose `web.Server` no longer keeps what `of` reads (private
        attributes): at start, not at the first /healthz."""
        if not hasattr(server, "_loop") or not isinstance(getattr(server, "_kwargs", None), dict):
            raise RuntimeError("this aiohttp version's web.Server lacks _loop/_kwargs, which the gateway's "
                               "hand-off of non-egress requests needs (tested with aiohttp 3.14)")

    @classmethod
    def of(cls, server: web.Server, *, complete: bool) -> _HandedOverHandler:
        # What `web.Server.__call__` does, with this class.
        return cls(server, complete=complete, loop=server._loop, **server._kwargs)

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own logs the error (gateway.logs keeps no value of it) and raises when an answer began.
        super().handle_error(request, status, exc, None)
        error: GatewayError = (
            MalformedRequest("the request is not valid HTTP/1.1") if status == 400 else InternalError("internal error")
        )
        response = problem_answer(error, request_id_from(None)).as_response()
        response.force_close()
        # aiohttp answers a request its parser refused as HTTP/1.0 (its status line says so), which
        # implies the close; said anyway, as the lean server does.
        response.headers["Connection"] = "close"
        return response

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio.Protocol's signature
        # True keeps the write side open for the answer; the handler closes after it. A request still
        # arriving is cut short: closing at once (aiohttp's way) fails its body read.
        return True if self.complete else None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        super().connection_lost(exc)


def _abort_unless_closed(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        _log.debug("http_connection_aborted", reason="handed-over-deadline")
    transport.abort()


def _close_or_abort(transport: asyncio.Transport) -> None:
    """Close once the buffered answer is sent, or abort when bytes are still unsent at this deadline: the
    client stopped reading, and `close()` alone would wait for it forever."""
    if transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()


def _head(version: str, answer: Answer, close: bool) -> bytes:
    status = answer.status
    line = _STATUS_LINES.get(status)
    lines = [f"HTTP/1.1 {status} \r\n" if line is None else line]
    for name, value in answer.headers:
        if name.lower() in _FRAMING:
            continue
        line = f"{name}: {value}\r\n"
        if find_unpassable_character(line, 0, len(line) - 2):
            raise ValueError("unsafe header")
        lines.append(line)
    if answer.content_type is not None:
        lines.append(f"Content-Type: {answer.content_type}\r\n")
    if status not in _NO_BODY_STATUS:
        lines.append(f"Content-Length: {len(answer.body)}\r\n")
    if close:
        # Said for HTTP/1.0 requests too: the status line says 1.1, whose default is to persist.
        lines.append("Connection: close\r\n")
    elif version == "1.0":
        lines.append("Connection: keep-alive\r\n")
    lines.append(_date_header())
    lines.append(_SERVER)
    lines.append("\r\n")
    return "".join(lines).encode("utf-8")


def _request_id(answer: Answer) -> str:
    for name, value in answer.headers:
        if name == "X-Request-Id":
            return value
    return request_id_from(None)


class _Counter:
    """Callbacks of a scratch parser that only counts completed messages (stopping at `target`)."""

    __slots__ = ("count", "target")

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target

    def on_message_complete(self) -> None:
        self.count += 1
        if self.count >= self.target:
            raise _Stop


def _messages_in(data: memoryview, target: int) -> int:
    counter = _Counter(target)
    with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
        httptools.HttpRequestParser(counter).feed_data(data)
    return counter.count


def _end_of_messages(data: bytes, count: int) -> int | None:
    """The offset in `data` (which starts at a message boundary) just after its `count`-th message, or
    None when it does not hold that many. llhttp completes a message on its last byte without looking
    further, so the shortest prefix holding `count` complete messages ends exactly there; a binary search
    finds it with fresh parsers (log2(len) parses of at most `len(data)` bytes: only a pipelined
    hand-off pays this, never an egress request)."""
    view = memoryview(data)
    if _messages_in(view, count) < count:
        return None
    low, high = 1, len(data)
    while low < high:
        middle = (low + high) // 2
        if _messages_in(view[:middle], count) >= count:
            high = middle
        else:
            low = middle + 1
    return low
