"""Text for cards: Markdown escaping, the summary length, units as clinicians write them,
and the check that a card holds no empty value (CDS Hooks forbids them)."""

from __future__ import annotations

import re
from typing import Any


SUMMARY_LIMIT = 140  # CDS Hooks: "<140-character summary"
RAW_HTML = re.compile(r"<[A-Za-z/!?]")


def fit_summary(text: str) -> str:
    """One line under 140 characters: whitespace collapsed; longer text is cut
    to 138 characters plus "…" (139 in all)."""
    text = " ".join(text.split())
    if len(text) >= SUMMARY_LIMIT:
        text = text[:SUMMARY_LIMIT - 2] + "…"
    return text


def _has_empty(obj: Any) -> bool:
    # Runs over every card: a loop with an explicit stack, not a recursion of generators.
    stack = [obj]
    pop, push_all = stack.pop, stack.extend
    while stack:
        item = pop()
        if isinstance(item, str):
            if not item:
                return True
        elif isinstance(item, dict):
            if not item:
                return True
            push_all(item.values())
        elif isinstance(item, (list, tuple)):
            if not item:
                return True
            push_all(item)
        elif item is None:
            return True
    return False


def find_empty_values(obj: Any, path: str = "$") -> list[str]:
    """JSON paths of every null, "", [] or {} in `obj` (CDS Hooks 2.0 forbids them)."""
    if not _has_empty(obj):  # the common case, without building paths
        return []
    if obj is None or (isinstance(obj, (str, list, tuple, dict)) and len(obj) == 0):
        return [path]
    found: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            found.extend(find_empty_values(value, f"{path}.{key}"))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found.extend(find_empty_values(value, f"{path}[{i}]"))
    return found


# Each character and what it becomes, as one translation table (one pass in C).
_MD_ESCAPES = str.maketrans({"\\": "\\\\", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]",
                             "#": "\\#", "|": "\\|", "~": "\\~", "&": "&amp;", "<": "&lt;", ">": "&gt;"})


def md_escape(value: Any) -> str:
    """A data value as inert Markdown text on one line: Markdown punctuation is
    backslash-escaped, and & < > become entities, so no raw HTML can appear."""
    if value is None:
        return ""
    return " ".join(str(value).split()).translate(_MD_ESCAPES)


_NO_BRACKETS = str.maketrans("", "", "[]")
_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
_POWER_OF_TEN = re.compile(r"(?:(?<=^)|(?<=[/.]))10[*^](-?\d+)")
_MICRO = re.compile(r"(?:(?<=^)|(?<=[/.]))u(?=(?:L|mol|g|mL|IU|\[IU\])\b)")
_CUBED = re.compile(r"(?<=[cdm]m)3\b")


def unit_display(unit: str) -> str:
    """A unit as a clinician reads it: `10*3/uL` → `×10³/µL`, `[IU]/L` → `IU/L`,
    `umol/L` → `µmol/L`, `/mm3` → `/mm³`. For the card's prose only: the
    evaluation (extension) keeps the units exactly as recorded and as converted.
    A unit written some other way (`x10E3/uL`, `K/uL`) is shown as written."""
    text = _POWER_OF_TEN.sub(lambda m: "×10" + m.group(1).translate(_SUPERSCRIPT), unit)
    text = _MICRO.sub("µ", text)
    text = _CUBED.sub("³", text)
    return text.translate(_NO_BRACKETS)
