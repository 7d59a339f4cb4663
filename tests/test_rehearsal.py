"""``serve --rehearsal``: the show unlisted, payments in test mode whatever keys are set,
and its stock and orders in their own Redis database, apart from the real show's."""

from __future__ import annotations

import os

import pytest
import redis.asyncio as aioredis

from checkout.orders import order_key
from load_tests.common import spawn_serve
from server.config import rehearsal_redis_url
from server.embedded import free_port
from tests.conftest import buyer_session, manifest_text

pytestmark = pytest.mark.timeout(90)


async def test_rehearsal_is_unlisted_test_mode_and_kept_apart(tmp_path, redis_url):
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo"))
    env = {**os.environ, "STRIPE_SECRET_KEY": "sk_live_not_for_rehearsals"}
    env.pop("STRIPE_API_BASE", None)
    proc, url = spawn_serve(
        [
            "--port",
            str(free_port()),
            "--redis",
            redis_url,
            "--data-dir",
            str(tmp_path / "var"),
            "--manifest",
            str(path),
            "--rehearsal",
        ],
        env=env,
    )
    real = aioredis.Redis.from_url(redis_url)
    rehearsal = aioredis.Redis.from_url(rehearsal_redis_url(redis_url))
    try:
        async with buyer_session(url) as s:
            async with s.get("/api/shows") as r:
                assert (await r.json())["shows"] == []
            async with s.get("/shows/demo") as r:
                assert r.status == 200 and "Rehearsal" in await r.text()
            async with s.post(
                "/api/cart/items", json={"show": "demo", "sku": "MUG-01", "quantity": 2}
            ) as r:
                assert r.status == 200, await r.text()
            async with s.post(
                "/api/checkout", json={"name": "Rita", "email": "rita@example.com"}
            ) as r:
                assert r.status == 201, await r.text()
                order = await r.json()
        assert order["payment"]["sandbox"] is True  # the live key was not used
        assert int(await rehearsal.hget("stock:{demo}", "MUG-01")) == 38
        assert await real.hget("stock:{demo}", "MUG-01") is None  # the real show is untouched
        assert await real.exists(order_key(order["order_id"])) == 0
        assert await rehearsal.exists(order_key(order["order_id"])) == 1
    finally:
        proc.terminate()
        proc.wait(20)
        await rehearsal.flushdb()
        await real.aclose()
        await rehearsal.aclose()
