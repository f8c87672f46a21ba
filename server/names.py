"""Names shown to support (device, customer, model, user): one rule for every way they arrive.

A name must look like what it is. Control characters, bidirectional overrides and isolates
(which reorder what follows: ``press-7\u202e1-sserp`` shows as another name), and invisible
characters (zero-width spaces and joiners, word joiners, soft hyphens, BOM, tag characters, other
Unicode "format" characters, unassigned and private-use code points) are refused, so that two
names that look the same are the same text.
"""

from __future__ import annotations

import unicodedata

# General categories refused anywhere in a name: Cc control, Cf format (bidi controls, zero-width
# characters, soft hyphen, BOM, tags), Co private use, Cn unassigned, Cs surrogates, Zl/Zp line
# and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"})
# Blank-looking characters that are not "format" characters.
_INVISIBLE = frozenset({"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"})


def name_problem(text: str) -> str | None:
    """Return why ``text`` cannot be a shown name, or None when it can.

    Spaces other than the plain one (no-break, em and the like) are refused too: a name is
    compared as typed.
    """
    for ch in text:
        category = unicodedata.category(ch)
        if category in _REFUSED_CATEGORIES or ch in _INVISIBLE:
            if ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c":
                return f"bidirectional control character U+{ord(ch):04X} is not allowed"
            if category == "Cc":
                return "control characters are not allowed"
            return f"invisible or unassigned character U+{ord(ch):04X} is not allowed"
        if category == "Zs" and ch != " ":
            return f"space character U+{ord(ch):04X} is not allowed; use a plain space"
    return None


def check_name(text: str) -> str:
    """Return ``text`` when it can be a shown name; raise ValueError saying why not."""
    problem = name_problem(text)
    if problem:
        raise ValueError(problem)
    return text
