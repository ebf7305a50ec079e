"""Untrusted text (class names, file paths, CSV cells) made safe where it leaves asymco.

A class folder or a CSV label can be named anything a file system allows, so a name may carry
terminal escape sequences (`\\x1b]8;;...` links, `\\x1b[2J` clearing the screen), line breaks that
forge extra log lines, or a leading `=` that a spreadsheet runs as a formula. `printable` is for
text shown on a terminal or in a log; `csv_cell` and `csv_value` are for text cells of the CSV
files asymco writes and reads back.
"""

from __future__ import annotations

import unicodedata

_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Bidirectional controls: they reorder what a terminal shows (the "Trojan Source" trick)."""

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a cell as a formula (OWASP's CSV injection list)."""


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
    if unicodedata.category(char) not in ("Cc", "Zl", "Zp") and char not in _BIDI:
        return char
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """`text` with every control character written as a visible escape (`\\x1b`, `\\n`,
    `\\u202e`): C0 and C1 controls, DEL, line and paragraph separators and bidirectional
    controls. Anything else, including non-Latin letters, is left as it is."""
    text = str(text)
    if text.isprintable():  # the usual case: nothing to escape (quick path)
        return text
    return "".join(_escaped(c) for c in text)


def csv_cell(text: str) -> str:
    """A text cell for a CSV asymco writes: one a spreadsheet would run as a formula (starting
    with =, +, -, @, tab or carriage return) gets an apostrophe in front, which spreadsheets
    show as text. A cell that already starts with an apostrophe gets one more, so `csv_value`
    gives every name back exactly. Numbers never pass through here: -0.5 stays a number."""
    if text.startswith(_FORMULA_START) or text.startswith("'"):
        return "'" + text
    return text


def csv_value(cell: str) -> str:
    """The text `csv_cell` was given: one leading apostrophe removed, if there is one."""
    return cell[1:] if cell.startswith("'") else cell
