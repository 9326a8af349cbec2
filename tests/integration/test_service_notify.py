"""The pieces the watchdog and the notifications rest on, each with its real component: the
SQLite writer's measure of a stall (a lock held by another connection) and sd_notify
datagrams on a real AF_UNIX socket."""

from __future__ import annotations

import sqlite3
import time

import anyio

from cued.daemon.core.ids import new_id, now
from cued.daemon.service.notify import Notifier
from cued.daemon.store import RunRow
from cued.daemon.store.sqlite import open_store
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
