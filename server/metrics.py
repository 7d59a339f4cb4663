"""Prometheus metrics, one registry per app (so tests can run several apps).

Subsystems record into the attributes below; gauges that mirror Redis state are
refreshed by ``before_scrape`` hooks just before ``/metrics`` renders.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Media-path buckets: milliseconds matter.
_FAST = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.25, 0.5, 1.0)
_HTTP = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_G2G = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.before_scrape: list[Callable[[], Awaitable[None]]] = []
        self.viewers = Gauge("showroom_viewers", "Connected WHEP viewers", ["show"], registry=r)
        self.publisher_live = Gauge(
            "showroom_publisher_live", "1 while a publisher is sending", ["show"], registry=r
        )
        self.frame_time = Histogram(
            "showroom_compositor_frame_seconds",
            "Compose (blend) time per frame",
            ["show"],
            buckets=_FAST,
            registry=r,
        )
        self.server_latency = Histogram(
            "showroom_server_latency_seconds",
            "Source frame received -> its packets handed to the fan-out",
            ["show"],
            buckets=_FAST,
            registry=r,
        )
        self.encode_time = Histogram(
            "showroom_encoder_seconds",
            "Encode time per frame",
            ["show", "codec"],
            buckets=_FAST,
            registry=r,
        )
        self.dropped_frames = Counter(
            "showroom_dropped_frames_total",
            "Frames dropped on the media path",
            ["show", "reason"],
            registry=r,
        )
        self.viewers_per_rung = Gauge(
            "showroom_viewers_per_rung",
            "Viewers on each rung of the show's quality ladder",
            ["show", "rung"],
            registry=r,
        )
        self.keyframes = Counter(
            "showroom_keyframes_requested_total",
            "Keyframes forced for joins and PLI/FIR",
            ["show"],
            registry=r,
        )
        self.glass_to_glass = Histogram(
            "showroom_viewer_latency_seconds",
            "Glass-to-glass latency reported by viewers",
            ["show"],
            buckets=_G2G,
            registry=r,
        )
        self.join_time = Histogram(
            "showroom_join_seconds",
            "WHEP offer -> first frame, reported by viewers",
            ["show"],
            buckets=_G2G,
            registry=r,
        )
        self.cart_ops = Counter(
            "showroom_cart_operations_total", "Cart operations", ["op", "result"], registry=r
        )
        self.cart_latency = Histogram(
            "showroom_cart_seconds", "Add-to-cart handling time", buckets=_HTTP, registry=r
        )
        self.orders = Gauge("showroom_orders", "Orders by status", ["status"], registry=r)
        self.print_jobs = Gauge("showroom_print_jobs", "Print jobs by state", ["state"], registry=r)
        self.printer_online = Gauge(
            "showroom_printer_online", "1 when the printer answers", ["printer"], registry=r
        )
        self.label_latency = Histogram(
            "showroom_label_seconds",
            "Webhook -> label bytes accepted by the printer",
            buckets=_HTTP,
            registry=r,
        )

    async def render(self) -> bytes:
        for hook in self.before_scrape:
            await hook()
        return generate_latest(self.registry)
