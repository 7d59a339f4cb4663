"""``--udp-ports LO-HI``: every UDP socket the server's ICE opens inside one range, so a
firewall can open exactly that range.

aioice chooses no port itself: the kernel does (port 0). What this relies on, in aioice
(pinned: ``AIOICE_VERSION``; ``aioice_problems`` checks it and a test guards it):

- ``aioice.ice.Connection.get_component_candidates`` binds each host candidate's socket
  with ``asyncio.get_running_loop().create_datagram_endpoint(factory,
  local_addr=(address, 0))``;
- ``aioice.turn.create_turn_endpoint`` opens a UDP TURN client socket with
  ``create_datagram_endpoint(factory, remote_addr=server_addr)`` (no local address).

``PortRangeBinding.install`` gives those two modules an ``asyncio`` whose
``get_running_loop()`` returns the running loop behind a thin proxy: such calls get a
free port from the range; everything else goes straight to the loop.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import random
import types
from dataclasses import dataclass
from typing import Any

import aioice
import aioice.ice
import aioice.turn

log = logging.getLogger("showroom.media.udp_ports")

AIOICE_VERSION = "0.13.0"


@dataclass(frozen=True)
class PortRange:
    lo: int
    hi: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """``"40000-40999"`` -> PortRange; ValueError with a clear message otherwise."""
        lo_text, sep, hi_text = text.partition("-")
        if not sep or not lo_text.strip().isdigit() or not hi_text.strip().isdigit():
            raise ValueError(f"expected LO-HI (e.g. 40000-40999), got {text!r}")
        lo, hi = int(lo_text), int(hi_text)
        if not 1024 <= lo <= hi <= 65535:
            raise ValueError(f"need 1024 <= LO <= HI <= 65535, got {text!r}")
        return cls(lo, hi)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.lo <= port <= self.hi

    def __str__(self) -> str:
        return f"{self.lo}-{self.hi}"


def aioice_problems() -> list[str]:
    """What no longer matches the aioice internals this module relies on (empty: fine)."""
    problems = []
    if aioice.__version__ != AIOICE_VERSION:
        problems.append(f"aioice {aioice.__version__} is not the pinned {AIOICE_VERSION}")
    host = inspect.getsource(aioice.ice.Connection.get_component_candidates)
    if "asyncio.get_running_loop()" not in host or "local_addr=(address, 0)" not in host:
        problems.append("aioice.ice no longer binds host candidates with local_addr=(address, 0)")
    relay = inspect.getsource(aioice.turn.create_turn_endpoint)
    if "asyncio.get_running_loop()" not in relay or "remote_addr=server_addr" not in relay:
        problems.append("aioice.turn no longer opens its UDP socket with remote_addr only")
    return problems


class _RangeLoop:
    """The running loop, except that UDP endpoints without a chosen port get one from
    the range (tried from a random start, skipping ports in use)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ports: PortRange) -> None:
        self._loop = loop
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(self, factory, local_addr=None, remote_addr=None, **kw):
        if local_addr is not None and local_addr[1] == 0:
            host = local_addr[0]
        elif local_addr is None and remote_addr is not None and "sock" not in kw:
            host = "::" if ":" in str(remote_addr[0]) else "0.0.0.0"
        else:
            return await self._loop.create_datagram_endpoint(
                factory, local_addr=local_addr, remote_addr=remote_addr, **kw
            )
        lo, hi = self._ports.lo, self._ports.hi
        start = random.randint(lo, hi)
        for port in [*range(start, hi + 1), *range(lo, start)]:
            try:
                return await self._loop.create_datagram_endpoint(
                    factory, local_addr=(host, port), remote_addr=remote_addr, **kw
                )
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        log.warning("no free UDP port in --udp-ports %s for %s", self._ports, host)
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {self._ports}")


class _AsyncioInRange(types.ModuleType):
    """``asyncio`` for aioice's modules, with ``get_running_loop`` wrapped."""

    def __init__(self, ports: PortRange) -> None:
        super().__init__("asyncio")
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def get_running_loop(self) -> _RangeLoop:
        return _RangeLoop(asyncio.get_running_loop(), self._ports)


class PortRangeBinding:
    """Installed for the life of a server (``install``/``uninstall``), process-wide."""

    def __init__(self, ports: PortRange) -> None:
        self.ports = ports

    def install(self) -> None:
        if problems := aioice_problems():
            raise RuntimeError("--udp-ports cannot be honoured: " + "; ".join(problems))
        shim = _AsyncioInRange(self.ports)
        aioice.ice.asyncio = shim  # type: ignore[attr-defined]
        aioice.turn.asyncio = shim  # type: ignore[attr-defined]

    def uninstall(self) -> None:
        aioice.ice.asyncio = asyncio  # type: ignore[attr-defined]
        aioice.turn.asyncio = asyncio  # type: ignore[attr-defined]
