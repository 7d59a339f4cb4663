"""Preflight: is everything ready to go live? Red, amber or green per check.

The grading is pure (``grade_*``: figures in, ``Check`` out); ``collect`` gathers the
figures from Redis, the disk, the printers and (when this process holds it) the
publisher. Used by the host page (``GET /api/shows/{show}/preflight``) and by
``showroom check``.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from server.config import ShowConfig

GREEN, AMBER, RED = "green", "amber", "red"
GiB = 1024**3


@dataclass(frozen=True)
class Check:
    name: str
    level: str  # green | amber | red
    detail: str

    def public(self) -> dict:
        return asdict(self)


def overall(checks: list[Check]) -> str:
    levels = {c.level for c in checks}
    return RED if RED in levels else AMBER if AMBER in levels else GREEN


def grade_disk(free_bytes: int, path: str) -> Check:
    free = free_bytes / GiB
    if free < 1:
        return Check("disk", RED, f"Only {free:.1f} GiB free under {path}: recordings will stop.")
    if free < 5:
        return Check("disk", AMBER, f"{free:.1f} GiB free under {path}: enough for a short show.")
    return Check("disk", GREEN, f"{free:.0f} GiB free under {path}.")


def grade_clock(skew_ms: float) -> Check:
    detail = f"This machine's clock is {abs(skew_ms):.0f} ms {'ahead of' if skew_ms > 0 else 'behind'} Redis's."
    if abs(skew_ms) > 5000:
        return Check("clock", RED, detail + " Hold timers and countdowns will be wrong: sync NTP.")
    if abs(skew_ms) > 500:
        return Check("clock", AMBER, detail)
    return Check("clock", GREEN, "Clock in step with Redis.")


def grade_persistence(appendonly: str, appendfsync: str) -> Check:
    if appendonly != "yes":
        return Check(
            "redis", RED, "Redis has no append-only file: a restart loses carts and paid orders."
        )
    if appendfsync == "always":
        return Check(
            "redis", GREEN, "Redis writes every change to disk before answering (AOF always)."
        )
    if appendfsync == "everysec":
        return Check("redis", GREEN, "Redis AOF, flushed every second (a power cut can lose ~1 s).")
    return Check(
        "redis",
        AMBER,
        f"Redis AOF with appendfsync {appendfsync}: the OS decides when it is on disk.",
    )


def grade_stripe(sandbox: bool, webhook_secret: bool, public_url: str) -> Check:
    if sandbox:
        return Check("stripe", AMBER, "Sandbox: test cards only, no money is taken.")
    if not webhook_secret:
        return Check(
            "stripe",
            RED,
            "Live keys but no STRIPE_WEBHOOK_SECRET: payments would never be confirmed.",
        )
    if not public_url.startswith("https://"):
        return Check(
            "stripe",
            AMBER,
            f"Live mode, but the public URL {public_url} is not https: Stripe cannot deliver webhooks to it.",
        )
    return Check("stripe", GREEN, f"Live mode; webhooks go to {public_url}/webhooks/stripe.")


def grade_publisher(live: bool, fps: float | None, kbps: float | None, show: ShowConfig) -> Check:
    if not live:
        return Check("publisher", AMBER, "No publisher yet: viewers see the slate.")
    if fps is None:
        return Check("publisher", GREEN, "Live (the publisher is on another worker).")
    detail = f"Live at {fps:.0f} fps, {kbps:.0f} kbps in."
    if fps < 0.6 * show.video.fps:
        return Check(
            "publisher",
            RED,
            detail + f" The show runs at {show.video.fps} fps: check the camera and uplink.",
        )
    if fps < 0.9 * show.video.fps or (kbps is not None and kbps < 0.3 * show.video.bitrate_kbps):
        return Check("publisher", AMBER, detail)
    return Check("publisher", GREEN, detail)


def grade_printer(name: str, online: bool | None, error: str | None) -> Check:
    if online:
        return Check(f"printer {name}", GREEN, "Online.")
    if online is None:
        return Check(f"printer {name}", AMBER, "Not heard from yet (no label printed since start).")
    return Check(f"printer {name}", RED, f"Offline: {error or 'no answer'}.")


async def redis_figures(redis) -> tuple[str, str, float]:
    """(appendonly, appendfsync, clock skew in ms) from Redis."""
    conf = await redis.config_get("append*")

    def text(v) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    conf = {text(k): text(v) for k, v in conf.items()}
    before = time.time()
    secs, micros = await redis.time()
    after = time.time()
    skew_ms = ((before + after) / 2 - (int(secs) + int(micros) / 1e6)) * 1000
    return conf.get("appendonly", "no"), conf.get("appendfsync", ""), skew_ms


async def publisher_figures(publisher, seconds: float = 1.0) -> tuple[float, float]:
    """Frames per second and kbps arriving from this process's publisher."""

    async def inbound_bytes() -> int:
        stats = await publisher.pc.getStats()
        return sum(
            getattr(s, "bytesReceived", 0) for s in stats.values() if s.type == "inbound-rtp"
        )

    f0, b0, t0 = publisher.frames, await inbound_bytes(), time.monotonic()
    await asyncio.sleep(seconds)
    f1, b1, t1 = publisher.frames, await inbound_bytes(), time.monotonic()
    return (f1 - f0) / (t1 - t0), (b1 - b0) * 8 / 1000 / (t1 - t0)


def disk_free(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free
