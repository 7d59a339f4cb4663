"""Embedded services: a real ``redis-server`` (AOF on) and the localstripe sandbox.

They are child processes of ``showroom serve``/``demo`` and of the test-suite; never
in-process imitations.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("showroom.embedded")
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process exited with code {proc.returncode} before listening on {port}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class ManagedProcess:
    """A child process that is stopped (SIGTERM, then SIGKILL) with its owner."""

    argv: list[str]
    name: str
    cwd: Path | None = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = field(default=None, init=False)
    log_path: Path | None = None
    restart_on_exit = False  # restarted by its owner (cli.Services.watch) if it dies
    _stopping = False

    def start(self) -> None:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        # Own session: a Ctrl+C in the terminal reaches only us, and we stop the services
        # in order. The death signal makes a SIGKILLed parent take its services with it
        # (it fires when the forking *thread* ends, so only when forked from the main one).
        main = threading.current_thread() is threading.main_thread()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if main else None,  # noqa: PLW1509
        )

    def died(self) -> bool:
        """It exited without being told to stop."""
        return bool(self.proc) and self.proc.poll() is not None and not self._stopping

    def respawn(self) -> None:
        """Start the same command again (same port and data); see ``wait_ready``."""
        ManagedProcess.start(self)

    async def wait_ready(self, timeout: float = 10) -> None:
        """Until the restarted service accepts connections (without blocking the loop)."""
        await asyncio.to_thread(self._wait_ready, timeout)

    def _wait_ready(self, timeout: float) -> None:
        raise NotImplementedError

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def stop(self, timeout: float = 10) -> None:
        self._stopping = True
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if not path:
        raise RuntimeError(
            "redis-server not found: install it (Debian: apt-get install redis-server) "
            "or pass --redis URL / SHOWROOM_REDIS_URL"
        )
    return path


@dataclass
class EmbeddedRedis(ManagedProcess):
    """``redis-server`` with its data (AOF) under ``data_dir``; survives restarts there.

    Loopback only, with a password generated for this run (other local users and
    browsers' DNS-rebinding tricks cannot talk to it); the password is in ``url``."""

    data_dir: Path = Path("var/redis")
    port: int = 0
    appendfsync: str = "everysec"
    password: str = ""
    cluster_port: int = 0  # a Redis Cluster node's bus port (0: not a cluster node)

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        appendfsync: str = "everysec",
        *,
        password: str | None = None,
        cluster: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.password = password or secrets.token_urlsafe(32)
        # The bus port named too: port + 10000 (the default) may be taken or > 65535.
        self.cluster_port = free_port() if cluster else 0
        self.data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(argv=[], name=f"redis-cluster-{self.port}" if cluster else "redis")
        self.log_path = self.data_dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def _auth_conf(self) -> Path:
        """The password in a file only we can read, not on the command line (ps shows it)."""
        path = self.data_dir / "auth.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"requirepass {self.password}\n")
            if self.cluster_port:  # the nodes talk to each other with it too
                out.write(f"masterauth {self.password}\n")
        return path

    restart_on_exit = True

    def _wait_ready(self, timeout: float) -> None:
        wait_for_port("127.0.0.1", self.port, timeout, self.proc)

    def start(self, timeout: float = 10) -> None:
        self._stopping = False
        self.argv = [
            redis_server_binary(),
            str(self._auth_conf()),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]
        if self.cluster_port:
            self.argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            self.argv += ["--cluster-port", str(self.cluster_port)]
        super().start()
        wait_for_port("127.0.0.1", self.port, timeout, self.proc)
        log.info(
            "embedded redis-server on 127.0.0.1:%d (data in %s, appendfsync %s)",
            self.port,
            self.data_dir,
            self.appendfsync,
        )


@dataclass
class EmbeddedStripe(ManagedProcess):
    """localstripe: a stateful Stripe API server that also sends signed webhooks; it
    listens on 127.0.0.1 only (``server.localstripe_loopback``)."""

    port: int = 0

    def __init__(self, port: int = 0, log_dir: Path | None = None) -> None:
        self.port = port or free_port()
        super().__init__(argv=[], name="localstripe")
        if log_dir:
            log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = log_dir / "localstripe.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> None:
        # Our wrapper, not localstripe's own entry point: that one listens on every
        # interface, this one on 127.0.0.1 only.
        self.argv = [sys.executable, "-m", "server.localstripe_loopback"]
        self.argv += ["--port", str(self.port), "--from-scratch"]
        root = str(Path(__file__).resolve().parents[1])
        path = os.environ.get("PYTHONPATH")
        self.env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}
        super().start()
        wait_for_port("127.0.0.1", self.port, timeout, self.proc)
        log.info("embedded Stripe sandbox (localstripe) on %s", self.url)


@dataclass
class EmbeddedRedisCluster:
    """A real Redis Cluster of ``masters`` ``redis-server --cluster-enabled yes``
    processes on loopback ports, joined by ``redis-cli --cluster create`` (no replicas).
    For the test-suite and the benchmarks; ``url`` is a ``redis+cluster://`` URL."""

    data_dir: Path
    masters: int = 3
    nodes: list[EmbeddedRedis] = field(default_factory=list)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        return f"redis+cluster://:{self.password}@127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout: float = 30) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        for _ in range(self.masters):
            port = free_port()
            node = EmbeddedRedis(
                self.data_dir / f"node-{port}", port, password=self.password, cluster=True
            )
            node.start(timeout)
            self.nodes.append(node)
        cli = shutil.which("redis-cli")
        if not cli:
            raise RuntimeError("redis-cli not found (Debian: apt-get install redis-tools)")
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            env={**os.environ, "REDISCLI_AUTH": self.password},
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while not all(self._state_ok(p) for p in self.ports):
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        log.info("embedded Redis Cluster on 127.0.0.1 ports %s", self.ports)

    def _state_ok(self, port: int) -> bool:
        out = subprocess.run(
            [shutil.which("redis-cli") or "redis-cli", "-p", str(port), "cluster", "info"],
            env={**os.environ, "REDISCLI_AUTH": self.password},
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
        return "cluster_state:ok" in out

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
