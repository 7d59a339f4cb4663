"""Chat, moderation and hearts in real browsers: two viewers chat, a third joins and sees
the history, the host deletes a message (gone everywhere within a second), bans a viewer
(whose next message is refused, with a message saying so), blocks a word, turns on slow
mode (a countdown) and pins a message; payloads are shown as text; hearts float."""

from __future__ import annotations

import re
import time

import pytest
from playwright.async_api import Page, expect

from tests.test_web_support import DESKTOP, PHONE, JsErrors, chromium, new_page, staff_login

XSS = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


async def say(page: Page, text: str) -> None:
    await page.get_by_label("Chat message").fill(text)
    await page.get_by_role("button", name="Send", exact=True).click()


async def first_say(page: Page, text: str, name: str) -> None:
    """The first message asks for a display name once, then goes out."""
    await say(page, text)
    await page.get_by_label(re.compile("Display name")).fill(name)
    await page.get_by_role("button", name="Save and send").click()


def msg(page: Page, text: str):
    return page.locator("#chat-list li", has_text=text)


@pytest.mark.timeout(120)
async def test_chat_moderation_and_hearts_across_viewers(make_app, artifacts):
    app = await make_app()
    errors = JsErrors()
    async with chromium(app) as browser:
        _, ann = await new_page(browser, errors, "ann", PHONE, is_mobile=True, has_touch=True)
        _, bob = await new_page(browser, errors, "bob", PHONE, is_mobile=True, has_touch=True)
        for page in (ann, bob):
            await page.goto(f"{app.url}/shows/demo")
        await first_say(ann, "Hello from Ann", "Ann")
        await expect(msg(bob, "Hello from Ann")).to_contain_text("Ann")
        await expect(msg(ann, "Hello from Ann")).to_be_visible()
        await first_say(bob, "Hi Ann, nice mug", "Bob")
        await expect(msg(ann, "nice mug")).to_contain_text("Bob")
        # Everything typed is text: links, tags and scripts are shown, never run.
        await ann.wait_for_timeout(1100)  # one message a second per viewer at most
        await say(ann, XSS)
        await expect(msg(bob, "onerror")).to_have_count(1)
        assert await msg(bob, "onerror").locator(".chat-text").text_content() == XSS

        # A third viewer joins and sees the history.
        _, cy = await new_page(browser, errors, "cy", PHONE, is_mobile=True)
        await cy.goto(f"{app.url}/shows/demo")
        await expect(msg(cy, "Hello from Ann")).to_be_visible()
        await expect(msg(cy, "nice mug")).to_be_visible()
        await expect(cy.locator("#chat-list li")).to_have_count(3)
        await ann.screenshot(path=artifacts / "web_chat_phone.png")

        # The host deletes Ann's message: gone on both viewers within a second.
        _, host = await new_page(browser, errors, "host", DESKTOP)
        await staff_login(host, app.url, "/shows/demo/host")
        hosted = host.locator("#host-chat-list li", has_text="Hello from Ann")
        await expect(hosted).to_be_visible()
        await host.screenshot(path=artifacts / "web_host_chat.png", full_page=True)
        started = time.monotonic()
        await hosted.get_by_role("button", name="Delete the message of Ann").click()
        await expect(msg(ann, "Hello from Ann")).to_have_count(0, timeout=2000)
        await expect(msg(bob, "Hello from Ann")).to_have_count(0, timeout=2000)
        assert time.monotonic() - started < 1.5  # click to gone on both (incl. polling)
        await expect(msg(cy, "Hello from Ann")).to_have_count(0)

        # The host speaks in the chat: badged as the host on every viewer's screen.
        await host.get_by_label("Say something as the host").fill("Welcome, everyone!")
        await host.get_by_role("button", name="Send", exact=True).click()
        await expect(msg(ann, "Welcome, everyone!").locator(".chat-role.host")).to_have_text("Host")

        # The host pins Bob's message: every viewer sees it pinned.
        bobs = host.locator("#host-chat-list li", has_text="nice mug")
        await bobs.get_by_role("button", name="Pin the message of Bob").click()
        await expect(ann.locator("#pinned")).to_contain_text("nice mug")
        await expect(cy.locator("#pinned")).to_contain_text("Bob")

        # Ban: Bob's next message is refused and he is told so.
        await bobs.get_by_role("button", name="Ban Bob").click()
        await expect(host.locator("#host-muted-list")).to_contain_text("Bob · banned")
        await say(bob, "Am I still here?")
        await expect(bob.locator("#chat-error")).to_contain_text("You can't chat right now")
        await expect(msg(ann, "Am I still here")).to_have_count(0)
        await bob.screenshot(path=artifacts / "web_chat_banned.png")
        await host.get_by_role("button", name="Unban Bob").click()
        await expect(host.locator("#host-muted")).to_be_hidden()

        # Blocked words, then slow mode with a countdown from Retry-After.
        await host.get_by_label("Blocked words (one per line)").fill("spoiler")
        await host.get_by_role("button", name="Save chat settings").click()
        await expect(host.locator("#notice")).to_contain_text("Chat settings saved")
        await say(cy, "big spoiler ahead")
        await expect(cy.get_by_label(re.compile("Display name"))).to_be_visible()
        await cy.get_by_label(re.compile("Display name")).fill("Cy")
        await cy.get_by_role("button", name="Save and send").click()
        await expect(cy.locator("#chat-error")).to_contain_text(
            re.compile("spoiler|blocked|not allowed", re.I)
        )
        await host.get_by_label(re.compile("Slow mode")).fill("30")
        await host.get_by_role("button", name="Save chat settings").click()
        await expect(host.locator("#notice")).to_contain_text("slow mode 30 s")
        await say(cy, "first one")
        await expect(msg(ann, "first one")).to_be_visible()
        await say(cy, "second one")
        error = cy.locator("#chat-error")
        await expect(error).to_contain_text(re.compile(r"Slow mode is on: .* in \d+ s"))
        await expect(cy.locator("#chat-send")).to_be_disabled()
        first = await error.text_content()
        await expect(error).not_to_have_text(first or "", timeout=3000)  # it counts down
        await cy.screenshot(path=artifacts / "web_chat_slow_mode.png")

        # Hearts: a tap floats up on everyone's screen and the host sees the rate.
        await ann.get_by_role("button", name="Send a heart").tap()
        await expect(bob.locator(".float-heart").first).to_be_attached(timeout=5000)
        await expect(host.locator("#n-hearts")).not_to_have_text("0", timeout=8000)

        for page in (ann, bob, cy, host):
            assert await page.evaluate("window.__pwned") is None
            assert await page.locator("img[src='x']").count() == 0
    assert errors.unexpected("status of 403", "status of 400", "status of 429") == []


@pytest.mark.timeout(60)
async def test_host_page_fits_a_phone(make_app, artifacts):
    app = await make_app()
    errors = JsErrors()
    async with chromium(app) as browser:
        _, host = await new_page(browser, errors, "host", PHONE, is_mobile=True, has_touch=True)
        await staff_login(host, app.url, "/shows/demo/host")
        await host.locator(".host-product").first.wait_for()
        width = await host.evaluate("document.documentElement.scrollWidth")
        wide = await host.evaluate(
            "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right"
            " > 391).slice(0, 12).map(e => e.tagName + '#' + e.id + '.' + e.className)"
        )
        assert width <= PHONE["width"], (width, wide)
        await host.screenshot(path=artifacts / "web_host_phone.png", full_page=True)
    assert errors.unexpected() == []
