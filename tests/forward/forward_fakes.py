"""Test doubles for the upstream client tests: profile stand-ins and a byte-level partner on 127.0.0.1.

`RawPartner` is a plain asyncio server, so tests can see the exact bytes the gateway sent and answer with
bytes no HTTP library would produce (malformed responses, resets, silence).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.profiles.model import Limits, Upstream, UpstreamAuth

# The real value objects of gateway.profiles; only the profile and route are stand-ins (they carry many
# fields the upstream client never reads).
Auth = UpstreamAuth


@dataclass(frozen=True)
class Profile:
    id: str
    upstream: Upstream
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Route:
    path_template: str
    method: str = "POST"
    idempotent: bool = False


OK_RESPONSE = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'

# What the raw partner does with one request: bytes to answer, None to close without answering,
# or "hang" to keep the connection open and never answer.
Responder = Callable[[bytes], "bytes | str | None"]


class RawPartner:
    """An HTTP/1.1 partner at byte level: records each request's exact bytes, answers what it is told."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.received: list[bytes] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._hangs: list[asyncio.Event] = []
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def close(self) -> None:
        for event in self._hangs:
            event.set()
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length) if length else b""
                self.received.append(head + body)
                answer = self.responder(head + body)
                if answer == "hang":
                    event = asyncio.Event()
                    self._hangs.append(event)
                    await event.wait()
                    return
                if answer is None or isinstance(answer, str):
                    return
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()
