"""Programs a task or an alert runs: in a process group of their own, their output kept
to a tail (and, if asked, handed on line by line as it comes), and the whole group killed
when the caller is cancelled.

The ``shell`` task kind and the ``command`` alert channel both run programs this way: a
program may start children (``/bin/sh -c`` always does), and a timeout or a stop must end
them too, so the program leads a new session and the group is signalled, not the pid. A
chatty program must not exhaust memory nor block on a full pipe, so its output is read to
the end and only the last bytes are kept.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from anyio.abc import ByteReceiveStream, Process

__all__ = ["LINE_BYTES", "ProgramExit", "run_program"]

#: The longest line handed on: a longer one is cut there (its rest is skipped up to the
#: next newline), so a program that writes megabytes without a newline is not held whole.
LINE_BYTES = 8192


class _LineSplitter:
    """Bytes of one stream as lines, each handed to ``on_line`` once it is complete."""

    def __init__(
        self, stream: str, on_line: Callable[[str, str], None], limit: int = LINE_BYTES
    ) -> None:
        self._limit = limit
        self._stream = stream
        self._on_line = on_line
        self._partial = bytearray()
        self._skipping = False  # in the rest of a line cut at LINE_BYTES

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if not self._skipping:
                self._partial += chunk[start:] if end < 0 else chunk[start:end]
                if len(self._partial) > self._limit:
                    del self._partial[self._limit :]
                    self._emit(" [line cut]")
                    self._skipping = True
                elif end >= 0:
                    self._emit()
            if end < 0:
                return
            self._skipping = False  # the newline ends the line that was cut
            start = end + 1

    def end(self) -> None:
        if self._partial:
            self._emit()

    def _emit(self, suffix: str = "") -> None:
        text = self._partial.decode("utf-8", errors="replace").removesuffix("\r")
        self._partial.clear()
        self._on_line(self._stream, text + suffix)


class _OutputTail:
    """The last ``limit`` bytes read from a stream."""

    def __init__(self, limit: int, lines: _LineSplitter | None = None) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._truncated = False
        self._lines = lines

    async def drain(self, stream: ByteReceiveStream) -> None:
        """Read ``stream`` to its end, keeping the last bytes."""
        # Read to the end even when nothing is kept: a program blocked on a full pipe
        # would never exit.
        async for chunk in stream:
            if self._lines is not None:
                self._lines.feed(chunk)
            self._buffer += chunk
            excess = len(self._buffer) - self._limit
            if excess > 0:
                del self._buffer[:excess]
                self._truncated = True
        if self._lines is not None:
            self._lines.end()

    def text(self) -> str:
        """What was kept, decoded as UTF-8 with undecodable bytes replaced."""
        data = bytes(self._buffer)
        if self._truncated:
            # The cut may have split a UTF-8 sequence: drop its continuation bytes rather
            # than start the text with a replacement character.
            start = 0
            while start < min(3, len(data)) and 0x80 <= data[start] <= 0xBF:
                start += 1
            data = data[start:]
        return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ProgramExit:
    """How a program ended.

    :param exit_code: its exit code, or minus the signal that killed it
    :param stdout: the tail of its stdout (empty when not kept)
    :param stderr: the tail of its stderr
    """

    exit_code: int
    stdout: str
    stderr: str


async def run_program(
    command: str | Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | Path | None,
    tail_bytes: int,
    keep_stdout: bool = True,
    terminate_grace_s: float = 0.0,
    on_line: Callable[[str, str], None] | None = None,
) -> ProgramExit:
    """Run a program to its end in a process group of its own, with no stdin.

    When the caller is cancelled (a timeout, the daemon stopping), the whole group is sent
    SIGTERM, then SIGKILL after ``terminate_grace_s`` (at once when it is 0), and the call
    returns to the cancellation only once the program has exited: neither the program nor
    anything it started outlives the call.

    :param command: the program and its arguments, or a command line for ``/bin/sh -c``
    :param env: the program's whole environment
    :param cwd: its working directory, or ``None`` for the daemon's
    :param tail_bytes: how many of the last bytes of stdout and of stderr to keep (each)
    :param keep_stdout: ``False`` sends stdout to ``/dev/null``
    :param terminate_grace_s: how long a cancelled program has between SIGTERM and SIGKILL
    :param on_line: called with ``("stdout", line)`` or ``("stderr", line)`` for each line
        as the program writes it (without its newline, decoded as UTF-8 with undecodable
        bytes replaced, cut at :data:`LINE_BYTES`); it must not block
    :raises OSError: if the program cannot be started (``FileNotFoundError`` for a missing
        program or working directory, ``PermissionError``, ...)
    """
    process = await anyio.open_process(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if keep_stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        # A group of its own, so cancellation can signal the program's children as well
        # (a command line runs under /bin/sh, whose children would otherwise be orphaned).
        start_new_session=True,
    )
    stdout = _OutputTail(tail_bytes, _LineSplitter("stdout", on_line) if on_line else None)
    stderr = _OutputTail(tail_bytes, _LineSplitter("stderr", on_line) if on_line else None)
    finished = False
    try:
        async with anyio.create_task_group() as tg:
            if process.stdout is not None:
                tg.start_soon(stdout.drain, process.stdout)
            assert process.stderr is not None
            tg.start_soon(stderr.drain, process.stderr)
            exit_code = await process.wait()
        finished = True
    finally:
        with anyio.CancelScope(shield=True):
            if not finished:
                await _stop_group(process, terminate_grace_s)
            await process.aclose()
    return ProgramExit(exit_code, stdout.text(), stderr.text())


async def _stop_group(process: Process, grace_s: float) -> None:
    # The program's pid is its process group's id (start_new_session). SIGKILL goes to
    # the group even when the program itself exited on SIGTERM, for children that
    # ignored it.
    if grace_s > 0:
        _signal_group(process.pid, signal.SIGTERM)
        with anyio.move_on_after(grace_s):
            await process.wait()
    _signal_group(process.pid, signal.SIGKILL)
    await process.wait()


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass  # everyone in the group has exited already
