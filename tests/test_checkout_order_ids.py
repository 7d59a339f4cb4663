"""Order ids name their show (``ord_{show}__{hex}``): the longest show slug a manifest
allows still gives an order every path opens."""

from __future__ import annotations

import pytest

from checkout import keys
from server import keys as app_keys
from server import links
from tests.test_checkout_payments import checkout

pytestmark = pytest.mark.timeout(60)

LONGEST = "s" + "-long" * 12 + "-sh"  # 64 characters, the most a slug may have


async def test_an_order_of_the_longest_show_slug_opens_everywhere(
    make_app, write_manifest, stripe_sandbox
):
    assert len(LONGEST) == 64
    app = await make_app([write_manifest(LONGEST)], stripe_api_base=stripe_sandbox.url)
    s = app.session
    async with s.post(
        "/api/cart/items", json={"show": LONGEST, "sku": "MUG-01", "quantity": 1}
    ) as r:
        assert r.status == 200, await r.text()
    order_id = (await checkout(s))["order_id"]
    assert keys.order_show(order_id) == LONGEST and len(order_id) <= keys.ORDER_ID_MAX
    async with s.get(f"/api/orders/{order_id}") as r:
        assert r.status == 200 and (await r.json())["order_id"] == order_id
    token = links.order_token(app.app[app_keys.SECRET], order_id)
    async with s.get(f"/orders/{order_id}", params={"t": token}) as r:
        assert r.status == 200, await r.text()
    async with s.get(f"/api/orders/{order_id}/x" + "y" * 200) as r:
        assert r.status == 404
