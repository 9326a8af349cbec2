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
    # waits: task instances parked until an event (wait_event) or a moment (sleep until)
    """
    CREATE TABLE waits (
        run_id        TEXT COLLATE "C" NOT NULL,
        key           TEXT COLLATE "C" NOT NULL,
        attempt       BIGINT NOT NULL,
        kind          TEXT COLLATE "C" NOT NULL,    -- event, timer
        source        TEXT COLLATE "C",
        match         TEXT,                         -- an expression over event and context
        context       TEXT NOT NULL,                -- JSON: what match reads besides the event
        lookback_from DOUBLE PRECISION,
        deadline_at   DOUBLE PRECISION,
        on_timeout    TEXT NOT NULL,                -- fail, succeed
        opened_at     DOUBLE PRECISION NOT NULL,
        state         TEXT COLLATE "C" NOT NULL,    -- waiting, matched, expired, cancelled
        event_id      TEXT COLLATE "C",
        output        TEXT,                         -- JSON: the task's output once settled
        settled_at    DOUBLE PRECISION,
        scanned       BIGINT NOT NULL,              -- 1: its lookback was checked
        applied       BIGINT NOT NULL,              -- 1: its run went on
        PRIMARY KEY (run_id, key, attempt)
    );
    CREATE INDEX waits_by_source ON waits (source, run_id, key, attempt)
        WHERE state = 'waiting' AND kind = 'event';
    CREATE INDEX waits_by_deadline ON waits (deadline_at) WHERE state = 'waiting';
    CREATE INDEX waits_to_scan ON waits (run_id) WHERE state = 'waiting' AND scanned = 0;
    CREATE INDEX waits_settled ON waits (run_id) WHERE state <> 'waiting' AND applied = 0;
    CREATE TABLE run_cancels (
        run_id        TEXT COLLATE "C" PRIMARY KEY,
        event_id      TEXT COLLATE "C" NOT NULL,    -- the event of a cancel_on that asked
        source        TEXT COLLATE "C" NOT NULL,
        requested_at  DOUBLE PRECISION NOT NULL,
        done          BIGINT NOT NULL               -- 1: the run is cancelled (or had ended)
    );
    CREATE INDEX run_cancels_pending ON run_cancels (run_id) WHERE done = 0;
    """,
    # flow control: a run's key, the limit of active runs of its key, and its priority;
    # a child run's parent (the run, task instance and attempt of a `pipeline` task)
    """
    ALTER TABLE runs ADD COLUMN flow_key TEXT;
    ALTER TABLE runs ADD COLUMN key_limit BIGINT;
    ALTER TABLE runs ADD COLUMN priority BIGINT NOT NULL DEFAULT 5;
    ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
    ALTER TABLE runs ADD COLUMN parent_key TEXT;
    ALTER TABLE runs ADD COLUMN parent_attempt BIGINT;
    CREATE UNIQUE INDEX runs_by_parent ON runs (parent_run_id, parent_key, parent_attempt)
        WHERE parent_run_id IS NOT NULL;
    """,
    # nodes (cued.daemon.store.nodes, SQLite's migration of the same name): the daemons
    # sharing the database, each with a lease renewed by the database's clock, which
    # node owns each unfinished run, and the runs being driven (a pipeline's run slots,
    # for max_active_runs across the nodes). A generation is unique in the database (a
    # sequence), so a stale incarnation never matches a later one of the same name.
    # cued_fenced fails a commit of a node whose lease was taken over; cued_take_run_slot
    # takes one of a pipeline's slots (see pg_nodes.py).
    """
    CREATE SEQUENCE node_generations;
    CREATE TABLE nodes (
        node        TEXT COLLATE "C" PRIMARY KEY,
        generation  BIGINT NOT NULL,
        alive       INTEGER NOT NULL,
        host        TEXT NOT NULL,
        pid         BIGINT NOT NULL,
        lease_s     DOUBLE PRECISION NOT NULL,
        started_at  DOUBLE PRECISION NOT NULL,
        renewed_at  DOUBLE PRECISION NOT NULL,
        expires_at  DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE run_owners (
        run_id      TEXT COLLATE "C" PRIMARY KEY,
        node        TEXT COLLATE "C" NOT NULL
    );
    CREATE INDEX run_owners_by_node ON run_owners (node, run_id);
    CREATE TABLE run_slots (
        run_id      TEXT COLLATE "C" PRIMARY KEY,
        pipeline    TEXT COLLATE "C" NOT NULL,
        node        TEXT COLLATE "C" NOT NULL,
        held        INTEGER NOT NULL            -- 1: holds a slot; 0: waits for one
    );
    CREATE INDEX run_slots_by_pipeline ON run_slots (pipeline, held, run_id);
    CREATE FUNCTION cued_fenced(node TEXT, generation BIGINT) RETURNS INTEGER
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION USING ERRCODE = 'CUF01', MESSAGE = format(
            'node %s (generation %s) is fenced: its lease was taken over', node, generation);
    END $$;
    CREATE FUNCTION cued_take_run_slot(
        p_node TEXT, p_generation BIGINT, p_pipeline TEXT, p_run TEXT, p_limit BIGINT
    ) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
    DECLARE
        v_held INTEGER;
        v_free BIGINT;
    BEGIN
        PERFORM 1 FROM nodes
            WHERE node = p_node AND generation = p_generation AND alive = 1 FOR SHARE;
        IF NOT FOUND THEN
            PERFORM cued_fenced(p_node, p_generation);
        END IF;
        -- the run waits for a slot (or holds one already), as this node's
        INSERT INTO run_slots VALUES (p_run, p_pipeline, p_node, 0)
            ON CONFLICT (run_id) DO UPDATE SET node = p_node RETURNING held INTO v_held;
        IF v_held = 1 THEN
            RETURN TRUE;
        END IF;
        -- one taker of a pipeline's slots at a time; each count below is a statement of
        -- its own, so it sees every slot taken before this one got the lock
        PERFORM pg_advisory_xact_lock(hashtextextended('cued:run_slots:' || p_pipeline, 0));
        v_free := p_limit - (SELECT count(*) FROM run_slots
                             WHERE pipeline = p_pipeline AND held = 1);
        -- the oldest runs waiting on live nodes go first, whichever node asks first
        IF v_free <= 0 OR v_free <= (
            SELECT count(*) FROM run_slots s JOIN nodes n ON n.node = s.node
            WHERE s.pipeline = p_pipeline AND s.held = 0 AND s.run_id < p_run
                AND n.alive = 1
                AND n.expires_at > extract(epoch FROM clock_timestamp())::float8
        ) THEN
            RETURN FALSE;
        END IF;
        UPDATE run_slots SET held = 1 WHERE run_id = p_run;
        RETURN TRUE;
    END $$;
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
    # slots across the nodes (pg_nodes.py), as run_slots for max_active_runs: a flow
    # key's (a trigger's concurrency limit), taken by a run before its pipeline's; a
    # pool's, taken by a task attempt. A row with held = 0 waits (the first in order on
    # a live node goes first). cued_take_key_slot and cued_take_pool_slot take one.
    """
    CREATE TABLE key_slots (
        run_id      TEXT COLLATE "C" PRIMARY KEY,
        pipeline    TEXT COLLATE "C" NOT NULL,
        key         TEXT COLLATE "C" NOT NULL,
        node        TEXT COLLATE "C" NOT NULL,
        priority    BIGINT NOT NULL,
        held        INTEGER NOT NULL            -- 1: holds a slot; 0: waits for one
    );
    CREATE INDEX key_slots_by_key ON key_slots (pipeline, key, held);
    CREATE INDEX key_slots_by_node ON key_slots (node);
    CREATE TABLE pool_slots (
        run_id      TEXT COLLATE "C" NOT NULL,
        key         TEXT COLLATE "C" NOT NULL,  -- the task instance's
        attempt     BIGINT NOT NULL,
        pool        TEXT COLLATE "C" NOT NULL,
        node        TEXT COLLATE "C" NOT NULL,
        asked_at    DOUBLE PRECISION NOT NULL,  -- by the database's clock: the order
        held        INTEGER NOT NULL,
        PRIMARY KEY (run_id, key, attempt)
    );
    CREATE INDEX pool_slots_by_pool ON pool_slots (pool, held, asked_at);
    CREATE INDEX pool_slots_by_node ON pool_slots (node);
    CREATE FUNCTION cued_take_key_slot(
        p_node TEXT, p_generation BIGINT, p_pipeline TEXT, p_key TEXT, p_run TEXT,
        p_priority BIGINT, p_limit BIGINT
    ) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
    DECLARE
        v_held INTEGER;
        v_free BIGINT;
    BEGIN
        PERFORM 1 FROM nodes
            WHERE node = p_node AND generation = p_generation AND alive = 1 FOR SHARE;
        IF NOT FOUND THEN
            PERFORM cued_fenced(p_node, p_generation);
        END IF;
        INSERT INTO key_slots VALUES (p_run, p_pipeline, p_key, p_node, p_priority, 0)
            ON CONFLICT (run_id) DO UPDATE SET node = p_node, priority = p_priority
            RETURNING held INTO v_held;
        IF v_held = 1 THEN
            RETURN TRUE;
        END IF;
        -- one taker of a key's slots at a time (see cued_take_run_slot)
        PERFORM pg_advisory_xact_lock(
            hashtextextended(p_key, hashtextextended('cued:key_slots:' || p_pipeline, 0)));
        v_free := p_limit - (SELECT count(*) FROM key_slots
                             WHERE pipeline = p_pipeline AND key = p_key AND held = 1);
        -- the runs waiting on live nodes go first by priority, then the oldest
        IF v_free <= 0 OR v_free <= (
            SELECT count(*) FROM key_slots s JOIN nodes n ON n.node = s.node
            WHERE s.pipeline = p_pipeline AND s.key = p_key AND s.held = 0
                AND (s.priority > p_priority OR (s.priority = p_priority AND s.run_id < p_run))
                AND n.alive = 1
                AND n.expires_at > extract(epoch FROM clock_timestamp())::float8
        ) THEN
            RETURN FALSE;
        END IF;
        UPDATE key_slots SET held = 1 WHERE run_id = p_run;
        RETURN TRUE;
    END $$;
    CREATE FUNCTION cued_take_pool_slot(
        p_node TEXT, p_generation BIGINT, p_pool TEXT, p_run TEXT, p_key TEXT,
        p_attempt BIGINT, p_limit BIGINT
    ) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
    DECLARE
        v_held INTEGER;
        v_asked DOUBLE PRECISION;
        v_free BIGINT;
    BEGIN
        PERFORM 1 FROM nodes
            WHERE node = p_node AND generation = p_generation AND alive = 1 FOR SHARE;
        IF NOT FOUND THEN
            PERFORM cued_fenced(p_node, p_generation);
        END IF;
        INSERT INTO pool_slots VALUES (p_run, p_key, p_attempt, p_pool, p_node,
                extract(epoch FROM clock_timestamp())::float8, 0)
            ON CONFLICT (run_id, key, attempt) DO UPDATE SET node = p_node
            RETURNING held, asked_at INTO v_held, v_asked;
        IF v_held = 1 THEN
            RETURN TRUE;
        END IF;
        PERFORM pg_advisory_xact_lock(hashtextextended('cued:pool_slots:' || p_pool, 0));
        v_free := p_limit - (SELECT count(*) FROM pool_slots WHERE pool = p_pool AND held = 1);
        -- the attempts waiting on live nodes go first, the first to ask first
        IF v_free <= 0 OR v_free <= (
            SELECT count(*) FROM pool_slots s JOIN nodes n ON n.node = s.node
            WHERE s.pool = p_pool AND s.held = 0
                AND (s.asked_at, s.run_id, s.key, s.attempt) < (v_asked, p_run, p_key, p_attempt)
                AND n.alive = 1
                AND n.expires_at > extract(epoch FROM clock_timestamp())::float8
        ) THEN
            RETURN FALSE;
        END IF;
        UPDATE pool_slots SET held = 1 WHERE run_id = p_run AND key = p_key AND attempt = p_attempt;
        RETURN TRUE;
    END $$;
    """,
    # several nodes: the node that delivers each alert (no table of SQLite's: its one node
    # sends them all); a claim goes with its alert when the outbox is pruned
    """
    CREATE TABLE outbox_claims (
        alert_id    TEXT COLLATE "C" PRIMARY KEY REFERENCES outbox ON DELETE CASCADE,
        node        TEXT COLLATE "C" NOT NULL
    );
    """,
    # waiting runs: a lane's next ones read in order by this index, and claimed by the
    # node that drives them (``claimed``: that node's generation then; a claim of a
    # generation that is no longer its node's counts for nothing)
    """
    CREATE INDEX runs_waiting_lane ON runs (pipeline, priority, run_id)
        WHERE state = 'queued' AND started_at IS NULL
            AND (key_limit IS NULL OR flow_key IS NULL);
    ALTER TABLE run_owners ADD COLUMN claimed BIGINT NOT NULL DEFAULT 0;
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
