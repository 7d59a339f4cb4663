"""Stripe sandbox: without STRIPE_SECRET_KEY, run against an embedded localstripe.

The stripe library is pointed at it per client (``PaymentGateway(api_base=...)``); the
app registers its own webhook endpoint with it at start-up (``Commerce.start``).
``STRIPE_API_BASE`` points at a sandbox that is already running instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("showroom.checkout")


def start_sandbox_if_needed(settings: Any, services: Any, make_server: Callable[..., Any]) -> None:
    """``settings`` are the server's; ``make_server(log_dir=...)`` builds the embedded
    localstripe (a managed process with ``start``, ``stop`` and ``url``), added to
    ``services`` so it is stopped with them."""
    if settings.stripe_secret_key or os.environ.get("STRIPE_SECRET_KEY"):
        settings.sandbox = False
        log.info("payments: live Stripe keys from the environment")
        return
    settings.sandbox = True
    base = settings.stripe_api_base or os.environ.get("STRIPE_API_BASE")
    if base:
        settings.stripe_api_base = base
        log.info("sandbox mode: no STRIPE_SECRET_KEY; using the Stripe sandbox at %s", base)
        return
    stripe_server = make_server(log_dir=Path(settings.data_dir) / "localstripe")
    stripe_server.start()
    services.add(stripe_server)
    settings.stripe_api_base = stripe_server.url
    log.info(
        "sandbox mode: no STRIPE_SECRET_KEY; started localstripe at %s (test cards only)",
        stripe_server.url,
    )
