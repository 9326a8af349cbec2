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
        open_string: str | None = None  # the quotes of a multi-line string left open
        depth = 0  # open brackets of a multi-line array or inline table
        for number, line in enumerate(text.splitlines(), start=1):
            if open_string or depth > 0:
                code, open_string = _code(line, open_string)
                depth += _bracket_balance(code)
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
                code, open_string = _code(value, None)
                depth = max(0, _bracket_balance(code))

    def line_of(self, path: tuple[str | int, ...]) -> int | None:
        """The line of ``path``, or of its longest prefix that has one."""
        for end in range(len(path), 0, -1):
            if (line := self._lines.get(tuple(path[:end]))) is not None:
                return line
        return None


# Where a multi-line string ends: its closing quotes, and up to two more quotes that belong
# to its content (``"""a""""`` holds ``a"``); in a basic string, ``\"`` is no quote.
_CLOSE = {
    '"""': re.compile(r'(?:[^"\\]|\\.|"(?!""))*""""{0,2}'),
    "'''": re.compile(r"(?:[^']|'(?!''))*''''{0,2}"),
}
# The next thing on a line that changes how the rest of it reads: a multi-line string's
# opening quotes (before ``_QUOTED``, which would read ``"""`` as ``""`` and ``"``), a
# one-line string, or a comment.
_TOKEN = re.compile(rf"\"\"\"|'''|{_QUOTED}|#")


def _code(line: str, open_string: str | None) -> tuple[str, str | None]:
    """The parts of ``line`` outside strings and comments, and the quotes of the multi-line
    string open at its end (``open_string``: the one open at its start).

    One scan, left to right, because strings and comments hide each other: ``"a#b"`` holds
    no comment, and triple quotes after a ``#`` open no string.
    """
    code: list[str] = []
    pos = 0
    while True:
        if open_string is not None:
            close = _CLOSE[open_string].match(line, pos)
            if close is None:
                return "".join(code), open_string
            pos, open_string = close.end(), None
        token = _TOKEN.search(line, pos)
        if token is None:
            code.append(line[pos:])
            return "".join(code), None
        code.append(line[pos : token.start()])
        if token.group() == "#":
            return "".join(code), None
        if token.group() in _CLOSE:
            open_string = token.group()
        pos = token.end()


def _bracket_balance(code: str) -> int:
    return code.count("[") + code.count("{") - code.count("]") - code.count("}")
