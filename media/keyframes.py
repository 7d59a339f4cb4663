"""When the shared encoder must produce a keyframe.

Viewers join and send PLI/FIR independently; a show with hundreds of viewers must not
turn that into hundreds of keyframes (each is several times the size of a delta frame).
Requests are coalesced and at most one forced keyframe per ``min_interval_s`` reaches the
encoder (as mediasoup does for its producers); a periodic keyframe is the fallback for
anything that got lost.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KeyframeGate:
    min_interval_s: float = 1.0
    periodic_s: float = 3.0
    last_keyframe: float = float("-inf")
    pending: bool = False
    requests: int = 0

    def request(self) -> None:
        self.pending = True
        self.requests += 1

    def should_force(self, now: float) -> bool:
        since = now - self.last_keyframe
        if since >= self.periodic_s:
            return True
        return self.pending and since >= self.min_interval_s

    def produced(self, now: float) -> None:
        """The encoder emitted a keyframe (forced or not): pending requests are served."""
        self.last_keyframe = now
        self.pending = False
