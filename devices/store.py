"""What printing keeps in Redis, so every process (and staff) sees the same thing.

- ``printer:{name}`` hash: ``online`` (1/0), ``last_error``, ``queued``, ``printed``,
  ``checked_at`` — written by the worker that drives the printer.
- ``print:parked`` hash: stream entry id -> msgpack record of a job that failed too
  often (order, printer, error, attempts). It stays pending in the consumer group.
- ``print:done:{entry}`` set: printers that already printed their part of a job, so a
  reclaimed job never prints a part twice.
- ``print:retry:{printer}``: set by staff to make a waiting printer try again now.

The stream itself keeps only what is not yet acknowledged (``trim_acknowledged``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import msgpack

GROUP = "printers"
PARKED = "print:parked"
STATS = "print:stats"
DONE_TTL_S = 7 * 24 * 3600


def printer_key(name: str) -> str:
    return f"printer:{name}"


def done_key(entry_id: str) -> str:
    return f"print:done:{entry_id}"


def retry_key(printer: str) -> str:
    return f"print:retry:{printer}"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class PrinterStatus:
    name: str
    online: bool = False
    last_error: str | None = None
    queued: int = 0
    printed: int = 0
    checked_at: float | None = None

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "online": self.online,
            "last_error": self.last_error,
            "queued": self.queued,
            "printed": self.printed,
            "checked_at": self.checked_at,
        }


async def read_status(redis, name: str) -> PrinterStatus:
    raw = {_s(k): _s(v) for k, v in (await redis.hgetall(printer_key(name))).items()}
    return PrinterStatus(
        name=name,
        online=raw.get("online") == "1",
        last_error=raw.get("last_error") or None,
        queued=int(raw.get("queued") or 0),
        printed=int(raw.get("printed") or 0),
        checked_at=float(raw["checked_at"]) if raw.get("checked_at") else None,
    )


@dataclass
class ParkedJob:
    entry_id: str
    order_id: str
    show: str
    number: int
    printer: str
    error: str
    attempts: int
    reprint: bool = False
    parked_at: float = 0.0

    def pack(self) -> bytes:
        return msgpack.packb(asdict(self))

    @classmethod
    def unpack(cls, data: bytes) -> ParkedJob:
        return cls(**msgpack.unpackb(data))

    def public(self) -> dict[str, Any]:
        return {"id": self.entry_id, **{k: v for k, v in asdict(self).items() if k != "entry_id"}}


async def parked_jobs(redis) -> list[ParkedJob]:
    raw = await redis.hgetall(PARKED)
    jobs = [ParkedJob.unpack(v) for v in raw.values()]
    return sorted(jobs, key=lambda j: j.parked_at)


async def request_retry(redis, printer: str) -> None:
    await redis.set(retry_key(printer), str(time.time()), ex=3600)


async def job_counts(redis, streams: list[str]) -> dict[str, int]:
    """Print jobs by state for /metrics: waiting (not yet read), in_flight, parked, printed
    (``streams``: every show's print stream)."""
    counts = {"waiting": 0, "in_flight": 0, "parked": 0, "printed": 0}
    for stream in streams:
        try:
            groups = await redis.xinfo_groups(stream)
        except Exception:  # no stream yet
            groups = []
        for g in groups:
            info = {_s(k): v for k, v in g.items()}
            if _s(info.get("name")) == GROUP:
                counts["waiting"] += int(info.get("lag") or 0)
                counts["in_flight"] += int(info.get("pending") or 0)
    counts["parked"] = int(await redis.hlen(PARKED))
    counts["in_flight"] = max(0, counts["in_flight"] - counts["parked"])
    counts["printed"] = int(await redis.hget(STATS, "printed") or 0)
    return counts


def _next_id(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


async def trim_acknowledged(redis, stream: str) -> int:
    """Drop stream entries every consumer group has acknowledged; returns how many.

    Only entries older than the oldest unacknowledged one (pending in a group, parked
    jobs included) and already delivered are removed (XTRIM MINID), so a job that is
    waiting, printing or parked is never lost."""
    # Not one atomic read, and it need not be: the bound never passes the last entry
    # delivered when the groups were read, nor the oldest entry pending afterwards.
    try:
        groups = await redis.xinfo_groups(stream)
    except Exception:  # no stream yet
        return 0
    if not groups:
        return 0  # no reader yet: nothing is acknowledged
    bounds: list[str] = []
    for g in groups:
        info = {_s(k): v for k, v in g.items()}
        name = _s(info["name"])
        bounds.append(_next_id(_s(info.get("last-delivered-id") or "0-0")))
        summary = await redis.xpending(stream, name)
        if summary and summary.get("pending"):
            bounds.append(_s(summary["min"]))
    threshold = min(bounds, key=lambda i: tuple(int(x) for x in i.split("-")))
    return int(await redis.xtrim(stream, minid=threshold, approximate=False))
