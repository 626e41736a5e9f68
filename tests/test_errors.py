"""imgrate.errors: untrusted text is shown with its control characters escaped."""

from __future__ import annotations

import pytest

from imgrate.errors import safe_text


@pytest.mark.parametrize("text", ["IMG 0001 [edit].jpg", "café 😀 ünïcode.jpg", "a'b\"c\\d"])
def test_printable_text_is_kept_as_it_is(text: str) -> None:
    assert safe_text(text) == text


@pytest.mark.parametrize(("text", "shown"), [
    ("\x1b[2J\x1b[32mALL CLEAN", "\\x1b[2J\\x1b[32mALL CLEAN"),  # clear screen, green
    ("\x1b]8;;http://evil\x07click\x1b]8;;\x07", "\\x1b]8;;http://evil\\x07click\\x1b]8;;\\x07"),  # OSC-8 link
    ("two\nlines\r", "two\\nlines\\r"),
    ("photo\u202egpj.exe", "photo\\u202egpj.exe"),  # right-to-left override
    ("\x9b31m", "\\x9b31m"),  # the 8-bit CSI
    ("zero\u200bwidth", "zero\\u200bwidth"),
])
def test_control_and_invisible_characters_are_escaped(text: str, shown: str) -> None:
    assert safe_text(text) == shown
    assert all(c.isprintable() for c in safe_text(text))
