"""Shared encoded packets, read by every viewer at its own pace.

A ``Fanout`` is a bounded ring of the most recent packets of one stream (one codec of one
show). Publishing is O(1) whatever the number of viewers: each viewer (``Cursor``) keeps
its own position and reads the ring when it is ready. A viewer that falls further behind
than ``max_lag`` packets (a slow network, a stalled event loop slice) skips forward, to
the newest keyframe for video, so it never slows the compositor or anyone else and
nothing grows without bound.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# A joining viewer starts at the newest keyframe still in the ring if it is at most this
# old (receiving the packets since then in one short burst), instead of waiting for the
# next one. Forced keyframes come at most once a second per show, so a join otherwise
# waits up to (1 s - this): 800 ms bounds that wait at 200 ms (with 600 ms, joins in a
# crowd waited up to 400 ms and join p95 at 50 viewers sat at 470-510 ms) while the
# burst stays under ~25 frames.
JOIN_KEYFRAME_MAX_AGE_MS = 800


@dataclass(slots=True)
class Entry:
    seq: int
    packet: Any  # av.Packet
    keyframe: bool
    wall_ms: int  # wall-clock time the packet was handed to the fan-out
    payloads: list[bytes] | None = None  # RTP payloads, packetised once for everyone
    timestamp: int = 0  # RTP timestamp (codec clock) matching ``payloads``


@dataclass
class Fanout:
    """Ring of the newest packets; ``keyframes`` says whether skipping needs one."""

    capacity: int
    keyframes: bool = True
    max_lag: int | None = None
    seq: int = 0
    ring: deque[Entry] = field(init=False)
    on_need_keyframe: Callable[[], None] | None = None
    _changed: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _by_id: dict[int, Entry] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.ring = deque(maxlen=self.capacity)
        if self.max_lag is None:
            self.max_lag = max(2, self.capacity // 2)

    def publish(self, entry_packet: Any, keyframe: bool, wall_ms: int, **extra: Any) -> Entry:
        self.seq += 1
        entry = Entry(self.seq, entry_packet, keyframe, wall_ms, **extra)
        if len(self.ring) == self.ring.maxlen:
            old = self.ring[0]
            self._by_id.pop(id(old.packet), None)
        self.ring.append(entry)
        self._by_id[id(entry_packet)] = entry
        # Wake every waiting viewer at once; each reads at its own pace.
        self._changed.set()
        self._changed.clear()
        return entry

    def entry_for(self, packet: Any) -> Entry | None:
        """The ring entry of a packet still in the ring (for the shared packetiser)."""
        return self._by_id.get(id(packet))

    def latest_keyframe(self) -> Entry | None:
        for entry in reversed(self.ring):
            if entry.keyframe:
                return entry
        return None

    async def wait(self) -> None:
        await self._changed.wait()

    def cursor(
        self, join_keyframe_max_age_ms: int = JOIN_KEYFRAME_MAX_AGE_MS, now_ms: int = 0
    ) -> Cursor:
        return Cursor(self, join_keyframe_max_age_ms, now_ms)


class Cursor:
    """One viewer's position in a ``Fanout``."""

    def __init__(self, fanout: Fanout, join_keyframe_max_age_ms: int, now_ms: int) -> None:
        self.fanout = fanout
        self.next_seq: int | None = None  # None: waiting for a keyframe
        self.skipped = 0
        self.waiting_since = fanout.seq  # only a keyframe newer than this will do
        if not fanout.keyframes:
            self.next_seq = fanout.seq + 1
            return
        # Start at a recent keyframe already in the ring (a short burst beats waiting).
        kf = fanout.latest_keyframe()
        if kf is not None and now_ms - kf.wall_ms <= join_keyframe_max_age_ms:
            self.next_seq = kf.seq

    @property
    def waiting_for_keyframe(self) -> bool:
        return self.next_seq is None

    def take(self) -> Entry | None:
        """The next packet for this viewer, or None when there is nothing new yet."""
        f = self.fanout
        if not f.ring:
            return None
        oldest, newest = f.ring[0].seq, f.seq
        if self.next_seq is not None and (
            self.next_seq < oldest or newest - self.next_seq >= (f.max_lag or 0)
        ):
            # Fell behind: skip forward rather than queue.
            self.skipped += 1
            if f.keyframes:
                kf = f.latest_keyframe()
                if kf is not None and kf.seq > self.next_seq:
                    self.next_seq = kf.seq
                else:
                    self.next_seq = None
                    self.waiting_since = newest
                    if f.on_need_keyframe is not None:
                        f.on_need_keyframe()
            else:
                self.next_seq = newest
        if self.next_seq is None:
            # Waiting for a keyframe published after we started waiting.
            kf = f.latest_keyframe()
            if kf is None or kf.seq <= self.waiting_since:
                return None
            self.next_seq = kf.seq
        if self.next_seq > newest:
            return None
        entry = f.ring[self.next_seq - oldest]
        self.next_seq += 1
        return entry

    async def next(self) -> Entry:
        while True:
            entry = self.take()
            if entry is not None:
                return entry
            await self.fanout.wait()
