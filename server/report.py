"""The show report: what each featured segment did, and totals that add up.

Pure: ``build`` takes the show's segments, its orders and its clips as loaded from
Redis and returns the report; ``to_csv`` flattens it into one table. Sales are
attributed to the segment that featured the product *bought*, at the time it was added
to the cart (``segments.segment_of``), so a segment never counts another product's order.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field

from checkout.orders import cents_str
from server.config import ShowConfig
from server.segments import SOLD, Segment, segment_of

REFUNDED = "refunded"


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int
    cents: int  # quantity x unit price


@dataclass(frozen=True)
class OrderFacts:
    order_id: str
    status: str
    channel: str  # "online" | "in_person"
    amount_cents: int
    lines: tuple[Line, ...]
    added_ms: dict[str, int] = field(default_factory=dict)  # sku -> added to cart
    created_ms: int = 0


@dataclass(frozen=True)
class ClipFacts:
    id: str
    sku: str
    views: int
    add_to_carts: int
    orders: int


def build(
    show: ShowConfig,
    segs: list[Segment],
    orders: list[OrderFacts],
    clips: list[ClipFacts],
    now_ms: int,
) -> dict:
    names = {p.sku: p.name for p in show.products}
    per_seg = [{"orders": set(), "units": 0, "cents": 0} for _ in segs]
    products: dict[str, dict] = defaultdict(lambda: {"units": 0, "orders": set(), "cents": 0})
    channels: dict[str, dict] = defaultdict(lambda: {"orders": 0, "cents": 0})
    refunds = {"orders": 0, "cents": 0}
    totals = {"orders": 0, "units": 0, "cents": 0, "unattributed_cents": 0}
    for order in orders:
        if order.status == REFUNDED:
            refunds["orders"] += 1
            refunds["cents"] += order.amount_cents
            continue
        if order.status not in SOLD:
            continue
        totals["orders"] += 1
        totals["cents"] += order.amount_cents
        channels[order.channel]["orders"] += 1
        channels[order.channel]["cents"] += order.amount_cents
        for line in order.lines:
            totals["units"] += line.quantity
            product = products[line.sku]
            product["units"] += line.quantity
            product["orders"].add(order.order_id)
            product["cents"] += line.cents
            added = order.added_ms.get(line.sku, order.created_ms)
            i = segment_of(segs, line.sku, added, now_ms) if order.channel == "online" else None
            if i is None:
                totals["unattributed_cents"] += line.cents
                continue
            per_seg[i]["orders"].add(order.order_id)
            per_seg[i]["units"] += line.quantity
            per_seg[i]["cents"] += line.cents

    def seg_row(seg: Segment, sold: dict) -> dict:
        end = now_ms if seg.end_ms is None else seg.end_ms
        return {
            "sku": seg.sku,
            "name": names.get(seg.sku, seg.sku),
            "start_ms": seg.start_ms,
            "end_ms": seg.end_ms,
            "on_air_s": round(max(0, end - seg.start_ms) / 1000, 1),
            "peak_viewers": seg.peak_viewers,
            "average_viewers": round(seg.average_viewers(now_ms), 1),
            "add_to_carts": seg.cart_adds,
            "orders": len(sold["orders"]),
            "units": sold["units"],
            "revenue": cents_str(sold["cents"]),
        }

    top = sorted(products.items(), key=lambda kv: (-kv[1]["cents"], kv[0]))
    return {
        "show": show.id,
        "title": show.title,
        "currency": show.currency,
        "generated_at": now_ms,
        "segments": [seg_row(s, sold) for s, sold in zip(segs, per_seg, strict=True)],
        "top_products": [
            {
                "sku": sku,
                "name": names.get(sku, sku),
                "units": p["units"],
                "orders": len(p["orders"]),
                "revenue": cents_str(p["cents"]),
            }
            for sku, p in top
        ],
        "channels": {
            name: {
                "orders": channels[name]["orders"],
                "revenue": cents_str(channels[name]["cents"]),
            }
            for name in ("online", "in_person")
        },
        "refunds": {"orders": refunds["orders"], "amount": cents_str(refunds["cents"])},
        "clips": [
            {
                "id": c.id,
                "sku": c.sku,
                "views": c.views,
                "add_to_carts": c.add_to_carts,
                "orders": c.orders,
            }
            for c in clips
        ],
        "totals": {
            "orders": totals["orders"],
            "units": totals["units"],
            "revenue": cents_str(totals["cents"]),
            "not_from_a_segment": cents_str(totals["unattributed_cents"]),
        },
    }


CSV_COLUMNS = (
    "section",
    "sku",
    "name",
    "on_air_s",
    "peak_viewers",
    "average_viewers",
    "add_to_carts",
    "orders",
    "units",
    "revenue",
    "views",
)


def to_csv(report: dict) -> str:
    """One table, a ``section`` column saying what each row is (segment, product,
    channel, refunds, clip, total), so a spreadsheet opens it as it is."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for seg in report["segments"]:
        writer.writerow({"section": "segment", **seg})
    for product in report["top_products"]:
        writer.writerow({"section": "product", **product})
    for name, figures in report["channels"].items():
        writer.writerow({"section": "channel", "name": name, **figures})
    writer.writerow(
        {
            "section": "refunds",
            "orders": report["refunds"]["orders"],
            "revenue": report["refunds"]["amount"],
        }
    )
    for clip in report["clips"]:
        writer.writerow({"section": "clip", "name": clip["id"], **clip})
    writer.writerow({"section": "total", **report["totals"]})
    return out.getvalue()
