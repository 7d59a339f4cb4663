"""A show's quality ladder, and which rung each viewer gets.

A show is encoded once per rung (its own size at its bitrate, and smaller, cheaper
rungs below), never once per viewer. Each viewer's rung follows what its receiver
reports, with a pure state machine (``RungChooser``) fed the receiver's bandwidth
estimate (REMB) and the loss in its RTCP receiver reports:

- down quickly: the estimate falls below what this viewer is being sent (a receiver's
  estimate only ever falls when it sees queueing delay growing), or heavy loss;
- up carefully: after a quiet spell (longer after each failed attempt), a probe pads
  the viewer's stream up to the next rung's bitrate for a short while; if the receiver
  sees neither queueing nor loss during it, the viewer moves up. The receiver's NACKs
  end a probe at once when they come faster than before it: a receiver report takes a
  second, and a probe that overfills the link for that long costs the picture.

A receiver's estimate is bounded by ~1.5 times what it receives, so it never shows
room for a bigger rung on its own: the probe is what makes the room visible.
The switch itself (at a keyframe of the target rung) is the caller's job.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

LOW_RUNG_HEIGHT = 360
LOW_RUNG_KBPS = 400


@dataclass(frozen=True)
class Rung:
    width: int
    height: int
    bitrate_kbps: int

    @property
    def name(self) -> str:
        return f"{self.height}p"

    @property
    def bitrate_bps(self) -> int:
        return self.bitrate_kbps * 1000


def build_ladder(top: Rung, below: Sequence[Rung] | None = None) -> tuple[Rung, ...]:
    """The show's rungs, best first. ``below``: the rungs under the show's own size
    (None: one 360p rung at 400 kbps). A rung that would not be smaller (in pixels and
    in bitrate) than the one above it is left out."""
    if below is None:
        height = LOW_RUNG_HEIGHT
        width = round(top.width * height / top.height / 2) * 2
        below = [Rung(width, height, LOW_RUNG_KBPS)]
    rungs = [top]
    for rung in sorted(below, key=lambda r: (r.width * r.height, r.bitrate_kbps), reverse=True):
        above = rungs[-1]
        if rung.width * rung.height < above.width * above.height and (
            rung.bitrate_kbps < above.bitrate_kbps
        ):
            rungs.append(rung)
    return tuple(rungs)


@dataclass(frozen=True)
class Params:
    down_margin: float = 0.7  # estimate below this share of the sent rate: congested
    down_hold_s: float = 0.4  # ... for this long (two estimates), or at once on heavy loss
    loss_down: float = 0.10  # two receiver reports in a row above this: congested
    loss_heavy: float = 0.25  # one report above this: congested
    loss_quiet: float = 0.06  # loss above this is not a quiet spell (no probing)
    settle_s: float = 1.0  # after a switch, old feedback is ignored this long
    hold_s: float = 3.0  # quiet time before the first probe; doubles on failure
    max_hold_s: float = 6.0
    probe_s: float = 3.0
    probe_ramp: float = 0.6  # share of the probe spent ramping up; then held
    probe_report_s: float = 1.5  # how long a probe waits for a report of its own loss
    probe_collapse: float = 0.5  # an estimate below this share of the probe's rate ends it
    probe_gain: float = 1.15  # probe up to this times the target rung's bitrate
    # A receiver's estimate only falls when it sees queueing (AIMD, to 0.85 times what it
    # receives): a fall by more than this share is a new sign of it.
    estimate_drop: float = 0.9


@dataclass(frozen=True)
class Signals:
    """One viewer's feedback at ``now`` (monotonic seconds). ``*_at`` say when each
    value arrived, so a repeated value is not mistaken for a new report."""

    now: float
    sent_bps: float  # video bitrate being sent to this viewer (media, not padding)
    estimate_bps: int | None = None  # the receiver's latest REMB
    estimate_at: float | None = None
    loss: float | None = None  # fraction lost in the latest receiver report, 0..1
    loss_at: float | None = None
    can_probe: bool = True  # padding can be sent (RTX negotiated)
    # Loss of the stream that carries the padding (RTX), from its receiver reports: the
    # probe's own loss (a full link may drop the padding and spare the media behind it).
    probe_loss: float | None = None
    probe_loss_at: float | None = None
    # Media packets the receiver has asked to have resent so far (a running count): the
    # earliest sign of loss, a round trip after it.
    nacked: int | None = None


@dataclass(frozen=True)
class Decision:
    target: int  # the rung this viewer should be on (index, 0 = best)
    padding_bps: int = 0  # probe padding to send now
    reason: str = ""


@dataclass
class RungChooser:
    """Per-viewer rung choice (pure: time comes in with the signals)."""

    bitrates_bps: Sequence[int]  # per rung, best first
    rung: int = 0  # the rung the viewer is on now
    params: Params = field(default_factory=Params)
    target: int = 0
    hold_s: float = 0.0
    last_bad: float | None = None  # last sign of congestion (queueing or loss)
    switched_at: float | None = None
    probe_until: float | None = None
    probes: int = 0
    failed_probes: int = 0
    _estimate: int | None = None
    _estimate_at: float | None = None
    _below_since: float | None = None
    _padding: int = 0
    _probe_loss_at: float | None = None
    _probe_checked: bool = False  # a report of the probe's own loss came in, and was quiet
    _loss_at: float | None = None
    _losses: list[float] = field(default_factory=list)
    _nacked: deque[tuple[float, int]] = field(default_factory=deque)  # (time, running count)
    _probe_nacked: int = 0  # the running count when the probe began
    _nack_rate: float = 0.0  # NACKed packets per second in the quiet spell before it

    def __post_init__(self) -> None:
        self.target = self.rung
        self.hold_s = self.params.hold_s

    def switched(self, rung: int, now: float) -> None:
        """The viewer is on ``rung`` from now (its keyframe was sent)."""
        if rung < self.rung:
            self.hold_s = self.params.hold_s  # a successful move up: patient again later
        self.rung = self.target = rung
        self.switched_at = now
        self.probe_until = None
        self._below_since = None
        self._losses.clear()

    def update(self, s: Signals) -> Decision:
        p = self.params
        if self.last_bad is None:
            self.last_bad = s.now
        settling = self._settling(s.now)
        fell = self._read_estimate(s)
        # Queueing: the estimate fell below what is being sent (padding included). A
        # small fall (a receiver's delay detector tripped by scheduling noise still
        # reports 0.85 times what it receives) is not.
        total = s.sent_bps + self._padding
        queueing = fell and self._estimate is not None and self._estimate < p.down_margin * total
        lossy, heavy, quiet_loss = self._read_loss(s)
        nacks_up = self._probe_nacks_up(s)
        probe_lossy = self._read_probe_loss(s) or nacks_up
        if queueing or not quiet_loss:
            self.last_bad = s.now
        if settling:
            self._below_since = None
            return self._decide(self.target, 0, "settling")

        # Against what the rung should send at most: an encoder overshooting for a
        # moment (a keyframe, a burst of detail) is not the link getting worse.
        sent = min(s.sent_bps, self.bitrates_bps[self.rung])
        below = self._estimate is not None and sent > 0 and self._estimate < p.down_margin * sent
        if below:
            self._below_since = self._below_since if self._below_since is not None else s.now
        else:
            self._below_since = None
        # A fall below the sent rate is acted on at once; an estimate that starts out
        # low (a receiver's first one) only once it stays low.
        congested = (
            heavy
            or lossy
            or (
                self._below_since is not None
                and (queueing or s.now - self._below_since >= p.down_hold_s)
            )
        )
        if self.probe_until is not None:
            # A probe ends on loss (its padding's or the media's) or on an estimate that
            # collapsed far below what it sends: a lone dip of the estimate is also what
            # a stall of the receiver's machine looks like, and a full link drops padding.
            collapsed = queueing and self._estimate < p.probe_collapse * total
            if collapsed or not quiet_loss or congested or probe_lossy:
                self.probe_until = None
                self.failed_probes += 1
                self.hold_s = min(p.max_hold_s, 2 * self.hold_s)
                self.last_bad = s.now
            elif s.now >= self.probe_until and (
                self._probe_checked
                or self._probe_loss_at is None  # a receiver that never reports it
                or s.now >= self.probe_until + p.probe_report_s
            ):
                self.probe_until = None
                self.target = self.rung - 1
                return self._decide(self.target, 0, "probe passed")
            else:
                return self._decide(self.target, self._probe_padding(s), "probing")
        if congested and self.target < self.rung:
            self.target = self.rung  # a move up not made yet: stay
        if congested and self.rung < len(self.bitrates_bps) - 1:
            self.target = self._rung_for(self._estimate if below else None)
            return self._decide(self.target, 0, "congested")
        if (
            self.rung > 0
            and self.target == self.rung
            and not congested
            and s.now - self.last_bad >= self.hold_s
        ):
            if not s.can_probe:  # no way to pad: the next rung itself is the probe
                self.target = self.rung - 1
                return self._decide(self.target, 0, "quiet")
            self.probes += 1
            self.probe_until = s.now + p.probe_s
            self._probe_checked = False
            self._start_nack_count(s)
            return self._decide(self.target, self._probe_padding(s), "probing")
        return self._decide(self.target, 0, "")

    def _read_probe_loss(self, s: Signals) -> bool:
        """True when a new report of the probe's own stream shows loss."""
        if s.probe_loss is None or s.probe_loss_at == self._probe_loss_at:
            return False
        self._probe_loss_at = s.probe_loss_at
        if self.probe_until is None:
            return False
        p = self.params
        if s.probe_loss > p.loss_quiet:
            return True
        full_at = self.probe_until - p.probe_s + p.probe_ramp * p.probe_s
        if s.now >= full_at + 0.3:  # the report covers the probe at its full rate
            self._probe_checked = True
        return False

    def _start_nack_count(self, s: Signals) -> None:
        """At a probe's start: the NACK rate of the quiet spell before it."""
        hist = self._nacked
        if not hist:
            self._probe_nacked, self._nack_rate = 0, 0.0
            return
        since = s.now - self.hold_s
        # The running count as the quiet spell began (or as it was first seen).
        before = [n for t, n in hist if t < since]
        base = before[-1] if before else hist[0][1]
        self._probe_nacked = hist[-1][1]
        self._nack_rate = (self._probe_nacked - base) / self.hold_s

    def _probe_nacks_up(self, s: Signals) -> bool:
        """True when, during a probe, the receiver NACKs more than twice as often as in
        the quiet spell before it (on a link that lost nothing then: any NACK)."""
        if s.nacked is None:
            return False
        hist = self._nacked
        if not hist or hist[-1][1] != s.nacked:
            hist.append((s.now, s.nacked))
        # Kept: the last count older than the longest quiet spell (its baseline) and after.
        while len(hist) > 1 and s.now - hist[1][0] > self.params.max_hold_s:
            hist.popleft()
        if self.probe_until is None:
            return False
        elapsed = s.now - (self.probe_until - self.params.probe_s)
        allowed = 2 * self._nack_rate * elapsed + (1 if self._nack_rate else 0)
        return s.nacked - self._probe_nacked > allowed

    def _settling(self, now: float) -> bool:
        return self.switched_at is not None and now - self.switched_at < self.params.settle_s

    def _decide(self, target: int, padding: int, reason: str) -> Decision:
        self._padding = padding
        return Decision(target, padding, reason)

    def _probe_padding(self, s: Signals) -> int:
        """Padding that ramps the stream up to the next rung's bitrate over the first
        part of the probe, then holds it: a full link shows queueing early in the ramp,
        before its queue overflows into the viewer's picture."""
        p = self.params
        assert self.probe_until is not None
        started = self.probe_until - p.probe_s
        ramp = min(1.0, (s.now - started) / (p.probe_ramp * p.probe_s))
        full = p.probe_gain * self.bitrates_bps[self.rung - 1]
        total = s.sent_bps + ramp * max(0.0, full - s.sent_bps)
        return int(max(0.0, total - s.sent_bps))

    # --- helpers ---------------------------------------------------------------------
    def _read_estimate(self, s: Signals) -> bool:
        """Take a new estimate; True when it fell (the receiver saw queueing)."""
        if s.estimate_bps is None or s.estimate_at == self._estimate_at:
            return False
        fell = (
            self._estimate is not None
            and s.estimate_bps < self.params.estimate_drop * self._estimate
        )
        self._estimate, self._estimate_at = s.estimate_bps, s.estimate_at
        return fell

    def _read_loss(self, s: Signals) -> tuple[bool, bool, bool]:
        """(two lossy reports in a row, one very lossy report, the latest report quiet)."""
        p = self.params
        if s.loss is not None and s.loss_at != self._loss_at:
            self._loss_at = s.loss_at
            self._losses = [*self._losses[-1:], s.loss]
        if not self._losses:
            return False, False, True
        latest = self._losses[-1]
        lossy = len(self._losses) == 2 and min(self._losses) > p.loss_down
        return lossy, latest > p.loss_heavy, latest <= p.loss_quiet

    def _rung_for(self, estimate: int | None) -> int:
        """The best rung below the current one that fits ``estimate`` (else the lowest);
        one rung down when there is no estimate to go by."""
        last = len(self.bitrates_bps) - 1
        if estimate is None:
            return min(last, self.rung + 1)
        for i in range(self.rung + 1, last + 1):
            if self.bitrates_bps[i] <= 0.9 * estimate:
                return i
        return last
