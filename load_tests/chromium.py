"""Debian's Chromium, headless, for browser tests and benchmarks (never a downloaded browser)."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
# Background networking off: this machine has no network, and Chromium's probes of
# Google hosts would only add noise and delay.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # The host page's "go live" uses Chromium's built-in fake camera and microphone.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
