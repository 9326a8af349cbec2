"""The durable store's interface: one small Protocol, with SQLite and PostgreSQL behind it.

Writes are *submitted* (``submit``), not awaited one by one: a single writer commits
whatever has been submitted in one transaction (group commit), and ``Durable.wait()``
returns once the transaction holding a submission has committed. Rows are whole rows, so
the writer can coalesce several submissions for the same row into the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence


__all__ = [
    "GIVEN_UP_AT",
    "ApprovalRow",
    "AttemptRow",
    "ConfigVersionRow",
    "CursorRow",
    "DecisionRow",
    "DedupeRow",
    "Durable",
    "EventRow",
    "InstanceGone",
    "InstanceRow",
    "LogLineRow",
    "LogTrim",
    "OutboxRow",
    "PauseRow",
    "Provisional",
    "PruneCounts",
    "PrunePolicy",
    "Row",
    "RunRow",
    "Store",
]


@dataclass(frozen=True, slots=True)
class RunRow:
    run_id: str
    pipeline: str
    state: str
    inputs: dict[str, Any]
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    event_id: str | None = None
    traceparent: str | None = None
    """The W3C ``traceparent`` the run's spans hang from: its event's span, or the
    caller's (see :mod:`cued.daemon.sdk.tracing`); kept so a resumed run stays in its trace."""
    config_version: int | None = None
    """The configuration version the run started under (``cued config show VERSION``);
    ``None`` for runs recorded before versions were kept."""


@dataclass(frozen=True, slots=True)
class InstanceRow:
    run_id: str
    key: str
    task: str
    map_index: int | None
    state: str
    attempts: int
    error: str | None
    updated_at: float
    retry_base: int = 0
    """Attempts made before the latest rerun: retries count from there."""


@dataclass(frozen=True, slots=True)
class AttemptRow:
    run_id: str
    key: str
    attempt: int
    state: str
    started_at: float
    ended_at: float | None = None
    error: str | None = None
    output: Any = None
    cost: float | None = None
    """Money an AI step spent in this attempt (in the unit its prices are given in)."""
    usage: dict[str, Any] | None = None
    """Token usage reported by an AI step."""


@dataclass(frozen=True, slots=True)
class InstanceGone:
    """Remove an instance that a rerun replaces and that has no attempts to keep (the
    placeholder of a mapped task that never expanded)."""

    run_id: str
    key: str


@dataclass(frozen=True, slots=True)
class LogLineRow:
    """One line a task attempt wrote while it ran (stdout, stderr, a log record, a
    request), numbered by ``seq`` in the order of the whole run's lines."""

    run_id: str
    key: str
    attempt: int
    seq: int
    at: float
    stream: str
    line: str


@dataclass(frozen=True, slots=True)
class LogTrim:
    """Drop an attempt's lines numbered below ``before_seq``: it wrote more than it may
    keep (committed after the lines of the same batch, so a line of the batch goes too)."""

    run_id: str
    key: str
    attempt: int
    before_seq: int


#: ``next_at`` of an alert that is no longer tried (9999-12-31): a real number, so the row
#: stays readable as JSON, and later than anything ``outbox_due`` is asked for.
GIVEN_UP_AT = 253402300799.0


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An alert to send; ``alert_id`` is the same on every resend."""

    alert_id: str
    channel: str
    rule: str
    payload: dict[str, Any]
    created_at: float
    sent_at: float | None = None
    attempts: int = 0
    last_error: str | None = None
    next_at: float = 0.0


@dataclass(frozen=True, slots=True)
class EventRow:
    event_id: str
    source: str
    received_at: float
    status: str  # matched, unmatched, invalid
    data: Any
    meta: dict[str, Any]
    run_ids: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DedupeRow:
    """A trigger's business key was seen (starting a run) at ``seen_at``."""

    trigger: str
    key: str
    seen_at: float


@dataclass(frozen=True, slots=True)
class CursorRow:
    """A source's position, committed with the events that moved it."""

    source: str
    cursor: str
    updated_at: float


@dataclass(frozen=True, slots=True)
class ApprovalRow:
    """An approval gate's request, and how it was settled."""

    run_id: str
    key: str
    attempt: int
    message: str
    approvers: tuple[str, ...]
    min_approvals: int
    on_timeout: str
    payload: Any
    requested_at: float
    deadline_at: float | None
    state: str  # waiting, approved, rejected, timed_out
    decided_at: float | None = None


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One person's decision on a gate: who, when and why."""

    run_id: str
    key: str
    attempt: int
    who: str
    decision: str  # approve, reject
    payload: Any
    comment: str | None
    decided_at: float


@dataclass(frozen=True, slots=True)
class PauseRow:
    """A pipeline is paused: its new runs wait (or are skipped) until it is resumed."""

    pipeline: str
    paused_at: float
    paused_by: str | None = None


@dataclass(frozen=True, slots=True)
class ConfigVersionRow:
    """A configuration the daemon loaded: at start, or at a reload."""

    version: int
    hash: str
    """sha256 of ``text``, in hex"""
    text: str
    file: str
    loaded_at: float


Row = (
    RunRow
    | InstanceRow
    | AttemptRow
    | EventRow
    | DedupeRow
    | CursorRow
    | InstanceGone
    | OutboxRow
    | ApprovalRow
    | DecisionRow
    | LogLineRow
    | LogTrim
)


@dataclass(frozen=True, slots=True)
class PrunePolicy:
    """What may be deleted: rows older than a cutoff (seconds since the epoch); a cutoff
    of ``None`` keeps everything of its kind. Unfinished runs, and runs parked at an
    approval gate, are never deleted, whatever their age."""

    runs_before: float | None = None
    """Finished runs that ended before this, with their task instances, attempts,
    approval gates, decisions and task log lines."""
    events_before: float | None = None
    """Events received before this (a run keeps its ``event_id``, which may then name
    an event no longer kept)."""
    alerts_before: float | None = None
    """Alerts of the outbox created before this that were sent or given up."""
    dedupe_before: Mapping[str, float] = field(default_factory=dict)
    """Per trigger: its dedupe keys seen before this (past its window, they stop nothing)."""
    dedupe_other_before: float | None = None
    """Dedupe keys of the triggers not in ``dedupe_before`` (no longer configured)."""


@dataclass(frozen=True, slots=True)
class PruneCounts:
    """Rows deleted (or that would be), by table."""

    runs: int = 0
    task_instances: int = 0
    attempts: int = 0
    approvals: int = 0
    decisions: int = 0
    task_logs: int = 0
    events: int = 0
    dedupe_keys: int = 0
    outbox: int = 0

    def __add__(self, other: PruneCounts) -> PruneCounts:
        return PruneCounts(*(getattr(self, f) + getattr(other, f) for f in self.tables()))

    @property
    def total(self) -> int:
        return sum(getattr(self, f) for f in self.tables())

    def as_dict(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in self.tables()}

    @classmethod
    def tables(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


class Durable(Protocol):
    async def wait(self) -> None:
        """Return once the submission is committed.

        :raises StoreError: if the transaction holding it failed
        """


class Provisional(Protocol):
    """Rows that are only worth writing if a commit begins before they are withdrawn (see
    :meth:`Store.provisional`)."""

    def rows(self) -> list[Row]:
        """The rows, as of now."""


class Store(Protocol):
    """Durable state of runs, task instances, attempts and events."""

    @property
    def where(self) -> str:
        """Where the state lives, as messages show it: a file's path, or a database's
        URL without its password."""

    def submit(self, rows: list[Row]) -> Durable:
        """Queue rows for the next group commit; all of them commit in one transaction."""

    def provisional(self, rows: Provisional) -> None:
        """Have ``rows.rows()`` join the next commit if it begins before :meth:`withdraw`:
        an attempt's start, which its end replaces, so that an attempt that ends before
        the next commit has its end rows built and written, and nothing else. Once a
        commit has taken them, they stay with it (a later withdraw does nothing)."""

    def withdraw(self, rows: Provisional) -> None:
        """Take back what :meth:`provisional` left, unless a commit has taken it."""

    async def runs_to_resume(
        self, *, waiting: bool = True
    ) -> list[tuple[RunRow, list[InstanceRow], dict[str, Any]]]:
        """Runs that are not finished, with their instances and the outputs of the
        instances that succeeded (by instance key), oldest first.

        :param waiting: also the queued runs that never started (false: those are read
            by id with :meth:`waiting_runs`, as there may be very many)
        """

    async def waiting_runs(
        self, pipeline: str | None = None, *, after: str = "", limit: int = 1_000_000_000
    ) -> list[tuple[str, str]]:
        """The ids and pipelines of the queued runs that never started, oldest first (of
        ``pipeline`` only, if given): at most ``limit`` of them, those whose id sorts after
        ``after`` (a page's cursor)."""

    def on_commit(self, listener: Callable[[float, Sequence[Row]], None]) -> None:
        """Call ``listener(seconds, rows)`` after every commit, with how long it took and
        the rows it committed (a row submitted twice within one commit is there once, as
        last submitted): for live updates and metrics, which must only ever show what is
        durable. Listeners run in the writer: they must be quick and must not block."""

    def writer_stalled_s(self) -> float:
        """How long work submitted to the writer has waited without a commit finishing
        (0.0 while the writer has nothing to do): the watchdog's measure of a wedged
        writer."""

    async def ping(self) -> None:
        """Answer a trivial query (readiness).

        :raises StoreError: if the store cannot answer
        """

    async def list_runs(
        self,
        *,
        limit: int = 50,
        pipeline: str | None = None,
        state: str | None = None,
        before: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
    ) -> list[RunRow]:
        """Runs, newest first.

        :param before: only runs whose id sorts before this one (a page's cursor)
        :param created_after: only runs created at or after this time
        :param created_before: only runs created before this time
        """

    async def get_runs(self, run_ids: Sequence[str]) -> list[RunRow]:
        """These runs (those that exist), in no particular order."""

    async def count_runs_by_state(self) -> dict[str, int]:
        """How many runs are in each state (states without runs are left out)."""

    async def get_run(self, run_id: str) -> RunRow | None: ...

    async def get_instances(self, run_id: str) -> list[InstanceRow]: ...

    async def get_attempts(self, run_id: str) -> list[AttemptRow]: ...

    async def get_log_lines(
        self,
        run_id: str,
        *,
        task: str | None = None,
        attempt: int | None = None,
        after: int = 0,
        limit: int = 1000,
    ) -> list[LogLineRow]:
        """A run's task log lines numbered above ``after``, in order.

        :param task: only an instance's (its key, ``name[i]``) or, given a task's name,
            those of all its instances
        :param attempt: only this attempt's
        """

    async def last_log_seq(self, run_id: str) -> int:
        """The number of a run's last task log line kept, 0 if none is."""

    async def known_events(self, event_ids: list[str]) -> set[str]:
        """Which of these events are recorded already."""

    async def dedupe_seen(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], float]:
        """When each of these (trigger, business key) pairs last started a run."""

    async def get_cursor(self, source: str) -> str | None: ...

    async def run_state(
        self, run_id: str
    ) -> tuple[RunRow, list[InstanceRow], dict[str, Any]] | None:
        """A run with its instances and the outputs of their latest attempts."""

    async def get_approval(self, run_id: str, key: str) -> ApprovalRow | None: ...

    async def list_approvals(
        self, *, state: str | None = "waiting", limit: int = 100
    ) -> list[ApprovalRow]: ...

    async def count_waiting_approvals(self) -> int:
        """How many approval gates wait for a decision."""

    async def next_approval_deadline(self) -> float | None: ...

    async def approvals_due(self, before: float) -> list[ApprovalRow]: ...

    async def get_decisions(self, run_id: str, key: str | None = None) -> list[DecisionRow]: ...

    async def outbox_due(self, before: float, limit: int = 100) -> list[OutboxRow]:
        """Unsent alerts whose next try is due by ``before``, oldest first."""

    async def outbox_next_at(self) -> float | None:
        """When the earliest unsent alert is due, if any is."""

    async def costs(self, *, run_id: str | None = None, since: float | None = None) -> float:
        """Money spent by attempts (of one run, or since a time)."""

    async def list_events(
        self,
        *,
        limit: int = 50,
        source: str | None = None,
        status: str | None = None,
        before: tuple[float, str] | None = None,
    ) -> list[EventRow]:
        """Events, newest first (by time received, then id).

        :param before: only events that sort after this ``(received_at, event_id)`` in
            that order (a page's cursor)
        """

    async def get_events(self, event_ids: Sequence[str]) -> list[EventRow]:
        """These events (those that exist), in no particular order."""

    async def get_approvals(self, run_id: str) -> list[ApprovalRow]:
        """Every approval gate of a run, whatever its state."""

    async def list_assets(self) -> list[tuple[str, int, EventRow]]:
        """Every asset that has been produced: its name, how many versions it has (asset
        events ``asset:NAME``) and the latest of them."""

    async def prune(self, policy: PrunePolicy, *, batch: int = 500) -> PruneCounts:
        """Delete what ``policy`` lets go, at most ``batch`` rows per transaction, each
        transaction taking its turn between the group commits of other writes (so none
        waits long behind it); return once nothing more goes.

        :raises StoreError: if a transaction failed (those before it stay committed)
        """

    async def prunable(self, policy: PrunePolicy) -> PruneCounts:
        """What :meth:`prune` would delete now, deleting nothing."""

    async def set_paused(self, pipeline: str, pause: PauseRow | None) -> None:
        """Record that ``pipeline`` is paused (``pause``) or not (``None``), durably before
        this returns (in a transaction of its own).

        :raises StoreError: if it could not be recorded
        """

    async def paused_pipelines(self) -> dict[str, PauseRow]:
        """The pipelines that are paused, by name."""

    async def add_config_version(self, text: str, file: str, at: float) -> ConfigVersionRow:
        """Record a configuration the daemon loaded, durably before this returns; the
        latest version is given back instead when its text is the same (a restart of an
        unchanged file adds none).

        :raises StoreError: if it could not be recorded
        """

    async def config_versions(self, *, limit: int = 100) -> list[ConfigVersionRow]:
        """The configurations loaded, newest first."""

    async def config_version(self, version: int) -> ConfigVersionRow | None:
        """One configuration loaded, or ``None`` if there is no such version."""
