"""Text that came from the network: what a name may be, and how any such text is shown.

Names (parties, peers, devices) are checked where they enter (``printable_name``): bounded,
printable, with no control character (C0, DEL, C1) and no bidirectional override that would
make a terminal or a log show something else than what is there. Everything else from the
network is passed through ``shown`` wherever it is printed (terminal, tables and their titles,
log lines): controls and overrides become visible ``\\x..``/``\\u....`` escapes, so a record
stays one line and no escape sequence reaches a terminal.
"""

from __future__ import annotations

import re

MAX_NAME_CHARS = 64

# C0 controls, DEL, C1 controls (U+009B is a one-byte CSI), bidi embeddings and overrides,
# bidi isolates, line and paragraph separators, and the BOM / zero-width no-break space.
UNSAFE = "\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029\ufeff"
_UNSAFE = re.compile(f"[{UNSAFE}]")
_NAME = re.compile(f"[^{UNSAFE}]{{1,{MAX_NAME_CHARS}}}")


def printable_name(text: object, max_chars: int = MAX_NAME_CHARS) -> bool:
    """Whether ``text`` may be a name: 1 to ``max_chars`` characters, none of them unsafe."""
    return isinstance(text, str) and 0 < len(text) <= max_chars and _NAME.fullmatch(text) is not None


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def shown(text: object) -> str:
    """``text`` as it may be printed: every unsafe character replaced by a visible escape."""
    return _UNSAFE.sub(_escape, text if isinstance(text, str) else str(text))


def one_line(record: dict) -> None:  # type: ignore[type-arg]
    """A loguru patcher: a log record's message is one line, with nothing a terminal obeys."""
    record["message"] = shown(record["message"])
