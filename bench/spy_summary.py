"""Where a thread's time went, from py-spy's raw stacks: ``python -m bench.spy_summary FILE``.

``FILE`` is what ``py-spy record -t --format raw`` wrote (``python -m bench.kafka --spy
FILE``, say): one line per distinct stack, ``thread (TID): NAME;frame;frame;... COUNT``.
For the thread whose name holds ``--thread`` (the event loop's, ``MainThread``, by
default), prints the share of its samples each function was on top of the stack
(``self``) and anywhere in it (``inclusive``), largest first. Frames are told apart by
function and file, not line. py-spy counts a thread only while it is not idle, so the
share of ``EpollSelector.select`` is the loop's waiting for I/O, and the samples of the
other threads say how busy each was beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def summary(text: str, thread: str) -> tuple[Counter[str], Counter[str], Counter[str], int]:
    """Samples per thread, and of ``thread``: per function on top, per function anywhere,
    and in all."""
    threads: Counter[str] = Counter()
    on_top: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        head, *frames = stack.split(";")
        threads[head] += count
        if thread not in head:
            continue
        names = [_LINE.sub(")", frame) for frame in frames] or ["(no Python frame)"]
        total += count
        on_top[names[-1]] += count
        for name in set(names):
            anywhere[name] += count
    return threads, on_top, anywhere, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--thread", default="MainThread")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    threads, on_top, anywhere, total = summary(args.file.read_text(), args.thread)
    out = sys.stdout.write
    out("samples per thread:\n")
    for name, count in threads.most_common():
        out(f"  {count:8d}  {name}\n")
    if not total:
        raise SystemExit(f"no samples of a thread named {args.thread!r}")
    for title, counts in (("self", on_top), ("inclusive", anywhere)):
        out(f"\n{args.thread}, {title} ({total} samples):\n")
        for name, count in counts.most_common(args.top):
            out(f"  {100 * count / total:5.1f}%  {name}\n")


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):  # its output cut short (`| head`)
        main()
