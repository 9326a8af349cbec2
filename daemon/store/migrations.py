"""The SQLite schema, as versioned migrations: ``PRAGMA user_version`` holds the version a
file is at, and opening it applies the migrations after that, each in its own
transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cued.daemon.errors import StoreError

if TYPE_CHECKING:
    from pathlib import Path

    import aiosqlite

__all__ = ["MIGRATIONS", "migrate"]

# Each entry moves the schema one version up; PRAGMA user_version holds the current one.
# Never edit an entry once released: add a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        run_id      TEXT PRIMARY KEY,   -- sortable by creation time
        pipeline    TEXT NOT NULL,
        state       TEXT NOT NULL,
        inputs      TEXT NOT NULL,      -- JSON
        created_at  REAL NOT NULL,
        started_at  REAL,
        ended_at    REAL,
        error       TEXT,
        event_id    TEXT
    );
    CREATE INDEX runs_unfinished ON runs (state) WHERE state IN ('queued', 'running');
    CREATE INDEX runs_by_pipeline ON runs (pipeline, run_id);
    CREATE TABLE task_instances (
        run_id      TEXT NOT NULL,
        key         TEXT NOT NULL,      -- task name, or name[i] for a mapped instance
        task        TEXT NOT NULL,
        map_index   INTEGER,
        state       TEXT NOT NULL,
        attempts    INTEGER NOT NULL,
        error       TEXT,
        updated_at  REAL NOT NULL,
        PRIMARY KEY (run_id, key)
    ) WITHOUT ROWID;
    CREATE TABLE attempts (
        run_id      TEXT NOT NULL,
        key         TEXT NOT NULL,
        attempt     INTEGER NOT NULL,
        state       TEXT NOT NULL,
        started_at  REAL NOT NULL,
        ended_at    REAL,
        error       TEXT,
        output      TEXT,               -- JSON
        PRIMARY KEY (run_id, key, attempt)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        event_id    TEXT PRIMARY KEY,   -- the same for a redelivery, where the source can tell
        source      TEXT NOT NULL,
        received_at REAL NOT NULL,
        status      TEXT NOT NULL,      -- matched, unmatched, invalid
        data        TEXT,               -- JSON
        meta        TEXT NOT NULL,      -- JSON: headers, topic/partition/offset, path, ...
        run_ids     TEXT NOT NULL,      -- JSON list of the runs it started
        error       TEXT
    );
    CREATE INDEX runs_by_event ON runs (event_id) WHERE event_id IS NOT NULL;
    CREATE TABLE dedupe_keys (
        trigger     TEXT NOT NULL,
        key         TEXT NOT NULL,
        seen_at     REAL NOT NULL,
        PRIMARY KEY (trigger, key)
    ) WITHOUT ROWID;
    CREATE TABLE source_cursors (
        source      TEXT PRIMARY KEY,
        cursor      TEXT NOT NULL,      -- a source's position, e.g. a schedule's last tick
        updated_at  REAL NOT NULL
    );
    CREATE INDEX events_by_source ON events (source, event_id);
    """,
    """
    ALTER TABLE task_instances ADD COLUMN retry_base INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN cost REAL;
    ALTER TABLE attempts ADD COLUMN usage TEXT;   -- JSON
    CREATE INDEX attempts_with_cost ON attempts (started_at) WHERE cost IS NOT NULL;
    CREATE TABLE outbox (
        alert_id    TEXT PRIMARY KEY,   -- the same on every resend
        channel     TEXT NOT NULL,
        rule        TEXT NOT NULL,
        payload     TEXT NOT NULL,      -- JSON
        created_at  REAL NOT NULL,
        sent_at     REAL,
        attempts    INTEGER NOT NULL,
        last_error  TEXT,
        next_at     REAL NOT NULL
    );
    CREATE INDEX outbox_unsent ON outbox (next_at) WHERE sent_at IS NULL;
    CREATE TABLE approvals (
        run_id        TEXT NOT NULL,
        key           TEXT NOT NULL,
        attempt       INTEGER NOT NULL,
        message       TEXT NOT NULL,
        approvers     TEXT NOT NULL,    -- JSON: names and group:NAME
        min_approvals INTEGER NOT NULL,
        on_timeout    TEXT NOT NULL,
        payload       TEXT NOT NULL,    -- JSON: the proposal
        requested_at  REAL NOT NULL,
        deadline_at   REAL,
        state         TEXT NOT NULL,    -- waiting, approved, rejected, timed_out
        decided_at    REAL,
        PRIMARY KEY (run_id, key)
    ) WITHOUT ROWID;
    CREATE INDEX approvals_waiting ON approvals (deadline_at) WHERE state = 'waiting';
    CREATE TABLE decisions (
        run_id      TEXT NOT NULL,
        key         TEXT NOT NULL,
        attempt     INTEGER NOT NULL,   -- decisions of an earlier rerun do not count
        who         TEXT NOT NULL,
        decision    TEXT NOT NULL,      -- approve, reject
        payload     TEXT,               -- JSON: the proposal as this decider edited it
        comment     TEXT,
        decided_at  REAL NOT NULL,
        PRIMARY KEY (run_id, key, attempt, who)
    ) WITHOUT ROWID;
    """,
    # the API's lists: runs newest first by pipeline and/or state, events newest first
    # by time, source or status, each a range scan from a page's cursor
    """
    CREATE INDEX runs_by_state ON runs (state, run_id);
    CREATE INDEX runs_by_pipeline_state ON runs (pipeline, state, run_id);
    CREATE INDEX events_by_time ON events (received_at, event_id);
    CREATE INDEX events_by_source_time ON events (source, received_at, event_id);
    CREATE INDEX events_by_status_time ON events (status, received_at, event_id);
    """,
    # retention (cued.daemon.store.pruning): what is old enough to go, oldest first, as a range
    # scan (events have events_by_time already)
    """
    CREATE INDEX runs_finished ON runs (ended_at)
        WHERE state IN ('succeeded', 'failed', 'cancelled');
    CREATE INDEX dedupe_by_age ON dedupe_keys (trigger, seen_at);
    CREATE INDEX outbox_by_age ON outbox (created_at);
    """,
    # pause: which pipelines are paused (a row while paused), durable across restarts;
    # runs of a paused pipeline with when_paused = "skip" end "skipped", which retention
    # counts as finished: the partial index names the states pruning reads, word for word
    """
    CREATE TABLE paused_pipelines (
        pipeline    TEXT PRIMARY KEY,
        paused_at   REAL NOT NULL,
        paused_by   TEXT
    );
    DROP INDEX runs_finished;
    CREATE INDEX runs_finished ON runs (ended_at)
        WHERE state IN ('succeeded', 'failed', 'cancelled', 'skipped');
    """,
    # traces: the traceparent a run's spans hang from (its event's span), so a run
    # resumed after a restart goes on in the trace it began in
    """
    ALTER TABLE runs ADD COLUMN traceparent TEXT;
    """,
    # live task logs (cued.daemon.runtime.task_logs): a run's lines in order, and an
    # attempt's (to read one task's, and to drop an attempt's oldest past its bound)
    """
    CREATE TABLE task_logs (
        run_id      TEXT NOT NULL,
        key         TEXT NOT NULL,
        attempt     INTEGER NOT NULL,
        seq         INTEGER NOT NULL,   -- the line's place among the run's lines
        at          REAL NOT NULL,
        stream      TEXT NOT NULL,      -- stdout, stderr, log, http, llm, cued, ...
        line        TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX task_logs_by_attempt ON task_logs (run_id, key, attempt, seq);
    """,
    # config versions: every configuration the daemon loads (at start, at each reload),
    # and the version each run started under (`cued config history`, a run's page)
    """
    CREATE TABLE config_versions (
        version     INTEGER PRIMARY KEY,
        hash        TEXT NOT NULL,      -- sha256 of the text
        text        TEXT NOT NULL,
        file        TEXT NOT NULL,
        loaded_at   REAL NOT NULL
    );
    ALTER TABLE runs ADD COLUMN config_version INTEGER;
    """,
    # waits: task instances parked until an event (wait_event) or a moment (sleep until);
    # intake finds the waits of an event's source by waits_by_source, the daemon the
    # next deadline by waits_by_deadline, and what woke but has not gone on by waits_settled
    """
    CREATE TABLE waits (
        run_id        TEXT NOT NULL,
        key           TEXT NOT NULL,
        attempt       INTEGER NOT NULL,
        kind          TEXT NOT NULL,    -- event, timer
        source        TEXT,
        match         TEXT,             -- an expression over event and context
        context       TEXT NOT NULL,    -- JSON: what match reads besides the event
        lookback_from REAL,
        deadline_at   REAL,
        on_timeout    TEXT NOT NULL,    -- fail, succeed
        opened_at     REAL NOT NULL,
        state         TEXT NOT NULL,    -- waiting, matched, expired, cancelled
        event_id      TEXT,
        output        TEXT,             -- JSON: the task's output once settled
        settled_at    REAL,
        scanned       INTEGER NOT NULL, -- 1: its lookback was checked
        applied       INTEGER NOT NULL, -- 1: its run went on
        PRIMARY KEY (run_id, key, attempt)
    ) WITHOUT ROWID;
    CREATE INDEX waits_by_source ON waits (source, run_id, key, attempt)
        WHERE state = 'waiting' AND kind = 'event';
    CREATE INDEX waits_by_deadline ON waits (deadline_at) WHERE state = 'waiting';
    CREATE INDEX waits_to_scan ON waits (run_id) WHERE state = 'waiting' AND scanned = 0;
    CREATE INDEX waits_settled ON waits (run_id) WHERE state <> 'waiting' AND applied = 0;
    CREATE TABLE run_cancels (
        run_id        TEXT PRIMARY KEY,
        event_id      TEXT NOT NULL,    -- the event of a cancel_on that asked
        source        TEXT NOT NULL,
        requested_at  REAL NOT NULL,
        done          INTEGER NOT NULL  -- 1: the run is cancelled (or had ended)
    ) WITHOUT ROWID;
    CREATE INDEX run_cancels_pending ON run_cancels (run_id) WHERE done = 0;
    """,
    # flow control: a run's key, the limit of active runs of its key, and its priority;
    # a child run's parent (the run, task instance and attempt of a `pipeline` task)
    """
    ALTER TABLE runs ADD COLUMN flow_key TEXT;
    ALTER TABLE runs ADD COLUMN key_limit INTEGER;
    ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 5;
    ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
    ALTER TABLE runs ADD COLUMN parent_key TEXT;
    ALTER TABLE runs ADD COLUMN parent_attempt INTEGER;
    CREATE UNIQUE INDEX runs_by_parent ON runs (parent_run_id, parent_key, parent_attempt)
        WHERE parent_run_id IS NOT NULL;
    """,
    # nodes (cued.daemon.store.nodes): the daemon on this file, for `cued nodes`; a
    # SQLite file has one node, which holds no lease (PostgreSQL's table, its twin)
    """
    CREATE TABLE nodes (
        node        TEXT PRIMARY KEY,
        generation  INTEGER NOT NULL,   -- its incarnation: a new one at each start
        alive       INTEGER NOT NULL,   -- 0 once it left or was found dead
        host        TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        lease_s     REAL NOT NULL,
        started_at  REAL NOT NULL,
        renewed_at  REAL NOT NULL,
        expires_at  REAL NOT NULL
    );
    """,
    # flow control (cued.daemon.core.flow): the windows (debounce, batch, a throttle's
    # delay) holding a trigger's events for a key, by when they are due (the timer's
    # index); the events each holds, in order; each throttled key's latest slots
    """
    CREATE TABLE flow_windows (
        window_id   TEXT PRIMARY KEY,
        trigger     TEXT NOT NULL,
        key         TEXT NOT NULL,
        kind        TEXT NOT NULL,      -- debounce, batch, delay
        phase       TEXT NOT NULL,      -- open, closed, slotted
        opened_at   REAL NOT NULL,
        due_at      REAL,               -- NULL: a batch with a size only, not full
        held        INTEGER NOT NULL
    );
    CREATE INDEX flow_windows_by_due ON flow_windows (due_at) WHERE due_at IS NOT NULL;
    CREATE TABLE flow_holds (
        window_id   TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        event_id    TEXT NOT NULL,
        held_at     REAL NOT NULL,
        PRIMARY KEY (window_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX flow_holds_by_event ON flow_holds (event_id);
    CREATE TABLE flow_throttles (
        trigger     TEXT NOT NULL,
        key         TEXT NOT NULL,
        starts      TEXT NOT NULL,      -- JSON: the latest slots taken, ascending
        expires_at  REAL NOT NULL,
        PRIMARY KEY (trigger, key)
    );
    """,
    # waiting runs stay in the store, a count and a cursor per pipeline and priority in
    # memory: the next ones of a lane are read in order by this index
    """
    CREATE INDEX runs_waiting_lane ON runs (pipeline, priority, run_id)
        WHERE state = 'queued' AND started_at IS NULL
            AND (key_limit IS NULL OR flow_key IS NULL);
    """,
)


async def migrate(db: aiosqlite.Connection, path: Path) -> None:
    """Bring the file to the current schema.

    :raises StoreError: if it is at a newer version than this cued knows
    """
    ((version,),) = await db.execute_fetchall("PRAGMA user_version")
    if version > len(MIGRATIONS):
        raise StoreError(
            f"{str(path)!r} has schema version {version}, newer than this cued knows "
            f"({len(MIGRATIONS)}): upgrade cued"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        await db.executescript(
            f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;"
        )
