"""Live task logs: the lines attempts write while they run, kept in the store in batches.

A task kind hands lines to its attempt's :class:`AttemptLines` (``ctx.log_line``), from
the event loop or from a worker thread. Each line is redacted, numbered in the order of
its run's lines (``seq``, so a reader of a whole run pages with one number) and held until
the next flush: :meth:`TaskLogs.serve` submits whatever was written at most once per
``flush_s`` to the store's group commit, so a chatty task costs one batch per interval,
not a transaction per line. An attempt keeps its latest ``max_lines`` lines and
``max_bytes`` bytes; older ones are dropped (also those not yet flushed), and a marker
line in the place of the last one dropped says how many went.

```
ctx.log_line --> AttemptLines (redact, number, bound) --every flush_s--> store.submit
                                                     --attempt ends--> store.submit, wait
```
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from cued.daemon.config.secrets import redact_text
from cued.daemon.core.ids import now
from cued.daemon.errors import StoreError
from cued.daemon.logs import get_logger
from cued.daemon.store import LogLineRow, LogTrim

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from cued.daemon.store import Row, Store

__all__ = ["MARKER_STREAM", "AttemptLines", "OpenLines", "TaskLogs"]

#: The stream of the lines the daemon writes itself (the marker of dropped lines).
MARKER_STREAM = "cued"
_STREAM_CHARS = 32  # a stream's name is cut to this
_log = get_logger()


@dataclass(slots=True)
class _RunLines:
    """A run's line numbers, while attempts of it are open."""

    last_seq: int
    open: int = 0


class AttemptLines:
    """One attempt's lines (a :class:`~cued.daemon.sdk.LineWriter`)."""

    __slots__ = (
        "_attempt",
        "_dropped",
        "_kept",
        "_kept_bytes",
        "_key",
        "_logs",
        "_marker_seq",
        "_pending",
        "_run",
        "_run_id",
        "_trim",
        "closed",
        "written",
    )

    def __init__(self, logs: TaskLogs, run: _RunLines, run_id: str, key: str, attempt: int):
        self._logs = logs
        self._run = run
        self._run_id = run_id
        self._key = key
        self._attempt = attempt
        self._kept: deque[tuple[int, int]] = deque()  # (seq, bytes) of the lines kept
        self._kept_bytes = 0
        self._dropped = 0
        self._pending: dict[int, LogLineRow] = {}
        self._trim: LogTrim | None = None
        self._marker_seq: int | None = None
        self.written = 0
        """Lines written, kept or not."""
        self.closed = False
        """The attempt ended: what is written now is dropped."""

    def write(self, stream: str, text: str) -> None:
        text = redact_text(text)
        stream = stream[:_STREAM_CHARS] or "log"
        at = now()
        with self._logs._lock:
            if self.closed:
                return  # a worker thread the attempt abandoned: its end is recorded
            for line in text.splitlines() or [""]:
                self._add(stream, line, at)
            self._logs._dirty.add(self)

    def _add(self, stream: str, line: str, at: float) -> None:
        run = self._run
        run.last_seq += 1
        seq = run.last_seq
        size = len(line.encode("utf-8", errors="replace"))
        self.written += 1
        self._pending[seq] = LogLineRow(
            self._run_id, self._key, self._attempt, seq, at, stream, line
        )
        self._kept.append((seq, size))
        self._kept_bytes += size
        limits = self._logs
        last_dropped = None
        while self._kept and (
            len(self._kept) > limits.max_lines or self._kept_bytes > limits.max_bytes
        ):
            last_dropped, dropped_size = self._kept.popleft()
            self._kept_bytes -= dropped_size
            self._dropped += 1
            self._pending.pop(last_dropped, None)
        if last_dropped is not None:
            self._mark(last_dropped, at)

    def _mark(self, seq: int, at: float) -> None:
        # the marker takes the place of the last line dropped: it sorts before what is kept
        if self._marker_seq is not None:
            self._pending.pop(self._marker_seq, None)
        self._marker_seq = seq
        limits = self._logs
        self._pending[seq] = LogLineRow(
            self._run_id,
            self._key,
            self._attempt,
            seq,
            at,
            MARKER_STREAM,
            f"[{self._dropped} earlier lines dropped: an attempt keeps its last "
            f"{limits.max_lines} lines and {limits.max_bytes} bytes]",
        )
        self._trim = LogTrim(self._run_id, self._key, self._attempt, seq)

    def _take(self) -> list[Row]:
        """What waits to be submitted (under the lock)."""
        rows: list[Row] = list(self._pending.values())
        if self._trim is not None:
            rows.append(self._trim)
        self._pending = {}
        self._trim = None
        return rows


class TaskLogs:
    """Where every attempt's live log lines go.

    :param store: where they are kept
    :param max_lines: lines an attempt keeps at most (its latest)
    :param max_bytes: bytes of lines (UTF-8) an attempt keeps at most
    :param flush_s: how often what was written is submitted
    """

    def __init__(self, store: Store, *, max_lines: int, max_bytes: int, flush_s: float) -> None:
        self.store = store
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.flush_s = flush_s
        # written from worker threads too (a python task's prints): one lock for all
        self._lock = threading.Lock()
        self._dirty: set[AttemptLines] = set()
        self._runs: dict[str, _RunLines] = {}

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Submit what was written once per ``flush_s``, until cancelled."""
        task_status.started()
        while True:
            # polled, not woken: a worker thread may write, and must not touch the loop
            await anyio.sleep(self.flush_s)
            self.flush()

    def flush(self) -> None:
        """Submit whatever was written and not yet submitted."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            rows = [row for lines in dirty for row in lines._take()]
        if rows:
            try:
                self.store.submit(rows)
            except StoreError as exc:
                # the store failed or closes: the runs' own rows fail and say so; lines
                # must not take the runner down with them
                _log.warning("task_log_lines_lost", lines=len(rows), error=str(exc))

    def attempt(
        self, run_id: str, key: str, attempt: int, *, fresh: bool = False
    ) -> AbstractAsyncContextManager[AttemptLines]:
        """The lines of one attempt while it runs; when it ends, what it wrote is
        submitted and committed before this returns. ``fresh``: the run had never started
        before this daemon drove it, so it has no lines in the store."""
        return OpenLines(self, run_id, key, attempt, fresh)

    def attempt_now(
        self, run_id: str, key: str, attempt: int, *, fresh: bool = False
    ) -> OpenLines | None:
        """:meth:`attempt`, entered without waiting; None if it would have to wait (a
        resumed run's line numbers are read from the store first). Left by its
        ``exit_now``, or, if the attempt wrote lines, by awaiting its ``__aexit__``."""
        opened = OpenLines(self, run_id, key, attempt, fresh)
        return opened if opened.enter_now() is not None else None


class OpenLines:
    """:meth:`TaskLogs.attempt`: a class, not a generator, as it runs once per attempt."""

    @property
    def lines(self) -> AttemptLines:
        """The attempt's lines (once entered)."""
        return self._lines

    __slots__ = ("_attempt", "_fresh", "_key", "_lines", "_logs", "_run_id")

    def __init__(self, logs: TaskLogs, run_id: str, key: str, attempt: int, fresh: bool) -> None:
        self._logs, self._run_id, self._key = logs, run_id, key
        self._attempt, self._fresh = attempt, fresh

    async def __aenter__(self) -> AttemptLines:
        logs, run_id = self._logs, self._run_id
        run = logs._runs.get(run_id)
        if run is None:
            # numbered on from what an earlier daemon (or an earlier attempt) kept
            last = 0 if self._fresh else await logs.store.last_log_seq(run_id)
            run = logs._runs.setdefault(run_id, _RunLines(last))
        return self._open(run)

    def enter_now(self) -> AttemptLines | None:
        """Enter without waiting: None (nothing entered) if the run's line numbers must be
        read from the store first."""
        logs, run_id = self._logs, self._run_id
        run = logs._runs.get(run_id)
        if run is None:
            if not self._fresh:
                return None
            run = logs._runs[run_id] = _RunLines(0)
        return self._open(run)

    def _open(self, run: _RunLines) -> AttemptLines:
        run.open += 1
        self._lines = AttemptLines(self._logs, run, self._run_id, self._key, self._attempt)
        return self._lines

    def exit_now(self) -> bool:
        """Leave without waiting if the attempt wrote no line (True); False, leaving
        nothing, if it wrote some: their commit is :meth:`__aexit__`'s to wait for."""
        logs, lines = self._logs, self._lines
        with logs._lock:
            if lines.written:
                return False
            lines.closed = True
        self._forget()
        return True

    async def __aexit__(self, *exc: object) -> None:
        logs, lines = self._logs, self._lines
        with logs._lock:
            lines.closed = True
            logs._dirty.discard(lines)
            rows = lines._take()
        if lines.written:
            # committed (with what was flushed before) before the attempt's end is: a
            # reader that sees it ended sees all it wrote; and before the run's numbers
            # are forgotten
            with anyio.CancelScope(shield=True):
                try:
                    await logs.store.submit(rows).wait()
                except StoreError:
                    pass  # the attempt's own row fails to commit too, and says so
        self._forget()

    def _forget(self) -> None:
        run = self._lines._run
        run.open -= 1
        if run.open == 0 and self._logs._runs.get(self._run_id) is run:
            del self._logs._runs[self._run_id]
