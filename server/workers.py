"""``serve --workers N``: the parent process that keeps N worker processes running.

Process model. Every worker binds the public port itself with SO_REUSEPORT and the kernel
spreads new connections over them; the parent accepts nothing. Chosen over one accepting
parent because the parent would then be a hop (and a single event loop) in front of
every request: a flash drop is thousands of short HTTP requests, and each worker should
take its share straight from the kernel. What a shared port does not give, the workers
arrange between themselves (``server.cluster``): PATCH/DELETE of a session another
worker holds is sent on to it over its Unix socket, and a show's encoded packets are
relayed from its origin worker to the others (``media.relay``). Commerce state, live
events, presence and viewer slots are in Redis already.

The parent starts the embedded services once (Redis, the Stripe sandbox), then the
workers (``server.cli serve ... --worker-index i --run-dir D``); prints the usual
``showroom listening on`` line once every worker listens; restarts a worker that dies
(with backoff if it keeps dying); and on SIGINT/SIGTERM sends SIGTERM to each worker,
which drains as a single ``serve`` does, before it stops the embedded services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time

log = logging.getLogger("showroom.workers")

READY = "showroom worker {index} listening on"
STOP_TIMEOUT_S = 30.0


def worker_count(value: str) -> int:
    """``--workers``: a number, or ``auto`` (one per core this process may use)."""
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover (not Linux)
            return max(1, os.cpu_count() or 1)
    n = int(value)
    if n < 1:
        raise ValueError("--workers must be at least 1")
    return n


class Supervisor:
    def __init__(self, argv: list[str], n: int, url: str, redis_url: str, env: dict) -> None:
        self.argv = argv
        self.n = n
        self.url = url
        self.redis_url = redis_url
        self.env = env
        self.run_dir = tempfile.mkdtemp(prefix="showroom-")
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.ready: set[int] = set()
        self.restarts = 0
        self.stopping = False
        self._all_ready = asyncio.Event()

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        args = [*self.argv, "--workers", "1", "--worker-index", str(index)]
        args += ["--run-dir", self.run_dir]
        # The Redis URL (it may carry the embedded Redis's password) goes in the
        # environment, not on a command line every local user can read.
        env = {**self.env, "SHOWROOM_REDIS_URL": self.redis_url}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server.cli",
            *args,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        self.procs[index] = proc
        asyncio.get_running_loop().create_task(self._echo(index, proc))
        return proc

    async def _echo(self, index: int, proc: asyncio.subprocess.Process) -> None:
        """The worker's output on ours; notes when it listens."""
        assert proc.stdout is not None
        ready = READY.format(index=index)
        async for raw in proc.stdout:
            line = raw.decode(errors="replace")
            sys.stdout.write(line)
            sys.stdout.flush()
            if ready in line:
                self.ready.add(index)
                if len(self.ready) == self.n:
                    self._all_ready.set()

    async def _keep(self, index: int) -> None:
        """Run worker ``index`` until we stop, restarting it when it dies."""
        backoff = 0.2
        while not self.stopping:
            started = time.monotonic()
            proc = await self._spawn(index)
            code = await proc.wait()
            await asyncio.sleep(0.2)  # a Ctrl-C reaches us and the workers together
            if self.stopping:
                return
            self.restarts += 1
            backoff = 0.2 if time.monotonic() - started > 10 else min(5.0, backoff * 2)
            log.warning("worker %d exited with %s; restarting in %.1fs", index, code, backoff)
            await asyncio.sleep(backoff)

    async def run(self, stop: asyncio.Event) -> int:
        keepers = [asyncio.create_task(self._keep(i)) for i in range(self.n)]
        try:
            waiter = asyncio.create_task(self._all_ready.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if self._all_ready.is_set():
                print(f"showroom listening on {self.url} ({self.n} workers)", flush=True)
            await stopper
            log.info("shutting down %d workers", self.n)
        finally:
            self.stopping = True
            await self._stop_all()
            for keeper in keepers:
                keeper.cancel()
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return 0

    async def _stop_all(self) -> None:
        live = [p for p in self.procs.values() if p.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), STOP_TIMEOUT_S)
        except TimeoutError:
            for proc in live:
                if proc.returncode is None:
                    log.warning("worker pid %d did not stop; killing it", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
