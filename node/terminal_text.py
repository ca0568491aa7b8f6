"""Remote text made safe to show on a terminal after a message header.

The text rules (:mod:`p2pchat.node.wire.chat`) refuse every control character but newline and
tab, so a text cannot move the cursor. Two ways remained to start a screen row with text of
the sender's choosing, which could then pass for a message header of somebody else's
(``[14:23:15] Alice (12D3Ko…x7Qa): ...``):

- a line break in the text (newline, U+2028, U+2029);
- the terminal's own wrapping: a text that fills the rest of the row exactly (spaces, wide or
  zero-width characters) puts what follows at column 0 of the next row.

:func:`text_for_display` starts every row after the first with :data:`CONTINUATION`'s indented
bar: after each line break, and, given the terminal's width, wherever the text itself would
reach the row's end (widths as prompt_toolkit measures them; tabs become four spaces, whose
width is known).
"""

from __future__ import annotations

import re

from prompt_toolkit.utils import get_cwidth

_LINE_BREAKS = re.compile("[\n\u2028\u2029]")
INDENT = "    | "
CONTINUATION = "\n" + INDENT
TAB = "    "


def text_for_display(text: str, *, start_column: int = 0, width: int | None = None) -> str:
    """``text`` as shown from ``start_column`` (where its header ends) on a terminal ``width``
    columns wide (None: not a terminal, line breaks only): every row after the first starts
    with the indented bar.

    A row is cut one column before the edge, so no terminal's wrapping rule (immediate or
    deferred) can move text to the next row on its own.
    """
    lines = _LINE_BREAKS.split(text.replace("\t", TAB))
    if width is None or width <= len(INDENT) + 2:
        return CONTINUATION.join(lines)
    limit = width - 1
    rows: list[str] = []
    column = start_column
    for line in lines:
        row: list[str] = []
        for char in line:
            char_width = max(get_cwidth(char), 0)
            if column + char_width > limit and row:
                rows.append("".join(row))
                row, column = [], len(INDENT)
            row.append(char)
            column += char_width
        rows.append("".join(row))
        column = len(INDENT)
    return CONTINUATION.join(rows)


def after_header(header: str, text: str, width: int | None) -> str:
    """``header`` followed by ``text`` as :func:`text_for_display` shows it after it."""
    return header + text_for_display(text, start_column=get_cwidth(header), width=width)
