"""Guest-supplied strings made safe for a log line: :func:`escape`.

A host chooses every name it sends; logged raw, a newline in a name would forge a log line
and an ESC sequence would reach the operator's terminal. Every guest string goes through
:func:`escape` before it is logged.
"""

from __future__ import annotations

__all__ = ["escape"]


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with every non-printable character (``str.isprintable``: controls, line and
    paragraph separators, format characters, lone surrogates, ...) written as ``\\xNN``,
    ``\\uNNNN`` or ``\\UNNNNNNNN``. Printable characters, non-ASCII ones included, are kept,
    so the result is one line with no escape sequence in it. Backslashes are kept as they
    are: the result is for reading, not for parsing back.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)
