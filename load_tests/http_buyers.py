"""A lean HTTP/1.1 load generator: one keep-alive connection and one cookie jar per buyer.

aiohttp's client spends about as much CPU per request as the server under test does, so
on a small machine a benchmark driven by it partly measures itself. A buyer here writes
its request in one call and reads ``Content-Length`` answers straight off the socket,
keeping the cookies the server sets (the viewer cookie), like a browser tab would.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from urllib.parse import urlsplit


class HttpError(Exception):
    """The connection failed or the answer was not HTTP/1.1 we can read."""


@dataclass
class Answer:
    status: int
    body: bytes


@dataclass(eq=False)
class Buyer(asyncio.Protocol):
    host: str
    port: int
    cookies: dict[str, str] = field(default_factory=dict)
    _transport: asyncio.Transport | None = None
    _buffer: bytearray = field(default_factory=bytearray)
    _waiting: asyncio.Future | None = None

    @classmethod
    def for_url(cls, url: str) -> Buyer:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80)

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._deliver()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._waiting and not self._waiting.done():
            self._waiting.set_exception(HttpError(f"connection lost: {exc}"))

    # --- requests ---

    async def request(self, method: str, path: str, body: object | None = None) -> Answer:
        if self._waiting is not None:
            raise RuntimeError("one request at a time per buyer")
        if self._transport is None or self._transport.is_closing():
            self._buffer.clear()
            loop = asyncio.get_running_loop()
            await loop.create_connection(lambda: self, self.host, self.port)
        payload = b"" if body is None else json.dumps(body).encode()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if self.cookies:
            head.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        if body is not None:
            head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(payload)}")
        self._waiting = asyncio.get_running_loop().create_future()
        assert self._transport is not None
        self._transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        try:
            return await self._waiting
        finally:
            self._waiting = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _deliver(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self._waiting is None or self._waiting.done():
            return
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            self._fail(f"not an HTTP answer: {lines[0]!r}")
            return
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "set-cookie":
                pair = value.strip().split(";", 1)[0]
                key, _, val = pair.partition("=")
                self.cookies[key.strip()] = val.strip()
            elif name == "transfer-encoding":
                self._fail("chunked answers are not supported by this load generator")
                return
        if len(self._buffer) < end + 4 + length:
            return  # the body is still arriving
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        self._waiting.set_result(Answer(status, body))

    def _fail(self, reason: str) -> None:
        if self._waiting and not self._waiting.done():
            self._waiting.set_exception(HttpError(reason))
        self.close()
