"""The pure chat core: text and names, blocked words, slow mode, per-IP window,
moderation transitions, and the manifest's [chat] table."""

from __future__ import annotations

import pytest

from server.chat import rules
from server.chat.rules import ChatSettings, ModState, PostSnapshot, Refused
from server.config import ManifestError, load_manifest
from tests.conftest import manifest_text


def test_text_is_trimmed_and_control_or_format_characters_refused():
    assert rules.clean_text("  hi there  ") == "hi there"
    assert rules.clean_text("x" * 200) == "x" * 200
    assert rules.clean_text("family 👨\u200d👩\u200d👧 ok") == "family 👨\u200d👩\u200d👧 ok"
    for bad in ("", " ", "x" * 201, "a\u200db", "\u202eabc", "a\u200bb", "a\x1bb", "a\u2029b"):
        with pytest.raises(Refused) as exc:
            rules.clean_text(bad)
        assert exc.value.code == "bad_request"
    assert "U+202E" in rules.bad_character("x\u202e") and rules.bad_character("ok") is None
    with pytest.raises(Refused):
        rules.clean_name("n" * 33)


def test_blocked_words_match_whole_words_in_any_case_or_width():
    words = rules.clean_blocked_words(["Scam", "buy followers", "scam"])
    assert words == ("scam", "buy followers")
    assert rules.blocked_word_in("total SCAM!", words) == "scam"
    assert rules.blocked_word_in("ｓｃａｍ", words) == "scam"
    assert rules.blocked_word_in("buy    Followers now", words) == "buy followers"
    assert rules.blocked_word_in("sc\u200dam", words) == "scam"
    assert rules.blocked_word_in("scampi and scams", words) is None


def test_slow_mode_and_ip_window():
    assert rules.slow_mode_wait_ms(None, 10_000, 30) == 0
    assert rules.slow_mode_wait_ms(10_000, 12_000, 30) == 28_000
    assert rules.slow_mode_wait_ms(10_000, 40_000, 30) == 0
    assert rules.slow_mode_wait_ms(10_000, 10_400, 0) == 600  # the one-a-second floor
    window = 60_000
    assert rules.ip_wait_ms((1, 2), 100, 3, window) == 0
    assert rules.ip_wait_ms((1_000, 2_000, 3_000), 10_000, 3, window) == 51_000
    assert rules.ip_wait_ms((1_000, 2_000, 3_000), 62_000, 3, window) == 0  # slid out
    assert rules.ip_wait_ms((1, 2, 3), 10, 0, window) == 0  # no limit


def test_moderation_transitions():
    now = 1_000_000
    s = rules.moderate(ModState(), "timeout", 5, now)
    assert s.timed_out(now) and not s.banned and s.ttl_ms(now) == 300_000
    assert not s.timed_out(now + 300_000) and s.clear(now + 300_000)
    s = rules.moderate(s, "ban", None, now)
    assert s.banned and s.ttl_ms(now) is None
    s = rules.moderate(s, "timeout", 1, now)  # a timeout does not lift a ban
    assert s.banned
    assert rules.moderate(s, "unban", None, now) == ModState()
    author = rules.author_handle(b"k", "viewer-1")
    assert rules.parse_moderation({"action": "ban", "author": author}).minutes is None
    with pytest.raises(Refused):
        rules.parse_moderation({"action": "timeout", "author": author, "minutes": 0})


def test_check_post_order_of_refusals():
    ok = PostSnapshot("Ana", ModState(), None, (), ChatSettings(10, ("scam",)), 2)
    rules.check_post(ok, "hello", 5_000)
    cases = [
        (PostSnapshot(None, ModState(), None, (), ok.settings, 2), "hello", "name_required"),
        (PostSnapshot("Ana", ModState(banned=True), None, (), ok.settings, 2), "hi", "forbidden"),
        (PostSnapshot("Ana", ModState(False, 9_000), None, (), ok.settings, 2), "hi", "forbidden"),
        (ok, "a scam", "bad_request"),
        (PostSnapshot("Ana", ModState(), 1_000, (), ok.settings, 2), "hi", "rate_limited"),
        (PostSnapshot("Ana", ModState(), None, (1, 2), ok.settings, 2), "hi", "rate_limited"),
    ]
    for snap, text, code in cases:
        with pytest.raises(Refused) as exc:
            rules.check_post(snap, text, 5_000)
        assert exc.value.code == code, snap
    with pytest.raises(Refused) as exc:
        rules.check_post(cases[4][0], "hi", 5_000)
    assert exc.value.retry_after_s == 6


def test_manifest_chat_table(tmp_path):
    path = tmp_path / "show.toml"
    path.write_text(
        manifest_text("demo", extra_show='[chat]\nslow_mode_s = 5\nblocked_words = ["Scam"]')
    )
    show = load_manifest(path)
    assert show.chat.slow_mode_s == 5 and show.chat.blocked_words == ("scam",)
    for table, key in (
        ("[chat]\nslow_mode_s = 301", "chat.slow_mode_s"),
        ('[chat]\nblocked_words = "scam"', "chat.blocked_words"),
        ("[chat]\nslowmode = 3", "chat.slowmode"),
    ):
        path.write_text(manifest_text("demo", extra_show=table))
        with pytest.raises(ManifestError) as exc:
            load_manifest(path)
        assert exc.value.key == key
