"""Text from buyers and hosts: which characters it may carry.

A name or a ticker line ends up on paper and on screen. Control characters (category
Cc) are printer commands on an ESC/POS printer (``ESC p`` opens the cash drawer, ``GS V``
cuts, ``GS ( E`` enters setup mode); format characters (Cf: bidi overrides, invisible
joiners and marks) and line/paragraph separators reorder or hide what staff read; lone
surrogates cannot be stored. The API rejects them (``unsafe_char``) and the label strips
them again (``clean``) for anything stored before the check existed.

ZWJ and ZWNJ (U+200D, U+200C) are allowed: emoji sequences and Persian or Indic names
need them, and they are not printer commands.
"""

from __future__ import annotations

import unicodedata

_ALLOWED_FORMAT = {"\u200c", "\u200d"}
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
WHITESPACE_CONTROLS = {"\t", "\n", "\r"}


def is_unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in _UNSAFE_CATEGORIES and ch not in _ALLOWED_FORMAT


def unsafe_char(text: str, allow_whitespace: bool = False) -> str | None:
    """The first character ``text`` must not carry, or None when it is clean.

    ``allow_whitespace`` lets tab, newline and carriage return through, for text that
    is folded onto one line before use (the ticker); one-line fields (names, emails)
    refuse them, since a newline on a label starts a line the buyer wrote."""
    if text.isascii() and text.isprintable():
        return None  # the common case, without a per-character lookup
    for ch in text:
        if is_unsafe(ch) and not (allow_whitespace and ch in WHITESPACE_CONTROLS):
            return ch
    return None


def clean(text: str) -> str:
    """``text`` without the characters ``unsafe_char`` rejects (tabs and line breaks
    become spaces)."""
    if unsafe_char(text) is None:
        return text
    return "".join(
        " " if ch in WHITESPACE_CONTROLS else ch
        for ch in text
        if ch in WHITESPACE_CONTROLS or not is_unsafe(ch)
    )


def describe(ch: str) -> str:
    """``U+001B`` (with its Unicode name when it has one), for error messages."""
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}" + (f" {name}" if name else "")
