"""What the views show of the store's text: every character that would act, hide or reorder, escaped.

The one escaping rule of the terminal views (`text`) and the HTML page (`html`). A span's name, its
attributes and the app's log records are written by whoever sent the request, so what they hold is
shown as text a person can see and nothing else:

- what a terminal acts on instead of showing: C0 controls (ESC starts colour, cursor, title and
  clipboard sequences; a newline would forge a tree line), DEL, C1 controls (U+009B is a one-byte
  CSI), the line and paragraph separators;
- the bidirectional controls, which reorder what is shown around them;
- what shows nothing at all: zero-width characters (spaces, joiners, the word joiner and invisible
  operators, the BOM), the soft hyphen, Hangul fillers, and Unicode tag characters (U+E0000 to
  U+E007F: a whole sentence can be written in them, invisible on screen and read by whatever copies
  the text).

Each is written as a Python-style escape (`\\x1b`, `\\n`, `\\u200b`, `\\U000e0041`), so the text
stays one line, and two strings that look alike on screen can be told apart.

Stdlib only, like the rest of the viewer.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["visible", "visible_data"]

_INVISIBLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
    "\u2028-\u202e\u2060-\u206f\u3164\ufeff\uffa0\ufff0-\ufffb\U000e0000-\U000e007f]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def visible(text: str) -> str:
    """`text` with every control and invisible character written as an escape (`\\x1b`, `\\u200b`)."""
    return _INVISIBLE.sub(_escape, text)


def visible_data(value: Any, *, lines: frozenset[str] = frozenset()) -> Any:
    """`value` (JSON data) with `visible` applied to every string in it, mapping keys included; the
    values under a key in `lines` keep their line breaks (each line escaped on its own)."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, dict):
        return {
            visible(str(key)): (
                "\n".join(visible(line) for line in item.split("\n"))
                if key in lines and isinstance(item, str)
                else visible_data(item, lines=lines)
            )
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [visible_data(item, lines=lines) for item in value]
    return value
