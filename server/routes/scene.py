"""Routes for this area; see setup()."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    pass
