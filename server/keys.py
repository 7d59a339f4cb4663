"""Typed keys for what the aiohttp app carries (aiohttp's AppKey)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from server.config import Settings, ShowConfig
    from server.events import EventBus
    from server.metrics import Metrics

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
SHOWS: web.AppKey[dict[str, ShowConfig]] = web.AppKey("shows")
REDIS: web.AppKey[aioredis.Redis] = web.AppKey("redis")
BUS: web.AppKey[EventBus] = web.AppKey("bus")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
SECRET: web.AppKey[bytes] = web.AppKey("secret")
# Each subsystem stores its runtime object under its own key (media, checkout, devices).
EXTRA: web.AppKey[dict[str, Any]] = web.AppKey("extra")
