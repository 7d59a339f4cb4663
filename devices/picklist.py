"""The pick list: what to take off the shelves for the orders waiting to be packed.

Pure: ``group`` sums the waiting orders by product (with the order numbers that need
each), ``build_ticket`` lays it out as one label for the floor printer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from checkout.orders import Order
from devices.label import Label, Line, columns_for

WAITING = ("paid", "printed")  # paid, not yet packed (ready) or handed over


@dataclass(frozen=True)
class PickRow:
    sku: str
    name: str
    quantity: int
    orders: tuple[int, ...]  # order numbers, oldest first

    def public(self) -> dict:
        return {
            "sku": self.sku,
            "name": self.name,
            "quantity": self.quantity,
            "orders": list(self.orders),
        }


def group(orders: list[Order]) -> list[PickRow]:
    rows: dict[str, dict] = {}
    for order in sorted(orders, key=lambda o: (o.paid_at or o.created_at, o.number)):
        if str(order.status) not in WAITING:
            continue
        for item in order.items:
            row = rows.setdefault(item.sku, {"name": item.name, "quantity": 0, "orders": []})
            row["quantity"] += item.quantity
            if order.number not in row["orders"]:
                row["orders"].append(order.number)
    return [
        PickRow(sku, r["name"], r["quantity"], tuple(r["orders"]))
        for sku, r in sorted(rows.items(), key=lambda kv: (-kv[1]["quantity"], kv[0]))
    ]


def build_ticket(
    rows: list[PickRow],
    *,
    show_title: str,
    staff_url: str,
    paper_mm: int = 80,
    now: datetime | None = None,
) -> Label:
    cols = columns_for(paper_mm)
    rule = Line("-" * cols, "rule")
    when = (now or datetime.now().astimezone()).strftime("%d %b %Y %H:%M")
    lines = [Line("PICK LIST", "number", "center"), Line(show_title, "title", "center")]
    lines += [Line(when, "normal", "center"), rule]
    if not rows:
        lines.append(Line("Nothing waiting to be packed.", "bold", "center"))
    for row in rows:
        qty = f"{row.quantity} x "
        name = row.name[: cols - len(qty)]
        lines.append(Line(f"{qty}{name}", "bold"))
        numbers = " ".join(f"#{n}" for n in row.orders)
        while numbers:  # wrap the order numbers under their product
            cut = numbers[: cols - 2]
            if len(numbers) > cols - 2 and " " in cut:
                cut = cut[: cut.rindex(" ")]
            lines.append(Line(f"  {cut}"))
            numbers = numbers[len(cut) :].lstrip()
    lines.append(rule)
    total = sum(r.quantity for r in rows)
    orders = len({n for r in rows for n in r.orders})
    lines.append(Line(f"{total} items for {orders} orders", "bold", "center"))
    return Label(paper_mm, cols, tuple(lines), staff_url)
