"""Bounded connections: caps per client address, read deadlines, event streams per address.

aiohttp alone accepts every connection, waits an hour for a request head and forever
for a body, so one client can hold any number of sockets (slowloris) and event streams.
Here:

- ``GuardedSite`` admits at most ``per_ip`` concurrent connections from one address and
  ``total`` in all; one over the cap is answered 429 and closed at once.
- A request head must arrive within ``header_timeout_s`` of the connection opening or
  of the previous answer (aiohttp's keep-alive timer, which also ends idle keep-alive).
- ``guard`` (a middleware) closes a connection whose body is not in after
  ``body_timeout_s``, and answers 429 to an event stream beyond ``streams_per_ip``.

Benchmarks and tests that open thousands of connections from 127.0.0.1 raise the caps
(``serve --max-connections-per-ip``, ``--max-streams-per-ip``; 0 = no cap).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections import Counter
from dataclasses import dataclass

from aiohttp import web

from server import keys
from server.errors import error_response

log = logging.getLogger("showroom.http")

# Long-lived answers, counted per address (the route's canonical path).
STREAM_ROUTES = frozenset({"/api/shows/{show}/events"})


def _default_total() -> int:
    """Leave file descriptors for Redis, media sockets and files: 80% of the limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(256, int(soft * 0.8)) if soft != resource.RLIM_INFINITY else 50_000


@dataclass(frozen=True)
class ConnectionLimits:
    per_ip: int = 512  # concurrent connections from one address (a venue shares one)
    total: int = 0  # all concurrent connections (0: from the file descriptor limit)
    streams_per_ip: int = 256  # concurrent event streams from one address
    header_timeout_s: float = 15.0  # request head, or idle keep-alive
    body_timeout_s: float = 30.0  # whole request body

    @property
    def total_cap(self) -> int:
        return self.total or _default_total()


def _too_many(detail: str) -> bytes:
    body = json.dumps({"error": "rate_limited", "detail": detail}).encode()
    head = (
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
        f"Retry-After: 5\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


REFUSED = _too_many("Too many connections from your address; try again shortly.")


class ConnectionGuard:
    """Counts open connections per address; refuses those over the caps."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.total_cap = limits.total_cap
        self.by_ip: Counter[str] = Counter()
        self.open = 0
        self.refused = 0
        self._logged_at = 0.0
        self._since_log = 0

    def admit(self, ip: str) -> bool:
        per_ip = self.limits.per_ip
        if self.open >= self.total_cap or (per_ip and self.by_ip[ip] >= per_ip):
            self.refused += 1
            self._log_refusal(ip)
            return False
        self.open += 1
        self.by_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.open -= 1
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]

    def _log_refusal(self, ip: str) -> None:
        """One line every 10 s during a flood, not one per refused socket."""
        self._since_log += 1
        now = time.monotonic()
        if now - self._logged_at >= 10:
            log.warning(
                "refused %d connection(s) over the caps (latest from %s; %d open)",
                self._since_log,
                ip,
                self.open,
            )
            self._logged_at, self._since_log = now, 0

    def protocol(self, factory):
        return lambda: _GuardedProtocol(factory(), self)


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for an admitted connection; a refused one never reaches it."""

    __slots__ = ("_inner", "_guard", "_ip")

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner, self._guard, self._ip = inner, guard, None

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else "unknown"
        if not self._guard.admit(ip):
            transport.write(REFUSED)
            transport.close()
            return
        self._ip = ip
        self._inner.connection_made(transport)

    def connection_lost(self, exc) -> None:
        if self._ip is not None:
            self._guard.release(self._ip)
            self._ip = None
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._ip is not None:
            self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received() if self._ip is not None else None

    def pause_writing(self) -> None:
        if self._ip is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._ip is not None:
            self._inner.resume_writing()


class GuardedSite(web.TCPSite):
    """A TCP site whose connections pass through a ``ConnectionGuard``."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, **kwargs
    ) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        assert self._runner.server is not None
        self._server = await loop.create_server(
            self.guard.protocol(self._runner.server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )


# --- per request ------------------------------------------------------------------

STREAMS: web.AppKey[Counter[str]] = web.AppKey("streams_by_ip")


def _cut_if_body_missing(request: web.Request) -> None:
    if not request.content.is_eof() and request.transport is not None:
        log.info("closing %s: request body not received in time", request.remote)
        request.transport.close()


@web.middleware
async def guard(request: web.Request, handler):
    limits: ConnectionLimits = request.app[keys.SETTINGS].connections
    resource_ = request.match_info.route.resource
    if resource_ is not None and resource_.canonical in STREAM_ROUTES and limits.streams_per_ip:
        streams = request.app[STREAMS]
        ip = request.remote or "unknown"
        if streams[ip] >= limits.streams_per_ip:
            return error_response(
                429,
                "rate_limited",
                "Too many live event streams from your address.",
                {"Retry-After": "5"},
            )
        streams[ip] += 1
        try:
            return await handler(request)
        finally:
            streams[ip] -= 1
            if streams[ip] <= 0:
                del streams[ip]
    if request.body_exists and limits.body_timeout_s:
        timer = asyncio.get_running_loop().call_later(
            limits.body_timeout_s, _cut_if_body_missing, request
        )
        try:
            return await handler(request)
        finally:
            timer.cancel()
    return await handler(request)


def setup(app: web.Application) -> None:
    app[STREAMS] = Counter()
