"""Notices between daemons on one PostgreSQL database (the real server): each hears the
others, never itself; several notices go in one statement; a listening connection that is
lost is made again, and the daemon is told it may have missed notices."""

from __future__ import annotations

import anyio
import asyncpg

from cued.daemon.store.pg_notify import Notices
from tests.support.stores import fresh_database


async def test_daemons_hear_each_other_not_themselves_and_listen_again_after_a_loss():
    async with fresh_database() as url:
        a, b = Notices(url, backoff_s=(0.05, 0.5)), Notices(url, backoff_s=(0.05, 0.5))
        heard: dict[str, list[str]] = {"a": [], "b": []}
        arrived = {"a": anyio.Event(), "b": anyio.Event()}
        missed = anyio.Event()

        def hear(name: str, want: int):
            def handler(text: str) -> None:
                heard[name].append(text)
                if len(heard[name]) >= want:
                    arrived[name].set()

            return handler

        a.on("chan", hear("a", 1))
        b.on("chan", hear("b", 3), missed=missed.set)
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                await tg.start(a.serve)
                await tg.start(b.serve)
                for n in range(3):
                    a.send("chan", f"from a {n}")
                await arrived["b"].wait()
                assert heard["b"] == ["from a 0", "from a 1", "from a 2"]

                # b's listening connection is cut: it listens again, told it missed some
                admin = await asyncpg.connect(url)
                try:
                    cut = await admin.fetchval("SELECT pg_terminate_backend($1)", b.backend_pid)
                finally:
                    await admin.close()
                assert cut
                await missed.wait()
                await b.listening.wait()
                b.send("chan", "from b")
                await arrived["a"].wait()
                tg.cancel_scope.cancel()
    assert heard["a"] == ["from b"]  # a never heard itself
    assert (a.peers, b.peers) == ({b.token}, {a.token})  # each knows the other is there
    assert (a.connections, b.connections) == (1, 2)


async def test_notices_sent_meanwhile_go_in_one_statement_and_a_daemon_alone_has_no_peers():
    async with fresh_database() as url:
        alone = Notices(url)
        for n in range(3):
            alone.send("chan", f"n{n}")  # before it connects: they wait
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                await tg.start(alone.serve)
                while alone.sent < 4:  # noqa: ASYNC110 - its counter, nothing to wait on
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
    assert (alone.sent, alone.statements) == (4, 1)  # with its hello, in one statement
    assert alone.peers == set()


class _Host:
    """The runner as signals see it: these runs in memory, what was done to them."""

    def __init__(self, store, active: set[str], settles: int = 1) -> None:
        self.store = store
        self.active = active
        self.done: list[tuple[str, ...]] = []
        self.settled = anyio.Event()
        self._settles = settles

    def is_active(self, run_id: str) -> bool:
        return run_id in self.active

    def active_run_ids(self) -> list[str]:
        return sorted(self.active)

    async def cancel(self, run_id: str):
        self.done.append(("cancel", run_id))
        self.active.discard(run_id)

    def cancelled_elsewhere(self, run_id: str) -> None:
        self.done.append(("cancelled elsewhere", run_id))

    def settle_gate(self, run_id, key, *, ok, output, error) -> bool:
        self.done.append(("settle", run_id, key, str(ok), str(output), str(error)))
        self._settles -= 1
        if self._settles == 0:
            self.settled.set()
        return True

    def pause_changed(self, pipeline, pause) -> None:
        self.done.append(("pause", pipeline, str(pause is not None)))

    def pipelines(self) -> list[str]:
        return ["p", "q"]

    def wake_waits(self, run_ids=()) -> None:
        self.done.append(("wake waits", *run_ids))


async def test_after_a_lost_connection_the_runs_here_are_compared_with_the_store(tmp_path):
    from cued.daemon.runtime.signals import PeerSignals
    from cued.daemon.store import ApprovalRow, AttemptRow, PauseRow, RunRow
    from cued.daemon.store.sqlite import open_store

    rows = [
        RunRow("r1", "p", "cancelled", {}, 1.0),  # cancelled by another daemon
        RunRow("r2", "p", "running", {}, 1.0),  # its gate approved by another daemon
        RunRow("r3", "p", "running", {}, 1.0),  # nothing happened to it
        ApprovalRow("r2", "g", 1, "ok?", (), 1, "fail", None, 1.0, None, "approved", 2.0),
        AttemptRow("r2", "g", 1, "succeeded", 1.0, 2.0, None, '{"decision": "approved"}'),
        ApprovalRow("r3", "g", 1, "ok?", (), 1, "fail", None, 1.0, None, "waiting"),
        RunRow("r4", "p", "running", {}, 1.0),  # its child ended on another daemon
        RunRow("r5", "k", "failed", {}, 1.0, parent_run_id="r4", parent_key="kid"),
        AttemptRow("r4", "kid", 1, "failed", 1.0, 2.0, "child failed", '{"state": "failed"}'),
    ]
    async with open_store(tmp_path / "state.db") as store:
        await store.submit(rows).wait()
        await store.set_paused("q", PauseRow("q", 1.0, "ann"))
        host = _Host(store, {"r1", "r2", "r3", "r4"}, settles=2)
        signals = PeerSignals(Notices("postgresql://nobody@127.0.0.1:1/none"))
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                await tg.start(signals.serve, host)
                signals._missed()  # what a lost connection calls
                await host.settled.wait()
                tg.cancel_scope.cancel()
    assert host.done == [
        ("wake waits",),  # waits woken elsewhere meanwhile are applied
        ("pause", "p", "False"),
        ("pause", "q", "True"),
        ("cancel", "r1"),
        ("settle", "r2", "g", "True", "{'decision': 'approved'}", "None"),
        ("settle", "r4", "kid", "False", "{'state': 'failed'}", "child failed"),
    ]
