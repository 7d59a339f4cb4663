"""Lua scripts issued together share pipelines, and each caller still gets its own answer."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from checkout import carts, keys, scripts
from server.embedded import free_port
from server.redis_pipelining import CoalescingRedis


async def _connections(redis_url: str, name: str) -> int:
    admin = aioredis.Redis.from_url(redis_url)
    try:
        return sum(1 for c in await admin.client_list() if c.get("name") == name)
    finally:
        await admin.aclose()


async def _flash_drop(client, buyers: int, stock: int, who: str = "v") -> list[str]:
    await client.hset(keys.stock("drop"), "TEE-1", stock)

    async def buy(i: int) -> str:
        added = await carts.add_item(
            client,
            f"{who}{i}",
            "drop",
            "TEE-1",
            1,
            price_cents=1000,
            per_buyer_limit=1,
            hold_seconds=600,
        )
        return added.result

    return await asyncio.gather(*(buy(i) for i in range(buyers)))


@pytest.mark.parametrize("client_class", [CoalescingRedis, aioredis.Redis])
async def test_a_burst_of_adds_uses_a_few_connections_and_sells_exact_stock(
    redis_url, client_class
):
    """300 buyers at once for 100 units: each gets its own yes/no, exactly 100 yes. One by
    one, plain redis-py opens a connection per waiting buyer; coalesced, a handful."""
    client = client_class.from_url(redis_url, client_name="burst", max_connections=1024)
    try:
        await client.script_load(scripts.ADD_TO_CART)
        results = await _flash_drop(client, buyers=300, stock=100)
        connections = await _connections(redis_url, "burst")
    finally:
        await client.aclose()
    assert results.count("ok") == 100
    assert results.count("sold_out") == 200
    if client_class is CoalescingRedis:
        assert connections <= CoalescingRedis.MAX_IN_FLIGHT
    else:  # the baseline the coalescing exists for (shows this test can tell them apart)
        assert connections > 50


async def test_an_error_reaches_only_its_own_caller(redis_url):
    client = CoalescingRedis.from_url(redis_url)
    try:
        await client.script_load(scripts.REMOVE_FROM_CART)
        good = [
            client.evalsha(scripts.remove_from_cart.sha, 2, "cart:x", "holds", "x", "s|k", 0)
            for _ in range(20)
        ]
        bad = client.evalsha("0" * 40, 0)
        results = await asyncio.gather(*good, bad, return_exceptions=True)
    finally:
        await client.aclose()
    assert all(r == 0 for r in results[:-1]), results
    assert isinstance(results[-1], NoScriptError)


async def test_scripts_reload_after_redis_forgets_them(redis_url):
    """A restarted Redis has no scripts: every waiting caller must still get an answer,
    and reloading the script must not open a connection per caller."""
    client = CoalescingRedis.from_url(redis_url, client_name="reload")
    try:
        assert (await _flash_drop(client, buyers=10, stock=5)).count("ok") == 5
        await client.script_flush()
        await client.delete(keys.stock("drop"))
        results = await _flash_drop(client, buyers=50, stock=20, who="after-restart-")
        connections = await _connections(redis_url, "reload")
    finally:
        await client.aclose()
    assert results.count("ok") == 20 and results.count("sold_out") == 30
    assert connections <= CoalescingRedis.MAX_IN_FLIGHT


async def test_a_caller_that_gives_up_does_not_disturb_the_others(redis_url):
    client = CoalescingRedis.from_url(redis_url)
    try:
        await client.hset(keys.stock("drop"), "TEE-1", 1000)
        tasks = [
            asyncio.create_task(
                carts.add_item(
                    client,
                    f"v{i}",
                    "drop",
                    "TEE-1",
                    1,
                    price_cents=1000,
                    per_buyer_limit=None,
                    hold_seconds=600,
                )
            )
            for i in range(50)
        ]
        await asyncio.sleep(0)
        tasks[7].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        held = 1000 - int(await client.hget(keys.stock("drop"), "TEE-1"))
    finally:
        await client.aclose()
    assert isinstance(results[7], asyncio.CancelledError)
    answered = [r for r in results if isinstance(r, carts.AddResult)]
    assert len(answered) == 49 and all(r.result == "ok" for r in answered)
    # The cancelled caller's script may still have run in Redis; nothing else was lost.
    assert held in (49, 50)


async def test_redis_down_fails_every_caller_quickly():
    client = CoalescingRedis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=1)
    try:
        calls = [client.evalsha(scripts.add_to_cart.sha, 0) for _ in range(5)]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 15)
    finally:
        await client.aclose()
    assert all(isinstance(r, RedisConnectionError) for r in results), results


async def test_more_callers_than_one_batch_all_get_answers(redis_url):
    callers = 3 * CoalescingRedis.MAX_BATCH + 7
    client = CoalescingRedis.from_url(redis_url, client_name="big")
    try:
        results = await asyncio.wait_for(_flash_drop(client, buyers=callers, stock=1000), 30)
        connections = await _connections(redis_url, "big")
    finally:
        await client.aclose()
    assert results.count("ok") == 1000 and results.count("sold_out") == callers - 1000
    assert connections <= CoalescingRedis.MAX_IN_FLIGHT
