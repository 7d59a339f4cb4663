"""The on-screen scene for each show (overlays), kept in step with the show's events."""

from __future__ import annotations

from aiohttp import web

from overlays.scene import Scene
from server import keys


def setup(app: web.Application) -> None:
    settings = app[keys.SETTINGS]
    # Created at setup (not startup) so the media runtime finds them in its startup hook.
    app[keys.EXTRA]["scenes"] = {
        show.id: Scene(
            show.video.width,
            show.video.height,
            title=show.title,
            currency=show.currency,
            show_id=show.id,
            base_url=settings.base_url,
        )
        for show in app[keys.SHOWS].values()
    }
