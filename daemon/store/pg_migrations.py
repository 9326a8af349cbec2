"""The PostgreSQL schema, as versioned migrations of its own (the SQLite ones stay SQLite's).

The table ``cued_schema`` holds the version a database is at. Opening it applies the
migrations after that in one transaction, under a transaction-level advisory lock: two
daemons starting at once on an empty database take turns, and the second finds the schema
current. PostgreSQL's DDL is transactional, so a migration that fails leaves nothing half
done.

The tables are SQLite's at its latest migration, column for column in the same order (the
store reads rows by position, the SQLite way); keys and names are ``COLLATE "C"``, so that
they sort by code point as in SQLite (ids by creation time, ``name[`` ranges of a task's
mapped instances) whatever collation the database has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cued.daemon.errors import StoreError

if TYPE_CHECKING:
    import asyncpg

__all__ = ["MIGRATION_LOCK", "PG_MIGRATIONS", "migrate"]

#: The advisory lock (its 64-bit key: ``cued:mig`` in ASCII) migrations hold.
MIGRATION_LOCK = int.from_bytes(b"cued:mig", "big", signed=True)

# Each entry moves the schema one version up; cued_schema holds the current one.
# Never edit an entry once released: append a new one.
PG_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        run_id      TEXT COLLATE "C" PRIMARY KEY,   -- sortable by creation time
        pipeline    TEXT COLLATE "C" NOT NULL,
        state       TEXT COLLATE "C" NOT NULL,
        inputs      TEXT NOT NULL,                  -- JSON, as written (see sqlite.py)
        created_at  DOUBLE PRECISION NOT NULL,
        started_at  DOUBLE PRECISION,
        ended_at    DOUBLE PRECISION,
        error       TEXT,
        event_id    TEXT COLLATE "C",
        traceparent TEXT
    );
    CREATE INDEX runs_unfinished ON runs (state) WHERE state IN ('queued', 'running');
    CREATE INDEX runs_by_event ON runs (event_id) WHERE event_id IS NOT NULL;
    CREATE INDEX runs_by_state ON runs (state, run_id);
    CREATE INDEX runs_by_pipeline_state ON runs (pipeline, state, run_id);
    CREATE INDEX runs_by_pipeline ON runs (pipeline, run_id);
    CREATE INDEX runs_finished ON runs (ended_at)
        WHERE state IN ('succeeded', 'failed', 'cancelled', 'skipped');
    CREATE TABLE task_instances (
        run_id      TEXT COLLATE "C" NOT NULL,
        key         TEXT COLLATE "C" NOT NULL,      -- task name, or name[i] if mapped
        task        TEXT COLLATE "C" NOT NULL,
        map_index   BIGINT,
        state       TEXT COLLATE "C" NOT NULL,
        attempts    BIGINT NOT NULL,
        error       TEXT,
        updated_at  DOUBLE PRECISION NOT NULL,
        retry_base  BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, key)
    );
    CREATE TABLE attempts (
        run_id      TEXT COLLATE "C" NOT NULL,
        key         TEXT COLLATE "C" NOT NULL,
        attempt     BIGINT NOT NULL,
        state       TEXT COLLATE "C" NOT NULL,
        started_at  DOUBLE PRECISION NOT NULL,
        ended_at    DOUBLE PRECISION,
        error       TEXT,
        output      TEXT,                           -- JSON
        cost        DOUBLE PRECISION,
        usage       TEXT,                           -- JSON
        PRIMARY KEY (run_id, key, attempt)
    );
    CREATE INDEX attempts_with_cost ON attempts (started_at) WHERE cost IS NOT NULL;
    CREATE TABLE events (
        event_id    TEXT COLLATE "C" PRIMARY KEY,
        source      TEXT COLLATE "C" NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        status      TEXT COLLATE "C" NOT NULL,      -- matched, unmatched, invalid
        data        TEXT,                           -- JSON
        meta        TEXT NOT NULL,                  -- JSON
        run_ids     TEXT NOT NULL,                  -- JSON list of the runs it started
        error       TEXT
    );
    CREATE INDEX events_by_source ON events (source, event_id);
    CREATE INDEX events_by_time ON events (received_at, event_id);
    CREATE INDEX events_by_source_time ON events (source, received_at, event_id);
    CREATE INDEX events_by_status_time ON events (status, received_at, event_id);
    CREATE TABLE dedupe_keys (
        trigger     TEXT COLLATE "C" NOT NULL,
        key         TEXT COLLATE "C" NOT NULL,
        seen_at     DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (trigger, key)
    );
    CREATE INDEX dedupe_by_age ON dedupe_keys (trigger, seen_at);
    CREATE TABLE source_cursors (
        source      TEXT COLLATE "C" PRIMARY KEY,
        cursor      TEXT NOT NULL,
        updated_at  DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE outbox (
        alert_id    TEXT COLLATE "C" PRIMARY KEY,   -- the same on every resend
        channel     TEXT NOT NULL,
        rule        TEXT NOT NULL,
        payload     TEXT NOT NULL,                  -- JSON
        created_at  DOUBLE PRECISION NOT NULL,
        sent_at     DOUBLE PRECISION,
        attempts    BIGINT NOT NULL,
        last_error  TEXT,
        next_at     DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX outbox_unsent ON outbox (next_at) WHERE sent_at IS NULL;
    CREATE INDEX outbox_by_age ON outbox (created_at);
    CREATE TABLE approvals (
        run_id        TEXT COLLATE "C" NOT NULL,
        key           TEXT COLLATE "C" NOT NULL,
        attempt       BIGINT NOT NULL,
        message       TEXT NOT NULL,
        approvers     TEXT NOT NULL,                -- JSON: names and group:NAME
        min_approvals BIGINT NOT NULL,
        on_timeout    TEXT NOT NULL,
        payload       TEXT NOT NULL,                -- JSON: the proposal
        requested_at  DOUBLE PRECISION NOT NULL,
        deadline_at   DOUBLE PRECISION,
        state         TEXT COLLATE "C" NOT NULL,    -- waiting, approved, rejected, timed_out
        decided_at    DOUBLE PRECISION,
        PRIMARY KEY (run_id, key)
    );
    CREATE INDEX approvals_waiting ON approvals (deadline_at) WHERE state = 'waiting';
    CREATE TABLE decisions (
        run_id      TEXT COLLATE "C" NOT NULL,
        key         TEXT COLLATE "C" NOT NULL,
        attempt     BIGINT NOT NULL,
        who         TEXT COLLATE "C" NOT NULL,
        decision    TEXT NOT NULL,                  -- approve, reject
        payload     TEXT,                           -- JSON
        comment     TEXT,
        decided_at  DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (run_id, key, attempt, who)
    );
    CREATE TABLE paused_pipelines (
        pipeline    TEXT COLLATE "C" PRIMARY KEY,
        paused_at   DOUBLE PRECISION NOT NULL,
        paused_by   TEXT
    );
    CREATE TABLE task_logs (
        run_id      TEXT COLLATE "C" NOT NULL,
        key         TEXT COLLATE "C" NOT NULL,
        attempt     BIGINT NOT NULL,
        seq         BIGINT NOT NULL,                -- the line's place among the run's lines
        at          DOUBLE PRECISION NOT NULL,
        stream      TEXT NOT NULL,
        line        TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    CREATE INDEX task_logs_by_attempt ON task_logs (run_id, key, attempt, seq);
    """,
    # config versions (SQLite's migration of the same name): every configuration the
    # daemon loads, and the version each run started under. The version is given by the
    # store (the latest + 1, under the writer), not by a sequence, so `cued store copy`
    # can bring versions over as they are.
    """
    CREATE TABLE config_versions (
        version     BIGINT PRIMARY KEY,
        hash        TEXT NOT NULL,
        text        TEXT NOT NULL,
        file        TEXT NOT NULL,
        loaded_at   DOUBLE PRECISION NOT NULL
    );
    ALTER TABLE runs ADD COLUMN config_version BIGINT;
    """,
    # flow control (SQLite's migration of the same tables): windows holding a trigger's
    # events for a key, the events each holds, each throttled key's latest slots
    """
    CREATE TABLE flow_windows (
        window_id   TEXT COLLATE "C" PRIMARY KEY,
        trigger     TEXT COLLATE "C" NOT NULL,
        key         TEXT COLLATE "C" NOT NULL,
        kind        TEXT NOT NULL,
        phase       TEXT NOT NULL,
        opened_at   DOUBLE PRECISION NOT NULL,
        due_at      DOUBLE PRECISION,
        held        BIGINT NOT NULL
    );
    CREATE INDEX flow_windows_by_due ON flow_windows (due_at) WHERE due_at IS NOT NULL;
    CREATE TABLE flow_holds (
        window_id   TEXT COLLATE "C" NOT NULL,
        seq         BIGINT NOT NULL,
        event_id    TEXT COLLATE "C" NOT NULL,
        held_at     DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (window_id, seq)
    );
    CREATE INDEX flow_holds_by_event ON flow_holds (event_id);
    CREATE TABLE flow_throttles (
        trigger     TEXT COLLATE "C" NOT NULL,
        key         TEXT COLLATE "C" NOT NULL,
        starts      TEXT NOT NULL,
        expires_at  DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (trigger, key)
    );
    """,
)


async def migrate(db: asyncpg.Connection, where: str) -> None:
    """Bring the database to the current schema, taking turns with anyone else doing so.

    :raises StoreError: if it is at a newer version than this cued knows
    """
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await db.execute("CREATE TABLE IF NOT EXISTS cued_schema (version INTEGER NOT NULL)")
        version = await db.fetchval("SELECT max(version) FROM cued_schema")
        if version is None:
            version = 0
            await db.execute("INSERT INTO cued_schema VALUES (0)")
        if version > len(PG_MIGRATIONS):
            raise StoreError(
                f"{where!r} has schema version {version}, newer than this cued knows "
                f"({len(PG_MIGRATIONS)}): upgrade cued"
            )
        for number, script in enumerate(PG_MIGRATIONS[version:], start=version + 1):
            await db.execute(script)
            await db.execute("UPDATE cued_schema SET version = $1", number)
