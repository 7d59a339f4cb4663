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


def payment_mode_problem(
    secret_key: str | None,
    publishable_key: str | None,
    webhook_secret: str | None,
    *,
    loopback_host: bool,
    sandbox_allowed: bool,
) -> str | None:
    """Why ``serve`` must not start with these payment settings (None: it may).

    Live keys need their webhook secret (else no payment is ever confirmed) and the
    publishable key (else no browser can pay). Without live keys the shop takes only
    test cards: fine on a loopback host, on any other only when asked for (--sandbox),
    so a misconfigured public server does not hand out goods for fake payments."""
    if secret_key:
        missing = [
            name
            for name, value in (
                ("STRIPE_WEBHOOK_SECRET", webhook_secret),
                ("STRIPE_PUBLISHABLE_KEY", publishable_key),
            )
            if not value
        ]
        if missing:
            return f"live Stripe mode (STRIPE_SECRET_KEY is set) needs {' and '.join(missing)}"
        return None
    if not loopback_host and not sandbox_allowed:
        return (
            "no STRIPE_SECRET_KEY: this would take only test-card payments on a public "
            "address; set the Stripe keys, or pass --sandbox to run the sandbox on purpose"
        )
    return None


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
