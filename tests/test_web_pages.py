"""The pages themselves: who may open them, product images, and escaping of everything
that comes from manifests, buyers and hosts (checked in a real headless Chromium)."""

from __future__ import annotations

import io
import time

import aiohttp
import pytest
from PIL import Image

from checkout.orders import Order, OrderItem, Status, save_new_order
from server import keys
from tests.conftest import STAFF_PASSWORD, buyer_session, http_login, manifest_text
from tests.test_web_support import DESKTOP, PHONE, JsErrors, chromium, new_page, staff_login

XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


def stranger(app) -> aiohttp.ClientSession:
    return buyer_session(app.url)


async def make_order(app, show: str = "demo", buyer: str = "Grace Hopper", status=Status.PAID):
    order = Order(
        order_id=f"ord{int(time.time() * 1e6)}",
        show=show,
        viewer="someone",
        status=status,
        items=[OrderItem("MUG-01", "Stoneware mug", 1, 1800)],
        amount_cents=1800,
        currency="usd",
        buyer_name=buyer,
        buyer_email="buyer@example.com",
        number=7,
        paid_at=time.time(),
    )
    await save_new_order(app.app[keys.REDIS], order)
    return order


async def test_host_and_staff_pages_and_apis_refuse_strangers(make_app, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text(manifest_text("other").replace(STAFF_PASSWORD, "other-staff-pw"))
    demo = tmp_path / "demo.toml"
    demo.write_text(manifest_text("demo"))
    app = await make_app([demo, other])
    order = await make_order(app, buyer="Secret Buyer")
    async with stranger(app) as s:
        for path in ("/shows/demo/host", "/staff", f"/staff/orders/{order.order_id}"):
            async with s.get(path, allow_redirects=False) as r:
                assert r.status == 302, path
                assert r.headers["Location"].startswith("/login?next=")
            async with s.get(path) as r:  # following the redirect: the login form only
                html = await r.text()
                assert 'type="password"' in html and "Secret Buyer" not in html
        for method, path in (
            ("POST", "/api/shows/demo/feature"),
            ("POST", "/api/shows/demo/drops"),
            ("GET", "/api/orders?show=demo"),
            ("POST", f"/api/orders/{order.order_id}/fulfil"),
            ("POST", f"/api/orders/{order.order_id}/reprint"),
            ("GET", "/api/printers"),
        ):
            async with s.request(method, path, json={"sku": "MUG-01"}) as r:
                assert r.status == 401, (method, path)
                assert (await r.json())["error"] == "unauthorized"
        async with s.get(f"/api/orders/{order.order_id}") as r:
            assert r.status == 404  # someone else's order is not even confirmed to exist

        # Staff of another show: no host page, and the order page does not show the order.
        async with await http_login(s, "other-staff-pw", allow_redirects=False) as r:
            assert r.status == 302
        async with s.get("/shows/demo/host", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"].startswith("/login")
        async with s.get(f"/staff/orders/{order.order_id}") as r:
            assert r.status == 404 and "Secret Buyer" not in await r.text()
        async with s.get("/shows/other/host") as r:
            assert r.status == 200
            html = await r.text()
            assert "Host · Test Show other" in html

    # The show's own staff see the order page with its Fulfil button.
    async with stranger(app) as s:
        async with await http_login(s, "wrong") as r:
            assert r.status == 401 and "not right" in await r.text()
        async with await http_login(s, STAFF_PASSWORD) as r:
            assert r.status == 200 and str(r.url).endswith("/staff")
        async with s.get(f"/staff/orders/{order.order_id}") as r:
            html = await r.text()
            assert r.status == 200 and "Secret Buyer" in html and "Fulfil" in html
        async with s.get("/login?next=https://evil.example/") as r:
            assert 'value="/staff"' in await r.text()  # never an off-site redirect


async def test_product_images_from_manifest_or_placeholder(make_app, tmp_path):
    Image.new("RGB", (800, 400), (200, 10, 10)).save(tmp_path / "mug.webp", lossless=True)
    products = """
    [[products]]
    sku = "MUG-01"
    name = "Stoneware mug"
    price = "18.00"
    stock = 4
    image = "mug.webp"

    [[products]]
    sku = "TEE-02"
    name = "Crewneck tee"
    price = "32.00"
    stock = 5
    """
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo", products=products))
    app = await make_app([path])
    async with app.session.get("/api/shows/demo") as r:
        urls = {p["sku"]: p["image_url"] for p in (await r.json())["products"]}
    async with app.session.get(urls["MUG-01"]) as r:
        assert r.status == 200 and r.content_type == "image/png"
        img = Image.open(io.BytesIO(await r.read()))
        assert img.format == "PNG" and img.size == (480, 240)  # scaled, aspect kept
        assert img.convert("RGB").getpixel((240, 120)) == (200, 10, 10)
    async with app.session.get(urls["TEE-02"]) as r:
        assert r.status == 200
        img = Image.open(io.BytesIO(await r.read())).convert("RGB")
        assert img.size == (480, 480)
        # A generated card: a dark background with white lettering on it.
        colours = {c for _, c in img.getcolors(1 << 16)}
        assert (255, 255, 255) in colours and img.getpixel((5, 5)) != (255, 255, 255)
    for bad in ("/media/products/demo/NOPE.png", "/media/products/nope/MUG-01.png"):
        async with app.session.get(bad) as r:
            assert r.status == 404


@pytest.mark.timeout(120)
async def test_names_buyers_and_ticker_are_shown_as_text_never_run(make_app, tmp_path, artifacts):
    products = f"""
    [[products]]
    sku = "EVIL-1"
    name = '{XSS}'
    price = "5.00"
    stock = 3
    """
    path = tmp_path / "demo.toml"
    path.write_text(
        manifest_text("demo", products=products).replace('"Test Show demo"', f"'{XSS}'")
    )
    app = await make_app([path])
    await make_order(app, buyer=XSS)
    async with app.session.post(
        "/api/shows/demo/feature", json={"sku": "EVIL-1"}, headers=app.auth()
    ) as r:
        assert r.status == 200
    errors = JsErrors()
    async with chromium(app) as browser:
        _, viewer = await new_page(browser, errors, "viewer", PHONE)
        await viewer.goto(f"{app.url}/shows/demo")
        await viewer.locator("#f-name").filter(has_text="<script>").wait_for()
        # A ticker message reaches the page through the live events.
        await app.app[keys.BUS].publish("demo", {"type": "ticker", "text": XSS})
        await viewer.locator("#ticker").filter(has_text="onerror").wait_for()
        await viewer.screenshot(path=artifacts / "web_xss_viewer.png", full_page=True)
        assert await viewer.locator("#f-name").text_content() == XSS
        assert await viewer.locator("header h1").text_content() == XSS
        assert XSS in await viewer.title()

        _, staff = await new_page(browser, errors, "staff", DESKTOP)
        await staff_login(staff, app.url, "/staff")
        card = staff.locator(".order-card .buyer")
        await card.first.wait_for()
        assert await card.first.text_content() == XSS
        await staff.locator(".order-card a", has_text="Open").first.click()
        await staff.wait_for_url("**/staff/orders/*")
        assert await staff.locator("#buyer").text_content() == XSS
        await staff.screenshot(path=artifacts / "web_xss_staff_order.png", full_page=True)
        await staff.goto(f"{app.url}/shows/demo/host")
        await staff.locator(".host-product strong").filter(has_text="<img").wait_for()
        await staff.goto(f"{app.url}/")
        assert await staff.locator(".show-link").text_content() == XSS

        for page in (viewer, staff):
            assert await page.evaluate("window.__pwned") is None
            assert await page.locator("img[src='x']").count() == 0
    assert errors.unexpected() == []


@pytest.mark.timeout(60)
async def test_every_page_loads_without_javascript_errors(make_app, artifacts):
    app = await make_app()
    order = await make_order(app)
    errors = JsErrors()
    async with chromium(app) as browser:
        _, page = await new_page(browser, errors, "pages", DESKTOP)
        await page.goto(f"{app.url}/")
        await page.get_by_role("link", name="Test Show demo").click()
        await page.wait_for_url("**/shows/demo")
        await page.locator("#stage-title").filter(has_text="Starting soon").wait_for()
        # Keyboard only: Tab from the top reaches the mug's Add button, with a visible
        # focus ring, and Enter puts it in the cart.
        for _ in range(20):
            await page.keyboard.press("Tab")
            label = await page.evaluate("document.activeElement.getAttribute('aria-label')")
            if label == "Add Stoneware mug to cart":
                break
        assert label == "Add Stoneware mug to cart"
        outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline == "solid"
        await page.keyboard.press("Enter")
        await page.locator("#cart-bar-text").filter(has_text="1 item").wait_for()
        await page.get_by_role("button", name="View cart").click()
        await page.locator(".cart-item").filter(has_text="1 × Stoneware mug").wait_for()
        await staff_login(page, app.url, "/staff")
        await page.locator(f'.order-card[data-order="{order.order_id}"]').wait_for()
        await page.screenshot(path=artifacts / "web_staff.png", full_page=True)
        await page.goto(f"{app.url}/shows/demo/host")
        await page.locator(".host-product").first.wait_for()
        await page.screenshot(path=artifacts / "web_host.png", full_page=True)
        await page.goto(f"{app.url}/staff/orders/{order.order_id}")
        await page.locator("#fulfil").wait_for()
        # Keyboard only: Tab reaches the Fulfil button, Enter fulfils the order.
        await page.locator("#fulfil").focus()
        await page.keyboard.press("Enter")
        await page.locator("#status").filter(has_text="fulfilled").wait_for()
        # Logging out ends the session: the staff page asks for the password again.
        await page.goto(f"{app.url}/staff")
        await page.get_by_role("button", name="Log out").click()
        await page.goto(f"{app.url}/staff")
        assert "/login" in page.url
    assert errors.unexpected() == []
