"""``files`` source: files dropped into a folder become events, then move to ``processed/``.

A file is taken once it is *complete*: with ``complete_when = "stable"`` (the default) when
its size and mtime have not changed for ``stable_for``; with ``"marker"`` when a marker file
``<name><marker_suffix>`` (``x.csv.done``) sits next to it. For each complete file:

1. an :class:`~cued.daemon.sources.Event` with the id ``SOURCE:NAME:SIZE:MTIME_NS``, which
   the same file has again after a restart, and ``data`` = ``{"path", "name", "size",
   "mtime"}``, ``path`` being where the file *will* be (in ``processed/``);
2. ``intake.record`` of what is complete at once, in one transaction;
3. only then the file is renamed into ``processed/`` (its marker too), or into ``failed/``
   when its event is ``invalid``: the file cannot be stat'ed (a dangling link), is not a
   regular file, or cannot be read.

A crash between 2 and 3 leaves the file where it was; after the restart it has the same
event id, intake answers ``duplicate`` and the file is just moved: nothing runs twice.
An event that is ``unmatched`` (no trigger fired, or a trigger's inputs failed to render:
the event records that error) is moved to ``processed/`` all the same: the file is fine,
and dropping the same file again would be a duplicate anyway; fix the trigger and
``touch`` the file back in to run it.

Left alone: names that do not match ``pattern`` (matched against the file's name, also in
sub-folders), hidden and temporary files (``.name``, ``*.tmp``, ``*.part``), markers, and
whatever is in ``processed/`` and ``failed/``. Nothing reads the files' contents.

New files are noticed by :func:`watchfiles.awatch`, and a rescan every ``rescan_every``
catches what a watcher can miss (network file systems, overflowing event queues). While the
daemon's backlog is saturated no file is taken: they wait in the folder.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field
from watchfiles import Change, awatch

from cued.daemon.durations import Duration
from cued.daemon.errors import ConnectorError, StoreError
from cued.daemon.sources import Event, Receipt
from cued.daemon.store import now

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from cued.daemon.sources import SourceContext

__all__ = ["FilesConfig", "FilesSource"]

_IGNORED_SUFFIXES = (".tmp", ".part")

#: The most files one ``intake.record`` takes (one transaction).
_MAX_BATCH = 256


class FilesConfig(BaseModel):
    """Keys of a ``[sources.NAME]`` table with ``kind = "files"``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(min_length=1)
    """The folder to watch, relative to the config file's folder; it must exist."""
    pattern: str = "*"
    """A glob that a file's name must match (``*.csv``)."""
    complete_when: Literal["stable", "marker"] = "stable"
    stable_for: Duration = 1.0
    """``stable``: how long a file's size and mtime must stay the same."""
    marker_suffix: str = Field(".done", min_length=1, pattern=r"^[^/\\]+$")
    """``marker``: the file ``x.csv`` is complete once ``x.csv<marker_suffix>`` exists."""
    processed_dir: str = Field("processed", min_length=1)
    """Where taken files go, relative to ``path``; on the same file system."""
    failed_dir: str = Field("failed", min_length=1)
    """Where files go whose event is invalid, relative to ``path``."""
    recursive: bool = False
    """Take files from sub-folders too (they keep their sub-folder in ``processed/``)."""
    rescan_every: Duration = Field(5.0, gt=0)
    """How often the folder is listed even when the watcher reported nothing."""


@dataclass(frozen=True, slots=True)
class _Found:
    """A file that may be taken, as the last listing saw it."""

    path: str
    """Where it is, absolute."""
    name: str
    """Relative to the watched folder, with ``/``: just its name unless ``recursive``."""
    size: int
    mtime_ns: int
    error: str | None
    """Why it cannot be processed (its event will be invalid), if it cannot."""


@dataclass(frozen=True, slots=True)
class _Planned:
    """A file about to be recorded, with its event and where it goes afterwards."""

    found: _Found
    event: Event
    dest: str
    marker: str | None


class FilesSource:
    """Watches one folder and takes the files dropped into it."""

    kind: ClassVar[str] = "files"
    Config: ClassVar[type[BaseModel]] = FilesConfig

    def __init__(self, config: FilesConfig, ctx: SourceContext) -> None:
        self.config = config
        self.ctx = ctx
        self.log = ctx.log
        self._dir = os.path.abspath(ctx.base_dir / config.path)
        self._processed = os.path.normpath(os.path.join(self._dir, config.processed_dir))
        self._failed = os.path.normpath(os.path.join(self._dir, config.failed_dir))
        self._marker = config.marker_suffix if config.complete_when == "marker" else None
        # stable: each file seen -> ((size, mtime_ns), when it was first seen so), monotonic
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}
        # files whose move failed -> when to try again (each try records a duplicate)
        self._retry_at: dict[str, float] = {}
        self._batch = 1
        self._wake: anyio.Event  # set by the watcher; made in run, in the event loop

    # -- running -----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Watch the folder and take complete files until cancelled.

        :raises ConnectorError: if the folder does not exist, or ``processed/`` or
            ``failed/`` cannot be made on the same file system
        """
        self._check_folders()
        self._wake = anyio.Event()
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(self._watch, stop)
            try:
                await self._move_recorded()
                task_status.started()
                self.log.info("files_watching", folder=self._dir, pattern=self.config.pattern)
                await self._take_loop()
            finally:
                # The watcher's thread looks at ``stop`` every few milliseconds; cancelling
                # alone would wait for its timeout (seconds) before the task group can end.
                stop.set()

    async def _watch(self, stop: anyio.Event, *, task_status: TaskStatus[None]) -> None:
        changes = awatch(
            self._dir,
            watch_filter=self._relevant,
            stop_event=stop,
            recursive=self.config.recursive,
        )
        # ``awatch`` sets up the OS watch before its first wait, and the task that started
        # this one resumes only once this one waits: so the first listing, which follows,
        # misses nothing dropped after it.
        task_status.started()
        try:
            async for _ in changes:
                self._wake.set()
        except (OSError, RuntimeError) as exc:  # e.g. out of inotify watches
            self.log.warning(
                "files_watch_failed",
                error=str(exc),
                note=f"listing the folder every {self.config.rescan_every:g}s only",
            )

    async def _move_recorded(self) -> None:
        """Move the files whose events were recorded before a crash could move them, before
        the daemon resumes the runs they started (which look for them in processed/)."""
        found: list[_Found] = []
        await anyio.to_thread.run_sync(self._list, self._dir, found)
        planned = await anyio.to_thread.run_sync(self._plan, found)
        known = await self.ctx.intake.known([p.event.event_id for p in planned])
        for item in planned:
            if item.event.event_id in known:
                self._move(item, Receipt(item.event.event_id, "duplicate"))

    async def _take_loop(self) -> None:
        while True:
            self._wake = anyio.Event()  # a change from now on ends the wait below
            if not self.ctx.intake.accepting():
                self.log.info("files_paused", reason="the daemon's backlog is full")
                await self.ctx.intake.wait_accepting()
                self.log.info("files_resumed")
            ready, wait_s = await anyio.to_thread.run_sync(self._scan)
            while ready and self.ctx.intake.accepting():
                batch, ready = ready[: self._batch], ready[self._batch :]
                await self._take(batch)
                # Intake only says yes or no. So a batch starts at one file and doubles
                # while the daemon keeps accepting: a big drop goes in few transactions,
                # and a saturated backlog is overrun by at most one batch, twice the size
                # of one that did not saturate it.
                if self.ctx.intake.accepting():
                    self._batch = min(2 * self._batch, _MAX_BATCH)
                else:
                    self._batch = 1
            if ready:
                continue  # paused: the rest may change meanwhile, so list the folder again
            with anyio.move_on_after(wait_s):
                await self._wake.wait()

    async def _take(self, batch: list[_Found]) -> None:
        planned = await anyio.to_thread.run_sync(self._plan, batch)
        if not planned:
            return
        # Shielded: what is recorded is moved even while the daemon stops, so a clean stop
        # leaves no file recorded but not moved (a crash may: see the module's docstring).
        with anyio.CancelScope(shield=True):

            def move(receipts: list[Receipt]) -> None:
                # called by intake once the events are committed and before their runs
                # start, so each run finds its file at ``data.path``
                for item, receipt in zip(planned, receipts, strict=True):
                    self._move(item, receipt)

            try:
                await self.ctx.intake.record([p.event for p in planned], acknowledge=move)
            except StoreError as exc:
                # nothing was recorded: the files stay, and are tried again later
                retry = time.monotonic() + self.config.rescan_every
                self._retry_at.update(dict.fromkeys((p.found.path for p in planned), retry))
                self.log.error("files_not_recorded", files=len(planned), error=str(exc))

    # -- the folder: listed in worker threads, files moved in the event loop ---------

    def _check_folders(self) -> None:
        if not os.path.isdir(self._dir):
            raise ConnectorError(
                f"files source {self.ctx.source!r}: the folder {self._dir!r} does not exist"
            )
        device = os.stat(self._dir).st_dev
        for key, folder in (("processed_dir", self._processed), ("failed_dir", self._failed)):
            if folder == self._dir:
                raise ConnectorError(
                    f"files source {self.ctx.source!r}: {key} cannot be the watched folder"
                )
            try:
                os.makedirs(folder, exist_ok=True)
                same = os.stat(folder).st_dev == device
            except OSError as exc:
                raise ConnectorError(
                    f"files source {self.ctx.source!r}: cannot make {key} {folder!r}: "
                    f"{exc.strerror}"
                ) from exc
            if not same:
                raise ConnectorError(
                    f"files source {self.ctx.source!r}: {key} {folder!r} is on another file "
                    f"system than {self._dir!r}, so files cannot be moved there atomically"
                )

    def _relevant(self, change: Change, path: str) -> bool:
        """Whether a change reported by the watcher may make a file ready to take."""
        if change == Change.deleted or _ignored(os.path.basename(path)):
            return False
        return not any(path == d or path.startswith(d + os.sep) for d in self._excluded)

    @property
    def _excluded(self) -> tuple[str, str]:
        return (self._processed, self._failed)

    def _scan(self) -> tuple[list[_Found], float]:
        """The complete files, oldest first, and how long until the next listing is due
        (when a file may have become stable, at the latest ``rescan_every``)."""
        at = time.monotonic()
        wait_s = self.config.rescan_every
        found: list[_Found] = []
        self._list(self._dir, found)
        ready: list[_Found] = []
        seen: dict[str, tuple[tuple[int, int], float]] = {}
        retry_at: dict[str, float] = {}
        for f in found:
            if (retry := self._retry_at.get(f.path)) is not None and retry > at:
                retry_at[f.path] = retry
                wait_s = min(wait_s, retry - at)
                continue
            if self._marker is not None:
                ready.append(f)  # listed only with its marker
                continue
            last = self._seen.get(f.path)
            since = last[1] if last is not None and last[0] == (f.size, f.mtime_ns) else at
            seen[f.path] = ((f.size, f.mtime_ns), since)
            left_s = since + self.config.stable_for - at
            if left_s <= 0:
                ready.append(f)
            else:
                wait_s = min(wait_s, left_s)
        # only files still there are remembered: memory stays bounded by the folder
        self._seen = seen
        self._retry_at = retry_at
        ready.sort(key=lambda f: (f.mtime_ns, f.name))
        return ready, wait_s

    def _list(self, folder: str, found: list[_Found]) -> None:
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:
            self.log.warning("files_listing_failed", folder=folder, error=exc.strerror)
            return
        names = {e.name for e in entries}
        for entry in entries:
            name = entry.name
            if _ignored(name):
                continue
            try:
                is_dir = entry.is_dir()
                is_link = entry.is_symlink()
            except OSError:
                continue
            if is_dir:
                if self.config.recursive and not is_link and entry.path not in self._excluded:
                    self._list(entry.path, found)
                continue
            if self._marker is not None and (
                name.endswith(self._marker) or name + self._marker not in names
            ):
                continue  # a marker, or a file without its marker yet
            if not fnmatch.fnmatchcase(name, self.config.pattern):
                continue
            if (f := self._stat(entry.path)) is not None:
                found.append(f)

    def _stat(self, path: str) -> _Found | None:
        """The file at ``path`` as it is now; ``None`` if it is gone."""
        name = os.path.relpath(path, self._dir).replace(os.sep, "/")
        error: str | None = None
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                error = f"{name!r} is not a regular file"
            elif not os.access(path, os.R_OK):
                error = f"{name!r} cannot be read: permission denied"
        except OSError as exc:
            try:
                st = os.lstat(path)  # a dangling link, say: it is there but unusable
            except OSError:
                return None
            error = f"{name!r} cannot be stat'ed: {exc.strerror}"
        return _Found(path, name, st.st_size, st.st_mtime_ns, error)

    def _plan(self, batch: list[_Found]) -> list[_Planned]:
        """Events for the files of ``batch`` that are still as listed."""
        planned: list[_Planned] = []
        for listed in batch:
            f = self._stat(listed.path)
            if f != listed:
                continue  # gone or changed since: the next listing sees it anew
            dest = self._destination(f, self._failed if f.error else self._processed)
            event = Event(
                source=self.ctx.source,
                event_id=f"{self.ctx.source}:{f.name}:{f.size}:{f.mtime_ns}",
                data={"path": dest, "name": f.name, "size": f.size, "mtime": f.mtime_ns / 1e9},
                meta={"original_path": f.path, "mtime_ns": f.mtime_ns},
                received_at=now(),
                error=f.error,
            )
            marker = f.path + self._marker if self._marker is not None else None
            planned.append(_Planned(f, event, dest, marker))
        return planned

    @staticmethod
    def _destination(f: _Found, folder: str) -> str:
        """Where ``f`` goes in ``folder``: under its name, or, if that is taken, with the
        part of its event id that tells it apart (size and mtime) before the extension."""
        dest = os.path.join(folder, *f.name.split("/"))
        if os.path.lexists(dest):
            stem, ext = os.path.splitext(dest)
            dest = f"{stem}.{f.size}-{f.mtime_ns}{ext}"
        return dest

    def _move(self, item: _Planned, receipt: Receipt) -> None:
        f = item.found
        log = self.log.bind(file=f.name, event_id=receipt.event_id, status=receipt.status)
        try:
            os.makedirs(os.path.dirname(item.dest), exist_ok=True)
            os.replace(f.path, item.dest)
        except FileNotFoundError:
            log.warning("file_vanished", note="removed after its event was recorded")
            return
        except OSError as exc:
            self._retry_at[f.path] = time.monotonic() + self.config.rescan_every
            log.error("file_move_failed", to=item.dest, error=exc.strerror)
            return
        if item.marker is not None:
            try:
                os.replace(item.marker, item.dest + self.config.marker_suffix)
            except OSError as exc:
                log.warning("marker_move_failed", marker=item.marker, error=exc.strerror)
        if receipt.status == "invalid":
            log.warning("file_failed", to=item.dest, error=receipt.error)
        else:
            log.info("file_taken", to=item.dest, runs=list(receipt.run_ids), error=receipt.error)


def _ignored(name: str) -> bool:
    """Hidden and temporary files: being written, or not meant for us."""
    return name.startswith(".") or name.endswith(_IGNORED_SUFFIXES)
