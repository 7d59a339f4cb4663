"""The latest-frame slot between the publisher's decoder and the compositor.

Holds one frame, never a queue: a newer frame replaces an older one that the compositor
has not taken yet (counted as dropped), so a compositor that falls behind catches up
instead of adding latency.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import av


@dataclass(slots=True)
class SourceFrame:
    frame: av.VideoFrame
    arrival: float  # time.monotonic() when the decoded frame reached the server
    seq: int


class LatestFrame:
    def __init__(self) -> None:
        self._frame: SourceFrame | None = None
        self._seq = 0
        self._taken_seq = 0
        self.dropped = 0
        self.last_arrival = float("-inf")
        self.fresh = asyncio.Event()

    def put(self, frame: av.VideoFrame, arrival: float | None = None) -> None:
        arrival = time.monotonic() if arrival is None else arrival
        self._seq += 1
        if self._frame is not None and self._frame.seq > self._taken_seq:
            self.dropped += 1  # replaced before the compositor used it
        self._frame = SourceFrame(frame, arrival, self._seq)
        self.last_arrival = arrival
        self.fresh.set()

    def has_new(self) -> bool:
        return self._frame is not None and self._frame.seq > self._taken_seq

    def take(self) -> SourceFrame | None:
        """The newest frame if it was not taken before, else None."""
        self.fresh.clear()
        if not self.has_new():
            return None
        assert self._frame is not None
        self._taken_seq = self._frame.seq
        return self._frame

    def clear(self) -> None:
        self._frame = None
        self._taken_seq = self._seq
        self.last_arrival = float("-inf")
        self.fresh.clear()
