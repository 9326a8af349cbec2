"""A session joined to the other daemons on its PostgreSQL database, through their
notices (:func:`_join_peers`)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from cued.daemon.config.state import is_database_url
from cued.daemon.runtime.claims import WaitingNotices
from cued.daemon.runtime.signals import PeerSignals
from cued.daemon.store.pg_flow import FLOW_CHANNEL
from cued.daemon.store.pg_notify import Notices
from cued.daemon.web.live import Live, LiveShare

if TYPE_CHECKING:
    import anyio

    from cued.daemon.config import Config
    from cued.daemon.runtime.runner import Runner
    from cued.daemon.store import Store


async def _join_peers(
    config: Config,
    store: Store,
    runner: Runner,
    live: Live,
    tg: anyio.abc.TaskGroup,
    node: str,
) -> None:
    """With the state in PostgreSQL, other daemons may share it: one connection of this
    daemon's listens for their notices and sends its own (no daemon asks the database on
    a timer). Live updates are shared both ways, so each daemon's stream shows every
    daemon's runs; decisions, cancels and pauses made here reach the daemon that has the
    run (:mod:`cued.daemon.runtime.signals`), windows of flow control written here wake
    every node's timer, and runs that wait here are claimed by nodes with a free slot
    (:mod:`cued.daemon.runtime.claims`). With SQLite, nothing: one daemon."""
    location = config.state_location()
    if not is_database_url(location):
        return
    notices = Notices(location)
    share = LiveShare(live, notices)
    signals = PeerSignals(notices, node)
    waiting = WaitingNotices(notices)
    store.on_commit(share.committed)
    if runner.slots.shared is not None:
        runner.slots.shared.listen(notices)  # woken as pool and key slots free up
    if runner.flow is not None:
        # each node's timer learns of the windows the others write (see pg_flow)
        notices.on(FLOW_CHANNEL, runner.flow.heard, missed=runner.flow.poke)
    await tg.start(share.serve)
    await tg.start(partial(signals.serve, runner))
    await tg.start(partial(waiting.serve, runner))
    await tg.start(notices.serve)  # after every channel's handlers are registered
    runner.signals = signals
    runner.on_waiting(waiting.waiting)  # other nodes claim what waits here
