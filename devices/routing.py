"""Which printer prints which items, and the label(s) for a print job.

A product may name a printer (a packing station); everything else goes to the show's
default printer. An order whose items span printers prints **one label per printer**,
each with that printer's items only (and a "part n of m" line), so every station packs
exactly what is on its own label; all labels carry the order number, buyer, total and
the same QR code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from checkout.orders import Order, OrderItem
from devices.label import Label, build_label, profile_columns, render_escpos

if TYPE_CHECKING:  # the manifest's dataclasses; devices never imports the server at runtime
    from server.config import PrinterConfig, ShowConfig


def route_items(order: Order, show: ShowConfig) -> list[tuple[PrinterConfig, list[OrderItem]]]:
    """Items grouped by printer, in the order the printers first appear in the order."""
    default = show.default_printer
    by_name = {p.name: p for p in show.printers}
    groups: dict[str, list[OrderItem]] = {}
    for item in order.items:
        product = show.product(item.sku)
        printer = by_name.get(product.printer) if product and product.printer else default
        if printer is None:
            continue
        groups.setdefault(printer.name, []).append(item)
    if not groups and default is not None:  # an order without items still gets its label
        groups[default.name] = []
    return [(by_name[name], items) for name, items in groups.items()]


@dataclass(frozen=True)
class PlannedLabel:
    printer: PrinterConfig
    label: Label
    data: bytes


def plan_labels(
    order: Order, show: ShowConfig, base_url: str, reprint: bool = False
) -> list[PlannedLabel]:
    """Every label this order needs, laid out and rendered to ESC/POS (CPU only)."""
    routes = route_items(order, show)
    out = []
    for i, (printer, items) in enumerate(routes, start=1):
        label = _label(order, show, base_url, printer, items, (i, len(routes)), reprint)
        out.append(PlannedLabel(printer, label, render_escpos(label, printer.profile)))
    return out


def preview_label(
    order: Order, show: ShowConfig, base_url: str, printer: str | None = None
) -> Label | None:
    """The label a printer (default: the first) prints for this order, for previews."""
    routes = route_items(order, show)
    if not routes:
        return None
    index = next((i for i, (p, _) in enumerate(routes) if p.name == printer), 0)
    chosen, items = routes[index]
    return _label(order, show, base_url, chosen, items, (index + 1, len(routes)))


def _label(
    order: Order,
    show: ShowConfig,
    base_url: str,
    printer: PrinterConfig,
    items: list[OrderItem],
    part: tuple[int, int],
    reprint: bool = False,
) -> Label:
    """The label one printer prints for its share of the order (part n of m)."""
    return build_label(
        order,
        show_title=show.title,
        pickup_note=show.pickup_note,
        base_url=base_url,
        paper_mm=printer.paper_mm,
        profile_columns=profile_columns(printer.profile),
        items=items,
        part=part,
        reprint=reprint,
    )
