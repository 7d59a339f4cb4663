"""Auctions in the browser: the host starts one from the host page and sees bids live; a
viewer on a phone bids with one tap (name and test card asked on the first bid), sees
"you're winning", then "outbid" when someone bids over them, and the end. In live mode
the card is saved through Stripe.js's card field and a SetupIntent."""

from __future__ import annotations

import uuid

import pytest
from playwright.async_api import expect

from tests.conftest import buyer_session, wait_until
from tests.test_auctions import current, print_jobs, sandbox_intents, start, wait_settled
from tests.test_web_support import (
    DESKTOP,
    PHONE,
    JsErrors,
    PrinterSocket,
    chromium,
    new_page,
    printer_toml,
    staff_login,
)

pytestmark = pytest.mark.timeout(120)

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}


async def test_bid_from_the_phone_player_and_watch_it_on_the_host_page(
    make_app, stripe_sandbox, artifacts
):
    app = await make_app(stripe_api_base=stripe_sandbox.url, print_worker=False)
    errors = JsErrors()
    async with chromium(app) as browser:
        _, host = await new_page(browser, errors, "host", DESKTOP)
        await staff_login(host, app.url, "/shows/demo/host")
        await host.locator("#auction-duration").fill("60")
        await host.get_by_role("button", name="Start auction").click()
        await expect(host.locator("#host-auction")).to_contain_text("no bids yet", timeout=10_000)

        _, viewer = await new_page(browser, errors, "viewer", PHONE)
        response = await viewer.goto(f"{app.url}/shows/demo")
        # Sandbox mode: the page loads scripts from this server only (no Stripe.js).
        assert "script-src 'self';" in response.headers["content-security-policy"]
        panel = viewer.locator("#auction")
        await expect(panel).to_be_visible(timeout=10_000)
        await expect(viewer.locator("#a-bid-next")).to_have_text("Bid $10.00")
        await viewer.locator("#a-bid-next").click()
        await viewer.locator("#a-display-name").fill("Ana")
        await viewer.get_by_role("button", name="Save name").click()
        assert await viewer.locator("#a-card-element").is_hidden()
        await viewer.locator("#a-card").fill("4242 4242 4242 4242")
        await viewer.locator("#a-exp").fill("12/31")
        await viewer.locator("#a-cvc").fill("123")
        await viewer.get_by_role("button", name="Save card").click()
        await expect(viewer.locator("#a-you")).to_have_text("You're winning", timeout=10_000)
        await expect(host.locator("#host-auction")).to_contain_text("10.00 by Ana")
        await viewer.screenshot(path=artifacts / "auction_phone_winning.png")

        # Someone else bids over Ana: her page says so at once.
        async with buyer_session(app.url) as bo:
            async with bo.put("/api/me", json={"name": "Bo"}) as r:
                assert r.status == 200
            async with bo.post("/api/me/payment-method", json={"card": CARD}) as r:
                assert r.status == 200, await r.text()
            async with app.session.get("/api/shows/demo/auctions/current") as r:
                auction = await r.json()
            async with bo.post(
                f"/api/auctions/{auction['id']}/bids", json={"amount": "12.00"}
            ) as r:
                assert r.status == 201, await r.text()
        await expect(viewer.locator("#a-you")).to_have_text("You've been outbid", timeout=5_000)
        await expect(viewer.locator("#a-current")).to_have_text("$12.00")
        await expect(host.locator("#host-auction")).to_contain_text("2 bids")
        await viewer.screenshot(path=artifacts / "auction_phone_outbid.png")

        await host.get_by_role("button", name="Cancel the auction").click()
        await expect(viewer.locator("#a-you")).to_have_text(
            "The host cancelled this auction.", timeout=5_000
        )
        await host.screenshot(path=artifacts / "auction_host.png", full_page=True)
    # Expected answers the page handles: the first bid asking for a
    # name (400) and a card (402).
    assert errors.unexpected("status of 400", "status of 402") == []


@pytest.fixture
async def live_shop(make_app, write_manifest, stripe_sandbox, monkeypatch):
    """The server in live mode (a secret key: no sandbox card form, no test cards taken)
    whose Stripe is localstripe: its API for the server, its Stripe.js stand-in for the
    page (STRIPE_JS_URL), which renders its own card inputs where the card field mounts."""
    printer = await PrinterSocket().start()
    monkeypatch.setenv("STRIPE_PUBLISHABLE_KEY", "pk_test_" + uuid.uuid4().hex)
    monkeypatch.setenv("STRIPE_JS_URL", f"{stripe_sandbox.url}/js.stripe.com/v3/")
    manifest = write_manifest("demo", printers=printer_toml(printer.url))
    app = await make_app(
        [manifest],
        stripe_secret_key="sk_test_" + uuid.uuid4().hex,
        stripe_webhook_secret="whsec_" + uuid.uuid4().hex,
        stripe_api_base=stripe_sandbox.url,
    )
    yield app, printer
    await printer.stop()


async def fill_stripe_card(page, number: str) -> None:
    field = page.locator("#a-card-element")
    for placeholder, value in (
        ("number", number),
        ("exp_month", "12"),
        ("exp_year", "34"),
        ("cvc", "123"),
        ("postal_code", "10001"),
    ):
        await field.get_by_placeholder(placeholder, exact=True).fill(value)


async def test_live_mode_card_field_saves_the_card_and_the_winner_is_charged(
    live_shop, stripe_sandbox, redis_url, artifacts
):
    app, printer = live_shop
    status, a = await start(app, duration_s=20, extend_s=0)
    assert status == 201
    errors = JsErrors()
    async with chromium(app) as browser:
        _, viewer = await new_page(browser, errors, "viewer", PHONE)
        response = await viewer.goto(f"{app.url}/shows/demo")
        csp = response.headers["content-security-policy"]
        assert f"script-src 'self' {stripe_sandbox.url};" in csp
        assert f"connect-src 'self' https://api.stripe.com {stripe_sandbox.url}" in csp
        await expect(viewer.locator("#a-bid-next")).to_have_text("Bid $10.00", timeout=10_000)
        await viewer.locator("#a-bid-next").click()
        await viewer.locator("#a-display-name").fill("Ana")
        await viewer.get_by_role("button", name="Save name").click()
        # Live mode: Stripe's card field, not the test-card inputs.
        card = viewer.locator("#a-card-element")
        await expect(card.get_by_placeholder("number", exact=True)).to_be_visible(timeout=10_000)
        assert await viewer.locator("#a-card-test").is_hidden()

        # A declined card: Stripe's message in the panel, no bid, no card on file.
        await fill_stripe_card(viewer, "4000000000000002")
        await viewer.get_by_role("button", name="Save card").click()
        await expect(viewer.locator("#a-error")).to_have_text("Your card was declined.")
        await viewer.screenshot(path=artifacts / "auction_live_card_declined.png")
        state = await current(app)
        assert state["bids"] == 0 and state["current_bid"] is None
        assert await viewer.locator("#a-card-form").is_visible()

        # The right card: saved through a fresh SetupIntent, and the pending bid goes in.
        await fill_stripe_card(viewer, "4242424242424242")
        await viewer.get_by_role("button", name="Save card").click()
        await expect(viewer.locator("#a-you")).to_have_text("You're winning", timeout=10_000)
        await expect(viewer.locator("#a-card-form")).to_be_hidden()
        await viewer.screenshot(path=artifacts / "auction_live_card_saved.png")
        state = await current(app)
        assert (state["bids"], state["current_bid"], state["leader"]) == (1, "10.00", "Ana")

        # The end: Ana's saved card is charged off-session, the order paid, the label printed.
        done = await wait_settled(app, timeout=40)
        assert done["status"] == "sold" and done["winner"] == "Ana"
        await expect(viewer.locator("#a-you")).to_contain_text("You won!", timeout=5_000)
        await viewer.screenshot(path=artifacts / "auction_live_won.png")
    intents = await sandbox_intents(stripe_sandbox.url, done["order_id"].rsplit("_", 1)[0])
    assert [(pi["status"], pi["amount"]) for pi in intents] == [("succeeded", 1000)]
    assert intents[0]["payment_method"].startswith("pm_")
    await wait_until(lambda: b"Ana" in printer.received, 15)
    assert len(await print_jobs(redis_url, done["order_id"])) == 1
    r = await app.session.get(f"/api/orders/{done['order_id']}", headers=app.auth())
    order = await r.json()
    assert order["status"] in ("paid", "printed") and order["sandbox"] is False
    # Expected answers the page handles: the first bid asking for a name (400) and a
    # card (402), and Stripe's refusal of the declined card (402).
    assert errors.unexpected("status of 400", "status of 402") == []
