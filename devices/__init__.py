"""Printers, label layout and the print worker.

- ``label``: the label as a pure layout (``build_label``), then ESC/POS bytes
  (``render_escpos``, via python-escpos) or a PNG preview (``render_png``).
- ``routing``: which printer prints which items. An order whose items span printers
  prints one label per printer with that printer's items ("part n of m"), each with the
  order number, buyer, total and QR code.
- ``connections``: ``tcp://``, ``usb://VID:PID`` (usblp node), ``serial://`` and
  ``file://`` (device node, or a virtual printer writing ``.bin`` + ``.png`` per label).
- ``worker``: the consumer group on ``print:jobs``; ``store``: what it keeps in Redis.

Worker settings (environment, for ``serve`` and ``printer-worker``):
``SHOWROOM_PRINT_PARK_AFTER`` (failures before a job is parked, default 5),
``SHOWROOM_PRINT_CLAIM_IDLE_MS`` (a dead worker's jobs are taken over after, default 30000),
``SHOWROOM_PRINT_TIMEOUT_S`` (a printer must take a label within, default 10),
``SHOWROOM_PRINT_BACKOFF_MAX_S`` (default 5), ``SHOWROOM_PRINT_PROBE_S`` (parked printer
retry interval, default 2), ``SHOWROOM_LABEL_FONT`` (font file for lines the printer's
code pages cannot show, e.g. a CJK font), ``SHOWROOM_PUBLIC_URL`` (QR base URL of a
station worker).

Guarantees: at-least-once printing with no duplicates in normal operation. A label is
printed twice only if a worker dies in the instant after the printer took its bytes and
before Redis recorded it. Labels leave each printer in payment order as long as one
worker drives that printer; with several workers on one Redis (several ``serve``
processes, or a station), run the print worker in one place (``serve --no-print-worker``
elsewhere) to keep that order strict.
"""
