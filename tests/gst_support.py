"""GStreamer's webrtcbin as a peer in the tests: tests/gst_peer.py runs under the system
python3 (where python3-gi lives), this side starts it and reads its JSON events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
HELPER = Path(__file__).with_name("gst_peer.py")


@dataclass
class GstPeer:
    """A running tests/gst_peer.py: its JSON events as they arrive, its stderr at the end."""

    proc: asyncio.subprocess.Process
    events: list[dict] = field(default_factory=list)
    stderr: str = ""
    _reader: asyncio.Task | None = None

    def first(self, event: str) -> dict | None:
        return next((e for e in self.events if e["event"] == event), None)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    async def finish(self, timeout: float = 20, *, stop: bool = True) -> None:
        """Stop the peer (SIGTERM: a publisher DELETEs its session), or with ``stop=False``
        let it end by itself; either way wait for it, then kill it after ``timeout``."""
        if stop and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader
        assert self.proc.stderr is not None
        self.stderr = (await self.proc.stderr.read()).decode(errors="replace")

    def diagnosis(self) -> str:
        """What GStreamer saw: the answer's a=setup, DTLS states, OpenSSL's own error."""
        ssl = [
            ln.split("> ", 1)[-1] for ln in self.stderr.splitlines() if "ssl error" in ln.lower()
        ]
        summary = self.first("summary") or {}
        answered = self.first("answered") or {}
        return (
            f"GStreamer peer: answer {answered.get('setup')}, DTLS states "
            f"{summary.get('dtls_states')}, OpenSSL: {ssl or 'no error'}, "
            f"errors: {summary.get('errors')}, exit {self.proc.returncode}"
        )


async def start_gst(*args: str) -> GstPeer:
    env = {**os.environ, "GST_DEBUG": "dtlsconnection:1", "GST_DEBUG_NO_COLOR": "1"}
    env.pop("PYTHONPATH", None)  # the system python3 must not import the venv's packages
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, str(HELPER), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    peer = GstPeer(proc)
    peer._reader = asyncio.create_task(peer._read())
    return peer
