"""The catalog in Redis: manifest stock is the *starting* stock of a show.

``load_catalog`` only fills skus Redis does not know yet (HSETNX), so a restart never
resets stock that was already sold; ``set_stock`` is the explicit way to change it.
"""

from __future__ import annotations

from collections.abc import Mapping

from checkout import keys


async def load_catalog(redis, show_id: str, starting_stock: Mapping[str, int]) -> None:
    """``starting_stock``: sku -> the manifest's stock."""
    pipe = redis.pipeline(transaction=True)
    for sku, stock in starting_stock.items():
        pipe.hsetnx(keys.stock(show_id), sku, stock)
    await pipe.execute()


async def set_stock(redis, show_id: str, sku: str, available: int) -> None:
    """Set how many units can still be added to carts (holds and sold units aside)."""
    await redis.hset(keys.stock(show_id), sku, available)


async def stock_levels(redis, show_id: str) -> dict[str, int]:
    raw = await redis.hgetall(keys.stock(show_id))
    return {k.decode(): int(v) for k, v in raw.items()}
