"""Find the line of a key in a TOML document, so config errors can say where they are.

``tomllib`` returns plain dicts without positions; this scanner reads the text once and
maps every table header and key it sees to its line. It understands what configs use:
``[a.b]`` and ``[[a.b]]`` headers, dotted and quoted keys, inline tables and multi-line
strings and arrays (whose inner lines are skipped).
"""

from __future__ import annotations

import re

__all__ = ["KeyLines"]

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r"\"(?:[^\"\\]|\\.)*\"|'[^']*'"
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=\s*(.*)$")
_INLINE_KEY = re.compile(rf"[{{,]\s*({_DOTTED})\s*=")


def _split(dotted: str) -> tuple[str, ...]:
    return tuple(
        part[1:-1] if part[:1] in "\"'" else part
        for part in (m.group(0).strip() for m in re.finditer(_KEY, dotted))
    )


class KeyLines:
    """Lines of the keys of one TOML text; ``line_of(path)`` answers for any key path."""

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str | int, ...], int] = {}
        arrays: dict[tuple[str, ...], int] = {}
        table: tuple[str | int, ...] = ()
        in_multiline: str | None = None
        depth = 0  # open brackets of a multi-line array or inline table
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw
            if in_multiline:
                if in_multiline in line:
                    in_multiline = None
                continue
            if depth > 0:
                depth += _bracket_balance(line)
                continue
            if header := _HEADER.match(line):
                keys = _split(header.group(2))
                if header.group(1) == "[[":
                    index = arrays.get(keys, -1) + 1
                    arrays[keys] = index
                    table = (*keys, index)
                else:
                    table = keys
                self._lines.setdefault(table, number)
                continue
            if assign := _ASSIGN.match(line):
                path = (*table, *_split(assign.group(1)))
                self._lines.setdefault(path, number)
                value = assign.group(2)
                for inner in _INLINE_KEY.finditer(value):
                    self._lines.setdefault((*path, *_split(inner.group(1))), number)
                for quote in ('"""', "'''"):
                    if value.count(quote) % 2 == 1:
                        in_multiline = quote
                depth = max(0, _bracket_balance(value))

    def line_of(self, path: tuple[str | int, ...]) -> int | None:
        """The line of ``path``, or of its longest prefix that has one."""
        for end in range(len(path), 0, -1):
            if (line := self._lines.get(tuple(path[:end]))) is not None:
                return line
        return None


def _bracket_balance(text: str) -> int:
    text = re.sub(_QUOTED, "", text.split("#", 1)[0])
    return text.count("[") + text.count("{") - text.count("]") - text.count("}")
