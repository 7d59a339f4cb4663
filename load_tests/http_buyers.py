"""A lean HTTP/1.1 load generator: one keep-alive connection and one cookie jar per buyer.

aiohttp's client spends about as much CPU per request as the server under test does, so
on a small machine a benchmark driven by it partly measures itself. A buyer here writes
its request in one call and reads ``Content-Length`` answers straight off the socket,
keeping the cookies the server sets (the viewer cookie), like a browser tab would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
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
    # A closed loop run from the protocol (``press_repeatedly``): what to send again (and
    # its bytes, encoded once per cookie change), who hears each answer, when the one in
    # flight was sent.
    _repeat: tuple[tuple, Callable[[int, float], None]] | None = None
    _repeat_data: bytes | None = None
    _sent_at: float = 0.0
    in_flight: bool = False

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
        if self.in_flight and self._repeat is not None:
            self._repeat[1](0, self._sent_at)  # counted as an error; this buyer stops
        self._repeat, self.in_flight = None, False

    # --- requests ---

    async def request(self, method: str, path: str, body: object | None = None) -> Answer:
        if self._waiting is not None:
            raise RuntimeError("one request at a time per buyer")
        if self._transport is None or self._transport.is_closing():
            self._buffer.clear()
            loop = asyncio.get_running_loop()
            await loop.create_connection(lambda: self, self.host, self.port)
        data = self._encode(method, path, body)
        self._waiting = asyncio.get_running_loop().create_future()
        assert self._transport is not None
        self._transport.write(data)
        try:
            return await self._waiting
        finally:
            self._waiting = None

    def press_repeatedly(
        self, method: str, path: str, body: bytes | None, answered: Callable[[int, float], None]
    ) -> None:
        """A closed loop without a coroutine per press: the request goes again as soon as
        its answer is in, and ``answered(status, sent_at)`` hears each (status 0: the
        connection failed). The connection must be open (one ``request`` first)."""
        if self._transport is None or self._waiting is not None or self.in_flight:
            raise RuntimeError("press_repeatedly needs an open, idle connection")
        self._repeat, self._repeat_data = ((method, path, body), answered), None
        self._send_again()

    def stop_repeating(self) -> None:
        """No new press; the one in flight still gets its answer (``in_flight``)."""
        self._repeat = None

    def _send_again(self) -> None:
        assert self._repeat is not None and self._transport is not None
        if self._repeat_data is None:
            self._repeat_data = self._encode(*self._repeat[0])
        self.in_flight, self._sent_at = True, time.perf_counter()
        self._transport.write(self._repeat_data)

    def _encode(self, method: str, path: str, body: object | None) -> bytes:
        payload = (
            body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        )
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if self.cookies:
            head.append("Cookie: " + self.cookie_header())
        if body is not None:
            head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(payload)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + payload

    def cookie_header(self) -> str:
        """The ``Cookie`` header this buyer sends (its jar, as the server set it)."""
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _deliver(self) -> None:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end])
        try:
            status = int(head[9:12])  # "HTTP/1.1 200 OK"
        except ValueError:
            self._fail(f"not an HTTP answer: {head[:40]!r}")
            return
        length = 0
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else None])
        if b"\r\ntransfer-encoding:" in lower:
            self._fail("chunked answers are not supported by this load generator")
            return
        if b"\r\nset-cookie:" in lower:
            self._keep_cookies(head.decode("latin-1"))
        if len(buffer) < end + 4 + length:
            return  # the body is still arriving
        body = bytes(buffer[end + 4 : end + 4 + length])
        del buffer[: end + 4 + length]
        if self.in_flight:
            self.in_flight = False
            if self._repeat is not None:
                self._repeat[1](status, self._sent_at)
            if self._repeat is not None and self._transport is not None:
                self._send_again()
        elif self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(Answer(status, body))

    def _keep_cookies(self, head: str) -> None:
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "set-cookie":
                key, _, val = value.strip().split(";", 1)[0].partition("=")
                if self.cookies.get(key.strip()) != val.strip():
                    self.cookies[key.strip()] = val.strip()
                    self._repeat_data = None  # it carries the old cookies

    def _fail(self, reason: str) -> None:
        if self._waiting and not self._waiting.done():
            self._waiting.set_exception(HttpError(reason))
        self.close()
