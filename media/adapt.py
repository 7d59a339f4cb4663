"""Each lean viewer's rung, from its receiver's feedback (the shell of media/ladder.py).

Ten times a second, per video viewer: the bitrate it is being sent, its receiver's REMB
estimate, the loss of its latest receiver report and the packets it has NACKed go into
its ``RungChooser``; the
decision sets the viewer's probe padding, or moves it to another rung's broadcast at that
rung's next keyframe (asked of the rung's coalescing gate, as a join does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from media.ladder import RungChooser, Signals

if TYPE_CHECKING:
    from media.lean import Broadcast, LeanSender
    from media.runtime import ShowRuntime

log = logging.getLogger("showroom.media.adapt")

STEP_S = 0.1
RATE_WINDOW_S = 1.0


@dataclass
class ViewerRate:
    sender: LeanSender
    codec: str
    chooser: RungChooser
    rung: int = 0
    switches: int = 0
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))
    on_rung: dict[int, float] = field(default_factory=dict)  # seconds spent on each rung
    _since: float = field(default_factory=time.monotonic)

    def sent_bps(self, now: float) -> float:
        """Media bitrate sent to this viewer over about the last second."""
        self.samples.append((now, self.sender.octets))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()
        (t0, o0), (t1, o1) = self.samples[0], self.samples[-1]
        return (o1 - o0) * 8 / (t1 - t0) if t1 > t0 else 0.0

    def time_on_rungs(self, now: float) -> dict[int, float]:
        out = dict(self.on_rung)
        out[self.rung] = out.get(self.rung, 0.0) + now - self._since
        return out

    def moved(self, rung: int, now: float) -> None:
        self.on_rung[self.rung] = self.on_rung.get(self.rung, 0.0) + now - self._since
        self._since = now
        self.rung = rung
        self.switches += 1


class Adapter:
    """The rung choice of every lean video viewer of one show."""

    def __init__(self, runtime: ShowRuntime, on_change: Callable[[], None]) -> None:
        self.runtime = runtime
        self.on_change = on_change
        self.viewers: dict[int, ViewerRate] = {}  # id(sender) -> its rate state
        self._task: asyncio.Task | None = None

    def add(self, sender: LeanSender, codec: str) -> ViewerRate:
        bitrates = [r.bitrate_bps for r in self.runtime.ladder]
        rate = self.viewers[id(sender)] = ViewerRate(sender, codec, RungChooser(bitrates))
        sender.on_switched = lambda broadcast: self._switched(rate, broadcast)
        if len(bitrates) > 1 and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run(), name=f"adapt-{self.runtime.show.id}")
        self.on_change()
        return rate

    def remove(self, sender: LeanSender) -> None:
        if self.viewers.pop(id(sender), None) is not None:
            self.on_change()
        if not self.viewers and self._task is not None:
            self._task.cancel()
            self._task = None

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def rung_counts(self) -> list[int]:
        counts = [0] * len(self.runtime.ladder)
        for rate in self.viewers.values():
            counts[rate.rung] += 1
        return counts

    def wanted(self, codec: str) -> set[int]:
        """Rungs of ``codec`` some viewer is on or moving to."""
        rungs = set()
        for rate in self.viewers.values():
            if rate.codec == codec:
                rungs.add(rate.rung)
                if rate.sender.switch_to is not None:
                    rungs.add(rate.chooser.target)
        return rungs

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(STEP_S)
            try:
                self.step(time.monotonic())
            except Exception:  # noqa: BLE001 - adaptation must never end the show
                log.exception("show %s: rate adaptation step failed", self.runtime.show.id)

    def step(self, now: float) -> None:
        runtime = self.runtime
        for rate in list(self.viewers.values()):
            sender = rate.sender
            if sender.closed or not sender.started.is_set():
                continue
            if not runtime.origin:  # the lower rungs are encoded by the origin only
                sender.set_padding(0)
                if rate.rung != 0:
                    self._move(rate, 0)
                continue
            fb = sender.feedback
            decision = rate.chooser.update(
                Signals(
                    now,
                    rate.sent_bps(now),
                    fb.remb_bps,
                    fb.remb_at,
                    fb.fraction_lost / 256 if fb.rr_at is not None else None,
                    fb.rr_at,
                    can_probe=sender.rtx_pt is not None,
                    probe_loss=fb.rtx_fraction_lost / 256 if fb.rtx_rr_at is not None else None,
                    probe_loss_at=fb.rtx_rr_at,
                    nacked=fb.nacked_packets,
                )
            )
            sender.set_padding(decision.padding_bps)
            if decision.target != rate.rung:
                self._move(rate, decision.target)
            elif sender.switch_to is not None:  # changed its mind: stay
                sender.switch_to.leave(sender)

    def _move(self, rate: ViewerRate, rung: int) -> None:
        target = self.runtime.rung_broadcast(rate.codec, rung)
        if rate.sender.switch_to is not target:
            rate.chooser.target = rung
            target.switch(rate.sender)

    def _switched(self, rate: ViewerRate, broadcast: Broadcast) -> None:
        now = time.monotonic()
        rung = self.runtime.rung_of(broadcast)
        log.info(
            "show %s: viewer %s to %s (estimate %s bps, loss %d/256)",
            self.runtime.show.id,
            rate.sender._ssrc,
            self.runtime.ladder[rung].name,
            rate.sender.feedback.remb_bps,
            rate.sender.feedback.fraction_lost,
        )
        rate.moved(rung, now)
        rate.chooser.switched(rung, now)
        with contextlib.suppress(Exception):
            self.on_change()
