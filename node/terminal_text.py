"""Remote text and names made safe to show on a terminal.

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

:func:`safe_name` is how a name is shown to a person: invisible characters escaped, and a name
that passes for another (mixed scripts, an ASCII look-alike) marked, see the note on names below.
"""

from __future__ import annotations

import functools
import re
import unicodedata

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


# --- Names --------------------------------------------------------------------------------------
#
# A name is a claim (it is always shown beside the sender's short PeerId), but a reader still
# reads the name first, so a name must never *look like* another one. The wire rules
# (:func:`p2pchat.node.wire.chat.validate_name`) already refuse control and format characters
# (category C*: RLM, zero-width, tags, bidi controls) in names arriving from peers; this is the
# display side, which holds for any name however it got here (local config, a stored message, a
# typed /whois) and also for what the wire lets through: variation selectors and the other
# default-ignorable code points, blank letters, non-ASCII spaces, and look-alike letters.
#
# No library is used: `confusable_homoglyphs` (the one candidate) has had no release since early
# 2024 and ships its own copy of Unicode's data; the rules below need only the standard library's
# `unicodedata` and two small tables, in the spirit of UTS #39 (mixed-script detection, the
# "Highly Restrictive" script sets, and a confusable skeleton).

NAME_MARK = " (!)"
"""Appended to a name that is not what it looks like (see :func:`safe_name`)."""

# Default_Ignorable_Code_Point (Unicode's DerivedCoreProperties.txt, 15.x): drawn as nothing by
# conforming renderers. Among them, outside category C*: variation selectors (U+FE00-FE0F and
# the supplement in U+E0100-E01EF, Mn), the combining grapheme joiner U+034F (Mn), the Hangul
# fillers U+115F, U+1160, U+3164, U+FFA0 (Lo), Khmer U+17B4-17B5 and Mongolian U+180B-180F.
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),  # tag characters, variation selectors supplement, reserved
)
_BRAILLE_BLANK = "\u2800"  # a visible-width blank that is a "symbol" (So), used to fake spaces


def _hidden(char: str) -> bool:
    """Whether ``char`` shows as nothing, or as a space that is not the ASCII one: every
    category C* (control, format, surrogate, private use, unassigned), line and paragraph
    separators, non-ASCII spaces (Zs), the default-ignorable code points, the braille blank."""
    if char == " ":
        return False
    category = unicodedata.category(char)
    if category[0] == "C" or category in ("Zs", "Zl", "Zp") or char == _BRAILLE_BLANK:
        return True
    point = ord(char)
    return any(low <= point <= high for low, high in _DEFAULT_IGNORABLE)


def _escape(char: str) -> str:
    point = ord(char)
    return f"\\u{point:04x}" if point <= 0xFFFF else f"\\U{point:08x}"


# Letters of other scripts that look like an ASCII letter, from Unicode's confusables.txt (the
# prototypes UTS #39's skeleton maps them to), for the scripts whose alphabets share shapes with
# Latin: Cyrillic, Greek, Armenian, Cherokee; plus Latin letters drawn like another ASCII letter.
# Fullwidth, mathematical and other compatibility forms are folded by NFKC before this table.
_LOOKALIKES = (
    # Cyrillic
    ("\u0410\u0412\u0415\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0425\u0405", "ABEKMHOPCTXS"),
    ("\u0406\u0408\u04ae\u051a\u051c\u04c0\u0417\u042c\u0430\u0435\u043e\u0440", "IJYQWl3baeop"),
    ("\u0441\u0443\u0445\u0455\u0456\u0458\u04bb\u0501\u051b\u051d\u04af\u04cf", "cyxsijhdqwyl"),
    ("\u044c", "b"),
    # Greek
    ("\u0391\u0392\u0395\u0396\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4", "ABEZHIKMNOPT"),
    ("\u03a5\u03a7\u03f9\u037f\u03bf\u03bd\u03c1\u03b9\u03b1\u03c5\u03b3\u03f2", "YXCJovpiauyc"),
    ("\u03f3", "j"),
    # Armenian
    ("\u0555\u054f\u053c\u0585\u057d\u0570\u0578\u0581\u0566", "OSLouhngq"),
    # Cherokee (syllables drawn like Latin capitals)
    ("\u13aa\u13f4\u13df\u13ac\u13bb\u13ab\u13e6\u13de\u13b7\u13e2\u13da\u13a2", "ABCEHJKLMPST"),
    ("\u13b3\u13c3", "WZ"),
    # Latin letters drawn like another letter
    ("\u0131\u0237\u0251\u0261", "ijag"),
)
_ASCII_LOOKALIKES = str.maketrans(
    "".join(o for o, _ in _LOOKALIKES), "".join(a for _, a in _LOOKALIKES)
)

# UTS #39 "Highly Restrictive": a name's letters come from one script, or from one of these sets
# (Latin with the scripts written beside it in Japanese, Chinese and Korean).
_SCRIPT_SETS = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
# Character-name prefixes that are not a script's name.
_NAME_PREFIXES = ("FULLWIDTH ", "HALFWIDTH ")
_HAN = ("CJK", "IDEOGRAPHIC")


def _script(char: str) -> str | None:
    """The script of a letter, from its Unicode name's first word (``CYRILLIC SMALL LETTER A``
    is Cyrillic); None for what is no letter or belongs to no one script (digits, marks,
    symbols, modifier letters)."""
    if not unicodedata.category(char).startswith("L"):
        return None
    name = unicodedata.name(char, "")
    for prefix in _NAME_PREFIXES:
        name = name.removeprefix(prefix)
    word = name.split(" ", 1)[0]
    if word in _HAN:
        return "HAN"
    if word == "KATAKANA-HIRAGANA":
        return "KATAKANA"
    if not word or word in ("MODIFIER", "MATHEMATICAL", "LETTERLIKE"):
        return None
    return word


def _mixes_scripts(text: str) -> bool:
    """Whether the letters of ``text`` come from more than one script, other than the
    combinations of :data:`_SCRIPT_SETS`."""
    scripts = {script for script in map(_script, text) if script is not None}
    return len(scripts) > 1 and not any(scripts <= allowed for allowed in _SCRIPT_SETS)


def skeleton(text: str) -> str:
    """``text`` as it looks: letters and digits in compatibility forms folded (NFKC: fullwidth
    A U+FF21, mathematical bold A U+1D400, ligatures), then look-alike letters of other scripts
    replaced by the ASCII letter they pass for. Accents stay (``Zoë`` is not ``Zoe``)."""
    folded = "".join(
        unicodedata.normalize("NFKC", char) if unicodedata.category(char)[0] in "LN" else char
        for char in unicodedata.normalize("NFC", text)
    )
    return folded.translate(_ASCII_LOOKALIKES)


def _passes_for_ascii(text: str) -> bool:
    """Whether ``text`` is not ASCII but looks like an ASCII name: "Alice" with a Cyrillic A
    (U+0410), or a fullwidth one, or "ape" all in Cyrillic (U+0430 U+0440 U+0435)."""
    return not text.isascii() and skeleton(text).isascii()


@functools.lru_cache(maxsize=4096)
def safe_name(name: str) -> str:
    """``name`` as shown to a person, never passing for another name.

    - Every character that shows as nothing or as a non-ASCII space (:func:`_hidden`: format
      and control characters, bidi controls, zero-width characters, tags, variation selectors,
      Hangul fillers, non-ASCII spaces) is shown escaped as Python writes it (``\\u200f``,
      ``\\U000e0041``), so it can neither hide nor reorder what follows.
    - The name is marked with :data:`NAME_MARK` (`` (!)``) when it is not what it looks like:
      it had such a character, its letters mix scripts ("Alice" with a Cyrillic A U+0410;
      Latin with Han, kana, Hangul or Bopomofo is fine), or it is not ASCII but looks like an
      ASCII name (fullwidth or mathematical letters, "ape" spelt in Cyrillic).

    Any other name is returned as it is: ``Alice``, ``Zoë``, ``李小龙``, ``Иван``. A literal
    ASCII backslash stays as typed: the mark tells an escaped mark from a typed ``\\u200f``.
    """
    shown = "".join(_escape(char) if _hidden(char) else char for char in name)
    visible = "".join(char for char in name if not _hidden(char))
    if shown != name or _mixes_scripts(visible) or _passes_for_ascii(visible):
        return shown + NAME_MARK
    return shown
