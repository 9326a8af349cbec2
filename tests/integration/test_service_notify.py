"""The pieces the watchdog and the notifications rest on, each with its real component: the
SQLite writer's measure of a stall (a lock held by another connection) and sd_notify
datagrams on a real AF_UNIX socket."""

from __future__ import annotations

import sqlite3
import time

import anyio
import structlog

from cued.daemon.core.ids import new_id, now
from cued.daemon.service.notify import Notifier
from cued.daemon.store import RunRow
from cued.daemon.store.sqlite import open_store
from tests.support.daemon import wait_for
from tests.support.systemd import NotifySocket


async def test_the_writer_counts_as_stalled_while_another_connection_holds_the_lock(tmp_path):
    state = tmp_path / "state.db"
    async with open_store(state) as store:
        assert store.writer_stalled_s() == 0.0  # idle: nothing waits
        lock = sqlite3.connect(state, isolation_level=None, timeout=30)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            committed = store.submit([RunRow(new_id(), "p", "queued", {}, now())])
            first = store.writer_stalled_s()
            # real time passes while the writer waits on the lock (its busy timeout is
            # longer than this): the measure grows with it
            await anyio.sleep(0.05)
            assert store.writer_stalled_s() > first
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        with anyio.fail_after(60):
            await committed.wait()
        assert store.writer_stalled_s() == 0.0  # committed: idle again


async def test_a_lock_held_past_the_busy_timeout_stalls_the_writer_and_loses_nothing(tmp_path):
    # a backup or a sqlite3 shell left in a transaction: the commit waits (the writer
    # counts as stalled, which the watchdog sees) and goes in once the lock is let go,
    # instead of failing the store and stopping the daemon
    state = tmp_path / "state.db"
    run = RunRow(new_id(), "p", "queued", {}, now())
    async with open_store(state, busy_timeout_s=0.01) as store:
        lock = sqlite3.connect(state, isolation_level=None, timeout=30)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            with structlog.testing.capture_logs() as logs:
                committed = store.submit([run])
                # tried, waited, tried again: and no failure in between
                await wait_for(lambda: sum(e["event"] == "store_busy" for e in logs) >= 2, 60)
            assert store.writer_stalled_s() > 0
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        with anyio.fail_after(60):
            await committed.wait()
        assert await store.get_run(run.run_id) == run
        assert store.writer_stalled_s() == 0.0


def test_each_notification_is_one_datagram_of_assignments():
    with NotifySocket() as systemd:
        notifier = Notifier(systemd.address)
        try:
            assert notifier.ready("all\nup")
            assert notifier.watchdog()
            assert notifier.stopping()
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert notifier.reloading()
            # a newline in the text would start an assignment of its own
            assert systemd.receive() == {"READY": "1", "STATUS": "all up"}
            assert systemd.receive() == {"WATCHDOG": "1"}
            assert systemd.receive() == {"STOPPING": "1"}
            reloading = systemd.receive()
            assert reloading["RELOADING"] == "1"
            assert int(reloading["MONOTONIC_USEC"]) >= before
        finally:
            notifier.close()


def test_an_abstract_notify_socket_is_reached_by_its_at_name():
    with NotifySocket(abstract=True) as systemd:
        assert systemd.address.startswith("@")
        notifier = Notifier(systemd.address)
        try:
            assert notifier.status("3 runs active")
            assert systemd.receive() == {"STATUS": "3 runs active"}
        finally:
            notifier.close()


def test_a_notify_socket_nobody_reads_costs_a_warning_not_the_daemon():
    notifier = Notifier("@cued-test-nobody-binds-this")
    try:
        assert notifier.enabled
        assert not notifier.watchdog()
    finally:
        notifier.close()
