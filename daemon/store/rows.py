"""The durable store's interface: one small Protocol, with SQLite and PostgreSQL behind it.

Writes are *submitted* (``submit``), not awaited one by one: a single writer commits
whatever has been submitted in one transaction (group commit), and ``Durable.wait()``
returns once the transaction holding a submission has committed. Rows are whole rows, so
the writer can coalesce several submissions for the same row into the last one.
"""

from __future__ import annotations

from dataclasses import field, fields
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from cued.daemon.core.priorities import DEFAULT_PRIORITY
from cued.daemon.core.records import record

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping, Sequence
    from contextlib import AbstractAsyncContextManager

    from cued.daemon.core.flow import Rule


__all__ = [
    "GIVEN_UP_AT",
    "ApprovalRow",
    "AttemptRow",
    "CancelRow",
    "ConfigVersionRow",
    "CursorRow",
    "DecisionRow",
    "DedupeClaim",
    "DedupeRow",
    "Durable",
    "EventClaim",
    "EventRow",
    "FlowJoin",
    "FlowRelease",
    "HoldRow",
    "InstanceGone",
    "InstanceRow",
    "LogLineRow",
    "LogTrim",
    "NodeRow",
    "OutboxRow",
    "PauseRow",
    "Provisional",
    "PruneCounts",
    "PrunePolicy",
    "Row",
    "RunRow",
    "Store",
    "ThrottleRow",
    "WaitRow",
    "WaitingRun",
    "WindowGone",
    "WindowRow",
    "WindowSettled",
]


@record
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
    flow_key: str | None = None
    """The flow-control key its trigger gave it (``key``), if any."""
    key_limit: int | None = None
    """Runs of its pipeline with the same ``flow_key`` that may be active at once (its
    trigger's ``concurrency.limit`` when it was made); ``None``: no such limit."""
    priority: int = DEFAULT_PRIORITY
    """0 to 9: the higher starts first when runs wait for a slot."""
    parent_run_id: str | None = None
    """The run whose ``pipeline`` task started this one (a child run), if one did."""
    parent_key: str | None = None
    """That task's instance in the parent run."""
    parent_attempt: int | None = None
    """That instance's attempt: one child per attempt."""


class WaitingRun(NamedTuple):
    """A queued run that never started, by what its place in the queue needs (its row
    stays in the store until its turn nears)."""

    run_id: str
    pipeline: str
    flow_key: str | None
    key_limit: int | None
    priority: int


@record
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


@record
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


@record
class InstanceGone:
    """Remove an instance that a rerun replaces and that has no attempts to keep (the
    placeholder of a mapped task that never expanded)."""

    run_id: str
    key: str


@record
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


@record
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


@record
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


@record
class EventRow:
    event_id: str
    source: str
    received_at: float
    status: str  # matched, unmatched, invalid
    data: Any
    meta: dict[str, Any]
    run_ids: tuple[str, ...] = ()
    error: str | None = None


@record
class EventClaim:
    """Record the event ``event_id`` (its :class:`EventRow`, in the same submission) only
    if the store holds no event of that id yet: if it does (another daemon on the same
    database recorded it first), the commit writes neither that row nor the runs it starts
    (those whose ``event_id`` it is), and :attr:`Durable.duplicates` of the submission
    names it. Checked and written in the commit's transaction, so of two daemons recording
    one event at once exactly one records it, with its runs."""

    event_id: str


@record
class DedupeClaim:
    """The run ``run_id`` (of the same submission) starts only if the key of its
    :class:`DedupeRow` (in the same submission) started no run within ``window_s``: with
    several daemons on one database, checked and written in the commit's transaction, so
    of two daemons recording one key at once exactly one starts a run. The other's run is
    recorded ``skipped`` (as a duplicate), and :attr:`Durable.deduped` names it. On SQLite
    (one daemon, whose intake checks its keys itself) nothing more is done."""

    trigger: str
    key: str
    window_s: float
    run_id: str


@record
class DedupeRow:
    """A trigger's business key was seen (starting a run) at ``seen_at``."""

    trigger: str
    key: str
    seen_at: float


@record
class WindowRow:
    """Events a trigger's flow control holds for one key, to start one run when due (see
    :mod:`cued.daemon.core.flow`)."""

    window_id: str
    trigger: str
    key: str
    kind: str  # debounce, batch, delay
    phase: str  # open, closed, slotted
    opened_at: float
    due_at: float | None
    """``None``: no time closes it (a batch with a size only)."""
    held: int
    """Events held in it."""


@record
class HoldRow:
    """An event held in a window, the ``seq``-th to join it."""

    window_id: str
    seq: int
    event_id: str
    held_at: float


@record
class WindowSettled:
    """A window's events settled at its release, in the store, with one statement: each
    gets ``note`` (after its notes so far) and ``run_id`` (if any) among its runs, and its
    status: ``held`` still if a window not released holds it (``gone`` false: this one),
    else ``matched`` if it started a run, else ``dropped``. Their data stay as they are."""

    window_id: str
    run_id: str | None
    note: str
    gone: bool


@record
class WindowGone:
    """A window released: it goes with its holds."""

    window_id: str


@record
class ThrottleRow:
    """The latest throttle slots a trigger's key took (ascending, some may lie ahead), kept
    until ``expires_at``, when the latest is a period behind."""

    trigger: str
    key: str
    starts: tuple[float, ...]
    expires_at: float


@record
class FlowJoin:
    """An event of ``key`` held by a trigger's flow control, where the database says (a
    store several nodes share): in the transaction that records it, the store decides
    with ``rule`` which window it joins, or opens, from the windows the database holds
    (see :mod:`cued.daemon.store.pg_flow`)."""

    trigger: str
    key: str
    event_id: str
    at: float
    rule: Rule


@record
class CursorRow:
    """A source's position, committed with the events that moved it."""

    source: str
    cursor: str
    updated_at: float


@record
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


@record
class WaitRow:
    """A task instance parked until an event comes (``kind`` ``event``: a ``wait_event``
    task) or a moment (``timer``: a durable ``sleep``), and how that ended.

    ``state`` goes from ``waiting`` to ``matched`` (intake, in the transaction of the
    event), ``expired`` (its deadline passed) or ``cancelled`` (with its run), once: the
    store writes a wait that is no longer ``waiting`` only to mark it ``applied`` (its run
    went on), so two wake-ups racing each other (an event and the deadline) settle it one
    way. ``scanned``: the events recorded before it (its lookback) have been checked.
    """

    run_id: str
    key: str
    attempt: int
    kind: str  # event, timer
    source: str | None
    match: str | None
    context: dict[str, Any]
    """The values ``match`` reads besides the event (``inputs``, ``tasks``, ...)."""
    lookback_from: float | None
    """Events recorded from this moment on, before the wait began, wake it too."""
    deadline_at: float | None
    on_timeout: str  # fail, succeed
    opened_at: float
    state: str = "waiting"  # waiting, matched, expired, cancelled
    event_id: str | None = None
    output: str | None = None
    """The task's output, as JSON, once settled."""
    settled_at: float | None = None
    scanned: int = 0
    applied: int = 0


@record
class CancelRow:
    """A run to cancel: an event of ``source`` satisfied its pipeline's ``cancel_on``.
    Recorded in the event's transaction; ``done`` once the run is cancelled (or had
    ended). The first event to ask is the one kept."""

    run_id: str
    event_id: str
    source: str
    requested_at: float
    done: int = 0


@record
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


@record
class PauseRow:
    """A pipeline is paused: its new runs wait (or are skipped) until it is resumed."""

    pipeline: str
    paused_at: float
    paused_by: str | None = None


@record
class ConfigVersionRow:
    """A configuration the daemon loaded: at start, or at a reload."""

    version: int
    hash: str
    """sha256 of ``text``, in hex"""
    text: str
    file: str
    loaded_at: float


@record
class NodeRow:
    """A daemon sharing the state (a node), as :meth:`Store.list_nodes` shows it."""

    node: str
    generation: int
    """Its incarnation: a new one at each start (unique in the database)."""
    alive: bool
    """False once it left (stopped) or was found dead; its runs go to others."""
    host: str
    pid: int
    lease_s: float
    """0.0 for the one node of a SQLite state, which holds no lease."""
    started_at: float
    renewed_at: float
    expires_at: float
    expired: bool = False
    """Its lease lapsed by the database's clock (when read)."""
    runs: int = 0
    """The unfinished runs it owns."""

    @classmethod
    def read(cls, r: Any, expired: bool = False, runs: int = 0) -> NodeRow:
        """The row of a ``nodes`` table (its first nine columns, SQLite's order)."""
        return cls(
            str(r[0]),
            int(r[1]),
            bool(r[2]),
            str(r[3]),
            int(r[4]),
            float(r[5]),
            float(r[6]),
            float(r[7]),
            float(r[8]),
            expired,
            runs,
        )


Row = (
    RunRow
    | InstanceRow
    | AttemptRow
    | EventRow
    | EventClaim
    | DedupeClaim
    | DedupeRow
    | CursorRow
    | InstanceGone
    | OutboxRow
    | ApprovalRow
    | DecisionRow
    | LogLineRow
    | LogTrim
    | WaitRow
    | CancelRow
    | WindowRow
    | HoldRow
    | WindowGone
    | WindowSettled
    | ThrottleRow
    | FlowJoin
)


@record
class PrunePolicy:
    """What may be deleted: rows older than a cutoff (seconds since the epoch); a cutoff
    of ``None`` keeps everything of its kind. Unfinished runs, and runs parked at an
    approval gate, are never deleted, whatever their age."""

    runs_before: float | None = None
    """Finished runs that ended before this, with their task instances, attempts,
    approval gates, decisions, waits and task log lines."""
    events_before: float | None = None
    """Events received before this (a run keeps its ``event_id``, which may then name
    an event no longer kept)."""
    alerts_before: float | None = None
    """Alerts of the outbox created before this that were sent or given up."""
    dedupe_before: Mapping[str, float] = field(default_factory=dict)
    """Per trigger: its dedupe keys seen before this (past its window, they stop nothing)."""
    dedupe_other_before: float | None = None
    """Dedupe keys of the triggers not in ``dedupe_before`` (no longer configured)."""


@record
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
    waits: int = 0
    run_cancels: int = 0

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

    def then(self, callback: Callable[[BaseException | None], None]) -> None:
        """Call ``callback`` once the submission is committed (with None), or its
        transaction has failed (with the error), in the writer's task: what must happen
        only once rows are durable, without a task waiting for it. It must not raise."""

    @property
    def duplicates(self) -> set[str]:
        """Once committed: the events of :class:`EventClaim` rows (of this submission or
        another that committed with it) that were stored already, and so not written."""

    @property
    def deduped(self) -> set[str]:
        """Once committed: the runs of :class:`DedupeClaim` rows (of this submission or
        another that committed with it) whose key another daemon had just recorded, and
        so recorded ``skipped``."""


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
    ) -> list[WaitingRun]:
        """The queued runs that never started, by id, oldest first (of
        ``pipeline`` only, if given): at most ``limit`` of them, those whose id sorts after
        ``after`` (a page's cursor)."""

    claims_waiting_runs: bool
    """Whether the runs that wait are claimed (several nodes on one database: a run waiting
    is driven by whichever node claims it, :meth:`next_waiting`); False: this daemon's
    runs are its own, read as their turn comes."""

    async def next_waiting(
        self, pipeline: str, priority: int, *, after: str, limit: int, anyone: bool = False
    ) -> list[RunRow]:
        """The next queued runs of ``pipeline``'s lane ``priority`` that never started and
        count for no key's limit, oldest first: at most ``limit``, those whose id sorts
        after ``after`` (the lane's cursor). On a shared database (a node), those of this
        node (of any node's if ``anyone``) that no live node has claimed, each claimed for
        this node in the same transaction (``FOR UPDATE SKIP LOCKED``): no other node
        drives them.

        :raises Fenced: if the node's lease was taken over
        """

    async def claim_runs(self, run_ids: Sequence[str]) -> list[RunRow]:
        """The rows of ``run_ids`` (runs to load that are known by id), in any order; on a
        shared database (a node), only those this node claims now: its own, and others'
        that no live node has claimed and that never started.

        :raises Fenced: if the node's lease was taken over
        """

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

    async def children_of(self, run_id: str) -> list[RunRow]:
        """The runs that ``pipeline`` tasks of run ``run_id`` started, oldest first."""

    async def children_to_settle(self) -> list[RunRow]:
        """Child runs that have ended while the task instance that waits for them still
        waits (the daemon stopped in between): to settle at a start."""

    async def count_running(self, pipeline: str, flow_key: str | None = None) -> int:
        """How many runs of ``pipeline`` (with ``flow_key``, if given) are running now:
        why a run waits (``cued show``)."""

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

    async def flow_state(self) -> tuple[list[WindowRow], list[ThrottleRow]]:
        """What flow control needs in memory at a start: the windows still open (one per
        key at most) and the throttles' slots (those that may still count)."""

    async def forget_throttles(self, before: float) -> None:
        """Delete the throttle slots that expired before ``before`` (in a transaction of
        its own)."""

    async def flow_next_due(self) -> float | None:
        """When the earliest window held is due, if any is."""

    async def flow_due(self, before: float, limit: int = 500) -> list[WindowRow]:
        """Windows due by ``before``, earliest first."""

    async def event_holds(self, event_ids: Sequence[str]) -> list[tuple[HoldRow, WindowRow]]:
        """Where these events are held (an event may be held by several triggers)."""

    async def window_holds(
        self, windows: Sequence[str], whole: Collection[str] = ()
    ) -> tuple[list[WindowRow], dict[str, list[tuple[HoldRow, EventRow | None]]]]:
        """Windows (those still held), and the events each holds in order (``None`` for
        one no longer kept): of the windows in ``whole``, with their data and meta; of the
        others, without (``None`` and ``{}``)."""

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

    async def waits_of_sources(
        self, sources: Sequence[str], *, after: tuple[str, str, int] | None = None, limit: int
    ) -> list[WaitRow]:
        """Event waits of these sources still ``waiting``, a page at a time (by the index
        on source and state), in order of (run, key, attempt), after ``after``."""

    async def waits_to_scan(self, limit: int) -> list[WaitRow]:
        """Event waits still ``waiting`` whose lookback has not been checked yet."""

    async def next_wait_deadline(self) -> float | None:
        """The earliest deadline of a ``waiting`` wait (a timer's moment), if any."""

    async def waits_due(self, before: float, limit: int) -> list[WaitRow]:
        """Waits still ``waiting`` whose deadline is ``before`` or earlier."""

    async def waits_settled(self, limit: int) -> list[WaitRow]:
        """Waits matched or expired whose run has not gone on yet (not ``applied``)."""

    async def get_waits(self, run_id: str) -> list[WaitRow]:
        """Every wait of a run, whatever its state."""

    async def runs_in_state(
        self, pipeline: str, state: str, *, after: str = "", limit: int
    ) -> list[RunRow]:
        """Runs of ``pipeline`` in ``state``, by id, after ``after`` (by the index on
        pipeline, state and id: the finished runs of the pipeline are not read)."""

    async def cancels_pending(self, limit: int) -> list[CancelRow]:
        """Runs asked to be cancelled by an event, not yet cancelled."""

    async def get_cancel(self, run_id: str) -> CancelRow | None:
        """Why a run was asked to be cancelled by an event, if it was."""

    async def events_of_source(self, source: str, since: float, *, limit: int) -> list[EventRow]:
        """Events of ``source`` received at ``since`` or later, oldest first."""

    async def outbox_due(self, before: float, limit: int = 100) -> list[OutboxRow]:
        """Unsent alerts whose next try is due by ``before``, oldest first."""

    async def outbox_next_at(self) -> float | None:
        """When the earliest unsent alert is due, if any is (with several nodes: of those
        no other live node claimed)."""

    async def claim_outbox(self, before: float, limit: int = 100) -> list[OutboxRow]:
        """:meth:`outbox_due`, claimed for this node to deliver: with several nodes, an
        alert claimed by another live node is not among them, and one claimed here is no
        other live node's to send (a gone node's are taken over). On SQLite, its one node
        sends every alert: :meth:`outbox_due`."""

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

    # -- nodes (see cued.daemon.store.nodes) ------------------------------------------

    async def join(
        self, node: str, *, lease_s: float, host: str, pid: int, replacing: int | None = None
    ) -> NodeRow:
        """Register the daemon as ``node``, with a new generation: from now on every
        commit is its (and fails with :class:`Fenced` once its lease was taken over). It
        owns the unfinished runs its name owned, and those no node owns.

        :param replacing: the generation this process had before it lost the database
            (PostgreSQL): that row is taken over at once instead of after its lease

        :raises StoreError: if a live node of that name holds its lease
        """

    async def renew(self) -> float | None:
        """Renew the node's lease (by the database's clock); in how many seconds the next
        other node's lease lapses (0.0: one lapsed, or the node left: its runs are to be
        adopted; None: there is no other node).

        :raises Fenced: if the node's lease was taken over
        """

    async def adopt(self) -> list[str]:
        """Take over the runs of the nodes whose lease lapsed, or that left; the ids of
        those unfinished and not parked (to resume, as after a crash), oldest first.

        :raises Fenced: if the node's own lease was taken over
        """

    async def list_nodes(self) -> list[NodeRow]:
        """The nodes, by name, each with the unfinished runs it owns."""

    shares_run_slots: bool
    """Whether runs take :meth:`take_run_slot` before they are driven (several nodes);
    False: the runner's own count is the whole count, and nothing is asked."""

    shares_events: bool
    """Whether other daemons may record events in it at the same time (several nodes), so
    that intake claims each new event (:class:`EventClaim`); False (one daemon per file):
    intake's own check of what is recorded is the whole check, and the commit reads
    nothing for it."""

    async def take_run_slot(self, pipeline: str, run_id: str, limit: int) -> bool:
        """Take one of ``pipeline``'s ``limit`` run slots across the nodes for ``run_id``
        before it is driven (one it holds already stays its own); False if all are taken
        (try again later). The commit that records the run ended or parked gives it back.
        Always true on SQLite, whose one node counts its runs itself.

        :raises Fenced: if the node's lease was taken over
        """

    async def give_back_run_slot(self, run_id: str) -> None:
        """Give back the slots of a run cancelled while it was taken (its pipeline's and
        its key's)."""

    async def run_slots_held(self, run_ids: Sequence[str]) -> set[str]:
        """Which of these runs hold a slot of their pipeline's (none on SQLite)."""

    async def take_key_slot(
        self, pipeline: str, key: str, run_id: str, priority: int, limit: int
    ) -> bool:
        """Take one of the ``limit`` slots of ``pipeline``'s flow ``key`` across the nodes
        for ``run_id`` (before its pipeline's run slot; one it holds already stays its
        own): the runs waiting on live nodes go first, the highest ``priority`` first,
        then the oldest. False if all are taken (try again later). The commit that
        records the run ended or parked gives it back. Asked only if
        :attr:`shares_run_slots`.

        :raises Fenced: if the node's lease was taken over
        """

    async def take_pool_slot(self, pool: str, holder: tuple[str, str, int], limit: int) -> bool:
        """Take one of ``pool``'s ``limit`` slots across the nodes for a task attempt
        (``holder``: its run, task instance and attempt), the first to ask first; False if
        all are taken (try again later). The commit that records the attempt's end (or
        its run's) gives it back. Asked only if :attr:`shares_run_slots`.

        :raises Fenced: if the node's lease was taken over
        """

    async def give_back_pool_slot(self, holder: tuple[str, str, int]) -> None:
        """Give back (or stop waiting for) the pool slot of an attempt that did not start."""

    def wake_slot_waiters_as(self, token: str | None) -> None:
        """Have the commits that free key or pool slots others wait for wake them, with
        notices of ``token``'s (the daemon's, pg_notify.py); None: they do not."""

    def deciding(self) -> AbstractAsyncContextManager[None]:
        """Held while a gate is decided (or its time runs out): with several nodes, by one
        node at a time, so that two decisions made on two nodes at once neither both
        settle a gate nor miss each other's approval (on SQLite, its one node's own lock
        is enough: nothing is held)."""

    async def run_owners(self, run_ids: Sequence[str]) -> dict[str, str]:
        """The node that owns each of these runs that is unfinished (on SQLite, its one
        node owns every run)."""


@runtime_checkable
class FlowRelease(Protocol):
    """A store several nodes share (PostgreSQL): its flow control's windows are the
    database's, and each is released once in the cluster, by whichever node claims it."""

    async def flow_release(
        self,
        at: float,
        limit: int,
        settle: Callable[
            [
                list[WindowRow],
                dict[str, list[tuple[HoldRow, EventRow | None]]],
                dict[tuple[str, str], tuple[float, ...]],
            ],
            list[Row],
        ],
    ) -> list[Row]:
        """Claim up to ``limit`` windows due by ``at`` that no other node is deciding on
        now, and commit what ``settle`` makes of them (given the windows, the events each
        holds, whole, and the throttle slots their keys took in the cluster) in the same
        transaction; return the rows committed (none: nothing was due, or free)."""
