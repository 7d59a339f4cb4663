"""One worker of ``serve --workers N``: its place among the others on the same machine.

- **Identity.** Worker ``i`` listens on the shared TCP port (SO_REUSEPORT) and on two Unix
  sockets in the run folder the parent made: ``w{i}.http.sock`` (the same app, for
  requests other workers send on) and ``w{i}.relay.sock`` (encoded packets, see
  ``media.relay``). Its session ids start with ``w{i}.``; every response carries
  ``X-Showroom-Worker: i``.
- **Sessions held elsewhere.** A WHIP/WHEP PATCH or DELETE whose session id names another
  worker is sent on to that worker's HTTP socket and its answer returned (a forwarded
  response also carries ``X-Showroom-Forwarded-To``).
- **The origin** of a show is the worker holding the Redis lease ``show:{id}:origin``
  (value ``"{i}|{pid}"``, ``ORIGIN_TTL_MS``, renewed every ``RENEW_S``): only it composes
  and encodes. A publish to another worker first asks the holder to step down (it stops
  encoding and closes its publisher, then releases the lease), or takes the lease over
  when the holder does not answer (dead); so two encoders never run for one show. With no
  publisher anywhere, the first worker whose viewers need packets takes the free lease
  and composes the slate. A worker that loses its lease (it could not renew) steps down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from pathlib import Path

import aiohttp
from aiohttp import web

from media import tasks
from media.relay import RelayClient, RelayServer
from media.sdp import MAX_SDP_BYTES
from server import keys
from server.errors import ApiError, not_found, read_body

log = logging.getLogger("showroom.workers")

ORIGIN_TTL_MS = 3000
RENEW_S = 0.5
FORWARDED = "X-Showroom-Forwarded"
WORKER_HEADER = "X-Showroom-Worker"
SESSION = re.compile(r"^w(\d+)\.")
_HOP_BY_HOP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}

# KEYS: lease; ARGV: expected holder ('' = none), new holder, ttl ms -> 1 when set
_CAS_SET = """
local v = redis.call('GET', KEYS[1])
if (not v and ARGV[1] == '') or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
# KEYS: lease; ARGV: holder, ttl ms (0 = delete) -> 1 when the holder still had it
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) == 0 then redis.call('DEL', KEYS[1]) else
  redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


def lease_key(show_id: str) -> str:
    return f"show:{show_id}:origin"


def http_socket(run_dir: Path, index: int) -> Path:
    return run_dir / f"w{index}.http.sock"


def relay_socket(run_dir: Path, index: int) -> Path:
    return run_dir / f"w{index}.relay.sock"


def session_owner(session_id: str) -> int | None:
    m = SESSION.match(session_id)
    return int(m.group(1)) if m else None


def _s(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class Cluster:
    def __init__(self, app: web.Application, index: int, run_dir: Path) -> None:
        self.app = app
        self.index = index
        self.run_dir = run_dir
        self.me = f"{index}|{os.getpid()}"
        redis = app[keys.REDIS]
        self.redis = redis
        self._cas_set = redis.register_script(_CAS_SET)
        self._renew = redis.register_script(_RENEW)
        self.runtimes = app[keys.EXTRA]["media"]
        self.relay = RelayServer(self.runtimes, str(relay_socket(run_dir, index)))
        self.clients: dict[str, RelayClient] = {}
        self._keeper: asyncio.Task | None = None
        self._locks: dict[str, asyncio.Lock] = {}

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        for show_id, runtime in self.runtimes.items():
            runtime.set_origin(False)
            runtime.badge_counts_local_viewers = False  # the total comes as a live event
            holder = _s(await self.redis.get(lease_key(show_id)))
            if holder and holder.split("|")[0] == str(self.index):
                # Left by this worker's previous life: nobody encodes under it now.
                await self._renew(keys=[lease_key(show_id)], args=[holder, 0])
            client = RelayClient(
                runtime,
                lambda sid=show_id: self.locate(sid),
                lambda holder, sid=show_id: self.orphan(sid, holder),
            )
            self.clients[show_id] = client
            client.start()
        await self.relay.start()
        self._keeper = asyncio.create_task(self._keep(), name="origin-leases")

    async def stop(self) -> None:
        if self._keeper is not None:
            await tasks.stop(self._keeper)
        for client in self.clients.values():
            await client.stop()
        await self.relay.stop()
        for show_id, runtime in self.runtimes.items():
            if runtime.origin:
                runtime.set_origin(False)
                with contextlib.suppress(Exception):
                    await self._renew(keys=[lease_key(show_id)], args=[self.me, 0])

    # --- the origin lease --------------------------------------------------------------
    async def locate(self, show_id: str) -> tuple[str, str] | None:
        holder = _s(await self.redis.get(lease_key(show_id)))
        if not holder:
            return None
        index = int(holder.split("|")[0])
        return holder, str(relay_socket(self.run_dir, index))

    async def _take(self, show_id: str, expected: str | None) -> bool:
        taken = await self._cas_set(
            keys=[lease_key(show_id)], args=[expected or "", self.me, ORIGIN_TTL_MS]
        )
        if taken:
            log.info("worker %s is now the origin of %s", self.index, show_id)
            self.runtimes[show_id].set_origin(True)
        return bool(taken)

    async def orphan(self, show_id: str, holder: str | None) -> None:
        """Viewers here need packets and no origin answers: compose here (the slate until
        a publisher comes)."""
        if holder is not None:
            log.warning("show %s: origin worker %s does not answer; taking over", show_id, holder)
        async with self._lock(show_id):
            if not self.runtimes[show_id].origin:
                await self._take(show_id, holder)

    async def claim(self, show_id: str, publisher) -> None:
        """A publisher arrived here: become the origin (the old one steps down first) and
        make ``publisher`` the show's, under the lock a step-down request also takes."""
        runtime = self.runtimes[show_id]
        async with self._lock(show_id):
            for _ in range(10):
                if await self._become_origin(show_id):
                    await runtime.set_publisher(publisher)
                    return
                await asyncio.sleep(0.05)
        raise ApiError(
            503, "unavailable", "Could not move the show here; try again.", {"Retry-After": "1"}
        )

    async def _become_origin(self, show_id: str) -> bool:
        located = await self.locate(show_id)
        if located is None:
            return await self._take(show_id, None)
        holder, _path = located
        if holder == self.me:
            self.runtimes[show_id].set_origin(True)
            return True
        if await self._ask_release(show_id, holder):
            return await self._take(show_id, None)
        return await self._take(show_id, holder)  # it does not answer: it is gone

    async def step_down(self, show_id: str) -> None:
        runtime = self.runtimes[show_id]
        if runtime.origin:
            log.info("worker %s steps down as origin of %s", self.index, show_id)
        runtime.set_origin(False)
        publisher = runtime.publisher
        if publisher is not None:
            await publisher.close()  # a new publish elsewhere replaces it
        self.clients[show_id].wake()

    async def _ask_release(self, show_id: str, holder: str) -> bool:
        """Ask the holding worker to step down; False if it does not answer."""
        index = int(holder.split("|")[0])
        try:
            async with self._unix_session(index) as http:
                async with http.post(
                    f"http://worker/internal/origin/{show_id}/release",
                    timeout=aiohttp.ClientTimeout(total=2),
                ) as r:
                    return r.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            for show_id, runtime in self.runtimes.items():
                if not runtime.origin:
                    continue
                try:
                    held = await self._renew(
                        keys=[lease_key(show_id)], args=[self.me, ORIGIN_TTL_MS]
                    )
                except Exception as exc:
                    log.warning("origin lease of %s: %s", show_id, exc)
                    continue
                if not held:
                    async with self._lock(show_id):
                        await self.step_down(show_id)

    def _lock(self, show_id: str) -> asyncio.Lock:
        return self._locks.setdefault(show_id, asyncio.Lock())

    # --- requests for sessions held by other workers -----------------------------------
    def _unix_session(self, index: int) -> aiohttp.ClientSession:
        # A connection per request keeps this simple: these requests are rare (trickle
        # PATCH, DELETE, an origin moving) and a Unix-socket connect costs microseconds.
        connector = aiohttp.UnixConnector(path=str(http_socket(self.run_dir, index)))
        return aiohttp.ClientSession(connector=connector)

    async def forward(self, request: web.Request, index: int) -> web.StreamResponse:
        body = await read_body(request, MAX_SDP_BYTES) if request.can_read_body else b""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers[FORWARDED] = "1"
        try:
            async with self._unix_session(index) as http:
                async with http.request(
                    request.method,
                    f"http://worker{request.path_qs}",
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as r:
                    payload = await r.read()
                    out = {
                        k: v
                        for k, v in r.headers.items()
                        if k.lower() not in _HOP_BY_HOP and k != WORKER_HEADER
                    }
                    out["X-Showroom-Forwarded-To"] = str(index)
                    return web.Response(status=r.status, body=payload, headers=out)
        except (aiohttp.ClientConnectionError, FileNotFoundError):
            raise not_found("No such session (its worker is gone).") from None


def cluster(app: web.Application) -> Cluster | None:
    return app[keys.EXTRA].get("cluster")


async def maybe_forward(request: web.Request) -> web.StreamResponse | None:
    """The answer of the worker holding this request's session, when it is another one."""
    c = cluster(request.app)
    if c is None or request.headers.get(FORWARDED):
        return None  # sent on by another worker: handled here (or 404)
    owner = session_owner(request.match_info.get("session", ""))
    if owner is None or owner == c.index:
        return None
    return await c.forward(request, owner)


def _from_unix(request: web.Request) -> bool:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return sock is not None and sock.family == socket.AF_UNIX


async def release_origin(request: web.Request) -> web.Response:
    """Another worker has a new publisher for this show: stop encoding it here."""
    c = cluster(request.app)
    if c is None or not _from_unix(request):
        raise not_found("Not found.")
    show_id = request.match_info["show"]
    if show_id not in c.runtimes:
        raise not_found("No such show.")
    async with c._lock(show_id):
        await c.step_down(show_id)
        released = await c._renew(keys=[lease_key(show_id)], args=[c.me, 0])
    return web.json_response({"released": bool(released)})


async def _worker_header(request: web.Request, response: web.StreamResponse) -> None:
    c = cluster(request.app)
    if c is not None:
        response.headers[WORKER_HEADER] = str(c.index)


def setup(app: web.Application) -> None:
    settings = app[keys.SETTINGS]
    if settings.worker_index is None:
        return
    app[keys.EXTRA]["session_prefix"] = f"w{settings.worker_index}."
    app.router.add_post("/internal/origin/{show}/release", release_origin)
    app.on_response_prepare.append(_worker_header)

    async def cluster_ctx(app: web.Application):
        c = Cluster(app, settings.worker_index, Path(settings.run_dir))
        app[keys.EXTRA]["cluster"] = c
        await c.start()
        yield
        await c.stop()

    app.cleanup_ctx.append(cluster_ctx)
