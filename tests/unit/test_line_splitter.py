"""A program's output as lines (the live log of ``shell`` tasks): whatever bytes it
writes, in whatever chunks they arrive, the same lines, none longer than the limit."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.sdk.processes import _LineSplitter

LIMIT = 5


def expected(data: bytes) -> list[str]:
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    lines = []
    for piece in pieces:
        cut = len(piece) > LIMIT
        text = piece[:LIMIT].decode("utf-8", errors="replace").removesuffix("\r")
        lines.append(text + (" [line cut]" if cut else ""))
    return lines


@given(
    data=st.binary(max_size=200)
    | st.lists(st.sampled_from([b"\n", b"ab", b"cdefg", b"\r", b"\xc3"]), max_size=30).map(
        b"".join
    ),
    cuts=st.lists(st.integers(0, 200), max_size=20),
)
def test_lines_do_not_depend_on_how_the_bytes_arrive(data, cuts):
    got: list[tuple[str, str]] = []
    splitter = _LineSplitter("stdout", lambda stream, line: got.append((stream, line)), LIMIT)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for start, end in itertools.pairwise(bounds):
        splitter.feed(data[start:end])
    splitter.end()
    assert [line for _, line in got] == expected(data)
    assert {stream for stream, _ in got} <= {"stdout"}


def test_a_last_line_without_newline_and_a_long_line():
    got: list[str] = []
    splitter = _LineSplitter("stderr", lambda _, line: got.append(line), LIMIT)
    for chunk in (b"ab\r\ncdefg", b"hij\nk", b"l"):
        splitter.feed(chunk)
    splitter.end()
    assert got == ["ab", "cdefg [line cut]", "kl"]
