"""``files`` source: files dropped into a folder become events, then move to ``processed/``.

A file is taken once it is *complete*: with ``complete_when = "stable"`` (the default) when
its size and mtime have not changed for ``stable_for``; with ``"marker"`` when a marker file
``<name><marker_suffix>`` (``x.csv.done``) sits next to it. For each complete file:

1. an :class:`~cued.daemon.sdk.sources.Event` with the id ``SOURCE:NAME:SIZE:MTIME_NS``, which
   the same file has again after a restart, and ``data`` = ``{"path", "name", "size",
   "mtime"}``, ``path`` being where the file *will* be (in ``processed/``);
2. ``intake.record`` of what is complete at once, in one transaction;
3. only then the file is renamed into ``processed/`` (its marker too), or into ``failed/``
   when its event is ``invalid``: it is a symbolic link, is not a regular file (a pipe, a
   socket, a device), cannot be read, or its name is not valid UTF-8.

Nothing is ever followed through a link: entries are looked at with ``lstat``, so a link
(to a file, to a folder, dangling, or part of a loop) is itself the thing found, and is
renamed into ``failed/`` as a link; its target is never opened, read or moved. A name
that is not valid UTF-8 (Linux allows any bytes but ``/`` and NUL) is shown in the event
as text with ``\\xNN`` escapes (:func:`cued.daemon.sdk.os_name`), and the file goes
to ``failed/`` under its own bytes. ``processed/`` and ``failed/`` stay inside the watched
folder: the config refuses ``..`` and absolute paths, and the source refuses to start when
one resolves (through a link) to somewhere outside, or to move a file into a folder that
does. What is renamed must be the file that was recorded (same device, inode and type):
one swapped for a link or another file meanwhile goes to ``failed/`` as it is, with a
warning (its event's runs will not find their file). ``recursive`` lists sub-folders
``_MAX_DEPTH`` levels deep, without recursion; what lies deeper is left alone.

A crash between 2 and 3 leaves the file where it was; after the restart it has the same
event id, intake answers ``duplicate`` and the file is just moved: nothing runs twice.

Several daemons on one PostgreSQL database may watch one shared folder: each file is
recorded by exactly one of them, since intake claims its event id in the commit (two
recording it at once: the second gets ``duplicate``, its runs are not written). Whichever
moves it first moves it; the other finds it gone and leaves it. A daemon killed between
2 and 3 leaves its files in the folder, where another one finds them at its next listing,
as duplicates, and moves them.
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
import hashlib
import os
import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, field_validator
from watchfiles import Change, awatch

from cued.daemon.sdk import (
    ConnectorError,
    Duration,
    Event,
    Receipt,
    StoreError,
    bounded_id,
    now,
    os_name,
)

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from cued.daemon.sdk import SourceContext

__all__ = ["FilesConfig", "FilesSource"]

_IGNORED_SUFFIXES = (".tmp", ".part")

#: The most files one ``intake.record`` takes (one transaction).
_MAX_BATCH = 256

#: How many levels of sub-folders ``recursive`` lists: what lies deeper is left alone (and
#: named in a warning). Deeper trees are rare, and paths near PATH_MAX (4 KiB) cannot be
#: moved into ``processed/`` under their sub-folders anyway.
_MAX_DEPTH = 64

#: The least time between two starts of the watcher (see ``_watch``).
_WATCH_RESTART_S = 1.0


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

    @field_validator("processed_dir", "failed_dir")
    @classmethod
    def _inside(cls, value: str) -> str:
        # Relative and without a way up: files moved there stay in the tree the source
        # owns, and never land in a folder someone else reads (or runs things from).
        if os.path.isabs(value):
            raise ValueError("must be a folder inside the watched folder, given relative to it")
        norm = os.path.normpath(value)
        if norm == os.curdir:
            raise ValueError("cannot be the watched folder itself")
        if norm == os.pardir or norm.startswith(os.pardir + os.sep):
            raise ValueError("must stay inside the watched folder, but '..' leads out of it")
        return value


@dataclass(frozen=True, slots=True)
class _Found:
    """A file that may be taken, as the last listing saw it."""

    path: str
    """Where it is, absolute (as the OS gave it: undecodable bytes as lone surrogates)."""
    name: str
    """Relative to the watched folder, with ``/``: just its name unless ``recursive``."""
    shown: str
    """``name`` as text that can be stored and logged (undecodable bytes as ``\\xNN``)."""
    utf8: bool
    """Whether ``name`` is valid UTF-8 as it is (then ``shown == name``)."""
    size: int
    mtime_ns: int
    identity: tuple[int, int, int]
    """Its device, inode and file type: what is renamed must be what was recorded."""
    error: str | None
    """Why it cannot be processed (its event will be invalid), if it cannot."""


@dataclass(frozen=True, slots=True)
class _Planned:
    """A file about to be recorded, with its event and where it goes afterwards."""

    found: _Found
    event: Event
    dest: str
    """Where the file goes, as an OS path (its name in its own bytes)."""
    root: str
    """``processed/`` or ``failed/``, whichever ``dest`` is in."""
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
        # processed/ and failed/ as they resolve (through links): set by _check_folders
        self._real: dict[str, str] = {}
        self._marker = config.marker_suffix if config.complete_when == "marker" else None
        # stable: each file seen -> ((size, mtime_ns), when it was first seen so), monotonic
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}
        # files whose move failed -> when to try again (each try records a duplicate)
        self._retry_at: dict[str, float] = {}
        # sub-folders the last listing did not enter (past _MAX_DEPTH): warned about once
        self._too_deep: set[str] = set()
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
        started = False
        restarted_at = -_WATCH_RESTART_S
        while not stop.is_set():
            changes = awatch(
                self._dir,
                watch_filter=self._relevant,
                stop_event=stop,
                recursive=self.config.recursive,
            )
            if not started:
                # ``awatch`` sets up the OS watch before its first wait, and the task that
                # started this one resumes only once this one waits: so the first listing,
                # which follows, misses nothing dropped after it.
                task_status.started()
                started = True
            else:
                # A file dropped while no watch was set (the pause below) is listed now:
                # the take loop runs only once this task waits, inside awatch, after the
                # new watch is set up -- so between the two, nothing is missed.
                self._wake.set()
            failure: BaseException | None = None
            try:
                async for _ in changes:
                    self._wake.set()
            except* (OSError, RuntimeError) as group:  # e.g. out of inotify watches
                failure = _leaf(group)
            if failure is None:
                return  # stopped
            if not _undecodable(failure):
                self.log.warning(
                    "files_watch_failed",
                    error=str(failure),
                    note=f"listing the folder every {self.config.rescan_every:g}s only",
                )
                return
            # watchfiles cannot report a change to a name that is not UTF-8, and its watch
            # ends with it: list the folder now (which takes that file), and watch anew --
            # at most once a second, should a stream of such names come
            self._wake.set()
            self.log.info("files_watch_restarted", reason=str(failure))
            with anyio.move_on_after(restarted_at + _WATCH_RESTART_S - anyio.current_time()):
                await stop.wait()
            restarted_at = anyio.current_time()

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
            # before making it (makedirs goes through links) and after (it may have been
            # swapped for a link meanwhile)
            self._check_inside(key, folder)
            try:
                os.makedirs(folder, exist_ok=True)
                same = os.stat(folder).st_dev == device
            except OSError as exc:
                raise ConnectorError(
                    f"files source {self.ctx.source!r}: cannot make {key} {folder!r}: "
                    f"{exc.strerror}"
                ) from exc
            self._real[folder] = self._check_inside(key, folder)
            if not same:
                raise ConnectorError(
                    f"files source {self.ctx.source!r}: {key} {folder!r} is on another file "
                    f"system than {self._dir!r}, so files cannot be moved there atomically"
                )

    def _check_inside(self, key: str, folder: str) -> str:
        """``folder`` resolved through links, if that is inside the watched folder.

        :raises ConnectorError: if it is not (a link out of the tree)
        """
        real = os.path.realpath(folder)
        if not _within(real, os.path.realpath(self._dir)):
            raise ConnectorError(
                f"files source {self.ctx.source!r}: {key} {folder!r} resolves to {real!r}, "
                f"outside the watched folder {self._dir!r} (a link out of it?): files are "
                "only ever moved within the watched folder"
            )
        return real

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
        """Add the files in ``folder`` that may be taken to ``found`` (and, ``recursive``,
        those in its sub-folders down to ``_MAX_DEPTH`` levels)."""
        # An explicit stack, not recursion: a tree deeper than Python's stack (Linux allows
        # ~2,000 levels within PATH_MAX) must not end the listing, nor the daemon.
        pending = [(folder, 0)]
        too_deep: set[str] = set()
        while pending:
            folder, depth = pending.pop()
            for sub in self._list_one(folder, found):
                if depth + 1 <= _MAX_DEPTH:
                    pending.append((sub, depth + 1))
                else:
                    too_deep.add(sub)
        for sub in too_deep - self._too_deep:
            self.log.warning(
                "files_too_deep",
                folder=_text(sub),
                note=f"sub-folders are listed {_MAX_DEPTH} levels deep: what lies deeper "
                "is left alone",
            )
        # only folders still there are remembered, so each is named once while it stays
        self._too_deep = too_deep

    def _list_one(self, folder: str, found: list[_Found]) -> list[str]:
        """Add the files of ``folder`` to ``found``; its sub-folders to list (``recursive``)."""
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:
            self.log.warning("files_listing_failed", folder=_text(folder), error=exc.strerror)
            return []
        names = {e.name for e in entries}
        subs: list[str] = []
        for entry in entries:
            name = entry.name
            if _ignored(name) or entry.path in self._excluded:
                continue
            try:
                # the entry itself, never what a link points to: a link to a folder is a
                # link, and goes to failed/ like any other
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue  # gone meanwhile
            if is_dir:
                # processed/ or failed/ may be reached under another name, through a link
                if (
                    self.config.recursive
                    and os.path.realpath(entry.path) not in self._real.values()
                ):
                    subs.append(entry.path)
                continue
            if self._marker is not None and (
                name.endswith(self._marker) or name + self._marker not in names
            ):
                continue  # a marker, or a file without its marker yet
            if not fnmatch.fnmatchcase(name, self.config.pattern):
                continue
            if (f := self._stat(entry.path)) is not None:
                found.append(f)
        return subs

    def _stat(self, path: str) -> _Found | None:
        """The file at ``path`` as it is now (a link as a link); ``None`` if it is gone."""
        name = os.path.relpath(path, self._dir).replace(os.sep, "/")
        shown, utf8 = os_name(name)
        try:
            st = os.lstat(path)
        except OSError:
            return None
        error: str | None = None
        if stat.S_ISLNK(st.st_mode):
            error = (
                f"{shown!r} is a symbolic link: links are not followed, it is moved to "
                "failed/ as it is"
            )
        elif not stat.S_ISREG(st.st_mode):
            error = f"{shown!r} is not a regular file"
        elif not utf8:
            error = f"the name {shown!r} is not valid UTF-8 (bytes that are not are shown as \\xNN)"
        elif not os.access(path, os.R_OK):
            error = f"{shown!r} cannot be read: permission denied"
        return _Found(path, name, shown, utf8, st.st_size, st.st_mtime_ns, _identity(st), error)

    def _plan(self, batch: list[_Found]) -> list[_Planned]:
        """Events for the files of ``batch`` that are still as listed."""
        planned: list[_Planned] = []
        for listed in batch:
            f = self._stat(listed.path)
            if f != listed:
                continue  # gone or changed since: the next listing sees it anew
            root = self._failed if f.error else self._processed
            dest = self._destination(f, root)
            event = Event(
                source=self.ctx.source,
                event_id=self._event_id(f),
                data={
                    "path": _text(dest),
                    "name": f.shown,
                    "size": f.size,
                    "mtime": f.mtime_ns / 1e9,
                },
                meta={"original_path": _text(f.path), "mtime_ns": f.mtime_ns},
                received_at=now(),
                error=f.error,
            )
            marker = f.path + self._marker if self._marker is not None else None
            planned.append(_Planned(f, event, dest, root, marker))
        return planned

    def _event_id(self, f: _Found) -> str:
        """``SOURCE:NAME:SIZE:MTIME``, the same for the same file after a restart."""
        event_id = f"{self.ctx.source}:{f.shown}:{f.size}:{f.mtime_ns}"
        if not f.utf8:
            # Escaped names can coincide (the bytes ``\xff`` and the text ``\\xff``
            # look alike): the hash of the real bytes keeps their ids apart.
            event_id += ":" + hashlib.sha256(os.fsencode(f.name)).hexdigest()[:16]
        return bounded_id(event_id)

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
        log = self.log.bind(file=f.shown, event_id=receipt.event_id, status=receipt.status)
        dest = item.dest
        changed = False
        try:
            # Whoever may write the folder can swap the file (``rename`` is atomic) for a
            # link or another file while its event commits: only the file that was
            # recorded goes where its event says, anything else goes to failed/ as it is.
            if _identity(os.lstat(f.path)) != f.identity:
                changed = True
                dest = self._destination(f, self._failed)
                self._rename(f.path, dest, self._failed)
            else:
                self._rename(f.path, dest, item.root)
                if item.root != self._failed and _identity(os.lstat(dest)) != f.identity:
                    # swapped between the check above and the rename
                    changed = True
                    moved, dest = dest, self._destination(f, self._failed)
                    self._rename(moved, dest, self._failed)
        except FileNotFoundError:
            if receipt.status == "duplicate":
                # several daemons on one database watching one folder: the one that
                # recorded the file (or another that saw it as a duplicate) moved it
                log.info("file_moved_elsewhere", note="recorded before, moved by another")
            else:
                log.warning("file_vanished", note="removed after its event was recorded")
            return
        except _Escapes as exc:
            self._retry_at[f.path] = time.monotonic() + self.config.rescan_every
            log.error(
                "file_move_refused",
                to=_text(dest),
                error=f"{_text(exc.folder)!r} resolves to outside {_text(exc.root)!r} (a link?)",
            )
            return
        except OSError as exc:
            self._retry_at[f.path] = time.monotonic() + self.config.rescan_every
            log.error("file_move_failed", to=_text(dest), error=exc.strerror)
            return
        if item.marker is not None:
            try:
                os.replace(item.marker, dest + self.config.marker_suffix)
            except OSError as exc:
                log.warning("marker_move_failed", marker=_text(item.marker), error=exc.strerror)
        if changed:
            log.warning(
                "file_changed_after_recorded",
                to=_text(dest),
                error=f"{f.shown!r} was swapped for another file or a link after its event "
                "was recorded: it is moved to failed/ as it is, and the recorded event's "
                f"runs will not find their file at {_text(item.dest)!r}",
                runs=list(receipt.run_ids),
            )
        elif receipt.status == "invalid":
            log.warning("file_failed", to=_text(dest), error=receipt.error)
        else:
            log.info("file_taken", to=_text(dest), runs=list(receipt.run_ids), error=receipt.error)

    def _rename(self, path: str, dest: str, root: str) -> None:
        """Rename ``path`` to ``dest`` in ``root`` (``processed/`` or ``failed/``), making
        the sub-folders ``dest`` needs.

        :raises _Escapes: if ``dest``'s folder resolves to outside ``root`` (a link)
        :raises OSError: if the rename fails
        """
        folder = os.path.dirname(dest)
        real = self._real.get(root, root)
        # A sub-folder of processed/ (recursive) may have been made a link out of the tree
        # since: makedirs, and the rename, would follow it. (``rename`` itself never
        # follows the file: a link is moved as a link.)
        if not _within(os.path.realpath(folder), real, same=True):
            raise _Escapes(folder, real)
        os.makedirs(folder, exist_ok=True)
        if not _within(os.path.realpath(folder), real, same=True):
            raise _Escapes(folder, real)
        os.replace(path, dest)


class _Escapes(Exception):
    """A destination folder that resolves to outside where it should be."""

    def __init__(self, folder: str, root: str) -> None:
        super().__init__(f"{folder!r} resolves to outside {root!r}")
        self.folder = folder
        self.root = root


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    """What tells one file apart from another put in its place: device, inode, type."""
    return (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode))


def _within(path: str, folder: str, *, same: bool = False) -> bool:
    """Whether ``path`` is inside ``folder`` (or is it, with ``same``); both resolved."""
    return (same and path == folder) or path.startswith(folder.rstrip(os.sep) + os.sep)


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _undecodable(exc: BaseException) -> bool:
    """Whether the watcher stopped at a name it cannot turn into text (not UTF-8)."""
    return isinstance(exc, RuntimeError) and "decode path" in str(exc)


def _text(path: str) -> str:
    """A path as the OS gave it, as text that can be logged and stored."""
    return os_name(path)[0]


def _ignored(name: str) -> bool:
    """Hidden and temporary files: being written, or not meant for us."""
    return name.startswith(".") or name.endswith(_IGNORED_SUFFIXES)
