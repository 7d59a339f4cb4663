"""The quality ladder (media/ladder.py): which rungs a show has, and the per-viewer
rung choice as a state machine fed receiver feedback over time."""

from __future__ import annotations

import pytest

from media.ladder import Params, Rung, RungChooser, Signals, build_ladder
from server.config import ManifestError, load_manifest
from tests.conftest import manifest_text

TOP, LOW = 1_200_000, 400_000


def test_default_ladder_adds_a_360p_rung_only_below_the_show_size():
    assert build_ladder(Rung(1280, 720, 1500)) == (Rung(1280, 720, 1500), Rung(640, 360, 400))
    assert build_ladder(Rung(1080, 1920, 2500))[1] == Rung(202, 360, 400)  # portrait
    # Not smaller than the top (in size or bitrate): no second encode for nothing.
    assert build_ladder(Rung(640, 360, 800)) == (Rung(640, 360, 800),)
    assert build_ladder(Rung(1280, 720, 350)) == (Rung(1280, 720, 350),)
    assert build_ladder(Rung(1280, 720, 1500), []) == (Rung(1280, 720, 1500),)


def test_configured_rungs_are_sorted_and_useless_ones_left_out():
    below = [Rung(426, 240, 250), Rung(854, 480, 800), Rung(640, 360, 900)]
    # 640x360 at 900 kbps would cost more than the 480p rung above it.
    assert build_ladder(Rung(1280, 720, 1500), below) == (
        Rung(1280, 720, 1500),
        Rung(854, 480, 800),
        Rung(426, 240, 250),
    )


def test_manifest_ladder(tmp_path):
    path = tmp_path / "show.toml"
    rungs = """
    [[show.ladder]]
    width = 426
    height = 240
    bitrate_kbps = 300
    """
    path.write_text(manifest_text("demo", extra_show=rungs))
    assert load_manifest(path, env={}).ladder == (Rung(426, 240, 300),)
    path.write_text(manifest_text("demo", extra_show="ladder = []"))
    assert load_manifest(path, env={}).ladder == ()
    path.write_text(manifest_text("demo"))
    assert load_manifest(path, env={}).ladder is None
    bad = rungs.replace("bitrate_kbps = 300", "bitrate_kbps = 900")  # the show is 800
    path.write_text(manifest_text("demo", extra_show=bad))
    with pytest.raises(ManifestError, match=r"show.ladder\[0\].bitrate_kbps"):
        load_manifest(path, env={})
    bad = rungs.replace("width = 426", "width = 1280")
    path.write_text(manifest_text("demo", extra_show=bad))
    with pytest.raises(ManifestError, match=r"show.ladder\[0\].width"):
        load_manifest(path, env={})


class Link:
    """Feeds a chooser what a receiver would report, every 100 ms: an estimate every
    500 ms (that falls to 0.85 x ``capacity`` when more than that is sent, as a
    delay-based receiver does, and otherwise climbs towards 1.5 x what it receives),
    and receiver reports every second (the padding's own loss: what exceeds
    ``capacity``)."""

    def __init__(
        self, chooser: RungChooser, capacity: float | None = None, blind: bool = False
    ) -> None:
        self.c = chooser
        self.capacity = capacity
        # A receiver whose estimate never sees the queue (it only climbs), as aiortc's
        # does behind a bottleneck: NACKs for the media the full queue dropped are the
        # first sign of it.
        self.blind = blind
        self.nacked = 0
        self.nack_every = 0  # steps between random losses (0: none)
        self.now = 100.0
        self.estimate = int(1.5 * chooser.bitrates_bps[chooser.rung])
        self.loss = 0.0
        self.est_at = self.loss_at = None
        self.padding = 0
        self.probe_loss = None  # loss of the padding's own stream, when reported
        self.decisions = []

    def run(self, seconds: float, sent=None):
        for _ in range(round(seconds * 10)):
            self.now = round(self.now + 0.1, 3)
            bitrate = sent if sent is not None else self.c.bitrates_bps[self.c.rung]
            if round(self.now * 10) % 5 == 0:
                self.est_at = self.now
                total = bitrate + self.padding
                if self.capacity is not None and total > self.capacity and not self.blind:
                    self.estimate = int(0.85 * self.capacity)
                else:
                    limit = 1.5 * total + 10_000
                    self.estimate = int(max(self.estimate, min(limit, 1.04 * self.estimate)))
            if round(self.now * 10) % 10 == 0:
                self.loss_at = self.now
                if self.capacity is not None and self.padding:
                    # A tail-drop queue behind each frame drops the padding first.
                    over = bitrate + self.padding - self.capacity
                    self.probe_loss = min(1.0, max(0.0, over / self.padding))
            step = round(self.now * 10)
            if self.capacity is not None and bitrate + self.padding > self.capacity:
                self.nacked += 1  # the full queue dropped a media packet
            if self.nack_every and step % self.nack_every == 0:
                self.nacked += 1
            d = self.c.update(
                Signals(
                    self.now, bitrate, self.estimate, self.est_at, self.loss, self.loss_at,
                    probe_loss=self.probe_loss,
                    probe_loss_at=self.loss_at if self.probe_loss is not None else None,
                    nacked=self.nacked,
                )
            )  # fmt: skip
            self.padding = d.padding_bps
            self.decisions.append((self.now, d))
            if d.target != self.c.rung:  # the target rung's keyframe comes at once
                self.c.switched(d.target, self.now)
        return self.decisions[-1][1]

    def first(self, pred) -> float | None:
        return next((t for t, d in self.decisions if pred(d)), None)


def test_down_quickly_when_the_estimate_falls_below_the_sent_rate():
    link = Link(RungChooser([TOP, LOW]))
    link.run(5)
    assert link.c.rung == 0, "a clean link stays on top"
    start = link.now
    link.estimate = int(0.85 * 700_000)  # a receiver that saw queueing on a 700 kbps link
    link.run(2)
    assert link.c.rung == 1
    moved = link.first(lambda d: d.target == 1)
    assert moved - start <= 1.0


def test_a_small_dip_or_moderate_loss_does_not_move_a_viewer_down():
    link = Link(RungChooser([TOP, LOW]))
    link.run(3)
    link.estimate = int(0.85 * TOP)  # one spurious delay spike: 0.85 x what it receives
    link.run(3)
    link.loss = 0.05  # 5 % random loss: NACK's job, not the ladder's
    link.run(10)
    assert link.c.rung == 0
    assert all(d.target == 0 for _t, d in link.decisions)


def test_an_encoder_overshoot_is_not_congestion():
    # The encoder sends 1.4 times its rung's bitrate for a while, more than this link
    # carries: the receiver's estimate falls to 0.85 x the link, still above the rung.
    link = Link(RungChooser([TOP, LOW]), capacity=1.3 * TOP)
    link.run(3)
    link.run(3, sent=int(1.4 * TOP))
    assert link.estimate < 0.8 * 1.4 * TOP
    assert link.c.rung == 0


def test_heavy_loss_moves_down_at_once_and_sustained_loss_soon():
    link = Link(RungChooser([TOP, LOW]))
    link.run(3)
    link.loss = 0.4
    link.run(1.1)
    assert link.c.rung == 1
    link = Link(RungChooser([TOP, LOW]))
    link.run(3)
    link.loss = 0.15
    link.run(1.1)
    assert link.c.rung == 0, "one lossy report is not enough"
    link.run(1.0)
    assert link.c.rung == 1, "two in a row are"


def test_up_only_after_a_probe_the_link_carried():
    p = Params()
    link = Link(RungChooser([TOP, LOW], rung=1))  # all a receiver of 400 kbps reports
    link.run(p.hold_s - 0.5)
    assert link.c.rung == 1 and link.decisions[-1][1].padding_bps == 0, "quiet first"
    link.run(1.0)
    started = link.first(lambda d: d.reason == "probing")
    assert started is not None
    paddings = [d.padding_bps for t, d in link.decisions if t >= started]
    assert paddings[0] < 0.2 * (p.probe_gain * TOP - LOW), "a probe ramps up"
    link.run(p.probe_s)
    full = max(d.padding_bps for _t, d in link.decisions)
    assert full == pytest.approx(p.probe_gain * TOP - LOW, rel=0.01)
    assert link.c.rung == 0, "no queueing and no loss during the probe: up"
    assert link.decisions[-1][1].padding_bps == 0


def test_a_failed_probe_stops_padding_early_and_backs_off():
    p = Params()
    link = Link(RungChooser([TOP, LOW], rung=1), capacity=700_000)
    link.run(p.hold_s + p.probe_s + 1)
    assert link.c.rung == 1 and link.c.failed_probes == 1
    probing = [(t, d.padding_bps) for t, d in link.decisions if d.reason == "probing"]
    assert max(pad for _t, pad in probing) < 700_000 - LOW + 200_000, "stopped on the way up"
    failed_at = probing[-1][0]
    assert link.decisions[-1][1].padding_bps == 0
    link.run(2 * p.hold_s + p.probe_s)
    again = [t for t, d in link.decisions if d.reason == "probing" and t > failed_at + 0.15]
    assert again, "it tries again"
    assert again[0] - failed_at >= 2 * p.hold_s - 0.2, "after twice the quiet time"
    assert link.c.rung == 1


def test_a_probe_whose_padding_is_lost_fails_though_the_estimate_holds():
    # A full link that drops the padding behind each frame and spares the media: the
    # media's loss and the estimate look fine, the padding's own loss does not.
    p = Params()
    link = Link(RungChooser([TOP, LOW], rung=1))
    link.probe_loss = 0.4
    link.run(p.hold_s + p.probe_s + p.probe_report_s + 1)
    assert link.c.rung == 1 and link.c.failed_probes >= 1
    link = Link(RungChooser([TOP, LOW], rung=1))
    link.probe_loss = 0.0
    link.run(p.hold_s + p.probe_s + 1)
    assert link.c.rung == 0, "padding that arrives: up"


def test_nacks_end_a_probe_the_estimate_does_not_see():
    # A receiver whose estimate climbs on behind a full link: the probe ends on the
    # first NACK, within a step of the first dropped media packet (a receiver report
    # would come up to a second later), and its padding stops.
    p = Params()
    link = Link(RungChooser([TOP, LOW], rung=1), capacity=700_000, blind=True)
    link.run(p.hold_s + p.probe_s + 1)
    assert link.c.rung == 1 and link.c.failed_probes >= 1
    over = [t for t, d in link.decisions if d.reason == "probing" and LOW + d.padding_bps > 700_000]
    ended = next(t for t, d in link.decisions if t > over[0] and d.reason != "probing")
    assert ended - over[0] <= 0.25, "padding stops a step after the first NACK"
    assert link.decisions[-1][1].padding_bps == 0


def test_a_link_that_loses_a_little_keeps_its_nack_rate_during_a_probe():
    # One NACK a second before the probe and during it: the link did not get worse, and
    # the probe (with a receiver that sees no queueing) passes.
    p = Params()
    link = Link(RungChooser([TOP, LOW], rung=1))
    link.nack_every = 10
    link.run(p.hold_s + p.probe_s + 1)
    assert link.c.rung == 0 and link.c.failed_probes == 0
    link = Link(RungChooser([TOP, LOW], rung=1))
    link.nack_every = 10
    link.run(p.hold_s + 0.5)
    link.nack_every = 1  # ten times the rate: the probe fills the link
    link.run(p.probe_s + 1)
    assert link.c.rung == 1 and link.c.failed_probes >= 1


def test_congestion_cancels_a_move_up_still_waiting_for_its_keyframe():
    c = RungChooser([TOP, LOW], rung=1)
    c.target = 0  # the probe passed; the top rung's keyframe has not come yet
    c.last_bad = 0.0
    d = c.update(Signals(10.0, LOW, 600_000, 10.0, 0.4, 10.0))
    assert d.target == 1


def test_three_rungs_go_straight_to_the_one_that_fits():
    link = Link(RungChooser([2_500_000, 1_200_000, 400_000]))
    link.estimate = 3_500_000
    link.run(3)
    link.estimate = int(0.85 * 700_000)
    link.run(1)
    assert link.c.rung == 2
