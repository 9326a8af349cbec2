"""A decision, a cancel or a pause made on one daemon reaches the run, or the pipeline, on
whichever daemon has it (several daemons on one PostgreSQL database).

What was asked is written to the store first, as with one daemon: a cancelled run's rows,
a settled gate with its decisions, a pause. The daemon that asked then sends a signal on
the channel ``cued_signal`` (``NOTIFY``), naming the run (or the pipeline); each daemon
that has that run in memory applies what the store now says:

==============  ===========================================================================
signal          the daemon that has it
==============  ===========================================================================
cancel RUN      cancels the run here (its running tasks stop; nothing more of it starts)
gate RUN KEY    settles the waiting task KEY of the run here, as the store says: its gate
                decided, or (a ``pipeline`` task) its child run's end recorded; a run that
                parked here meanwhile goes on from the store (by the node that owns it)
pause PIPELINE  pauses, or unpauses, the pipeline here as the store says (new runs wait)
waits NODE      the node NODE applies its runs' waits that were settled elsewhere: an
                event recorded by another daemon woke them, or asked to cancel a run
==============  ===========================================================================

A signal only wakes: a daemon whose listening connection was lost may have missed some,
so once it listens again it compares the runs it has with the store (cancelled ones stop,
settled gates settle), reads the pauses again and applies its runs' settled waits. With
one daemon (SQLite) nothing is sent (:data:`NO_SIGNALS`).
"""

from __future__ import annotations

import json
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from cued.daemon.core.engine import RunState
from cued.daemon.core.states import TERMINAL_RUN_STATES
from cued.daemon.errors import CuedError
from cued.daemon.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import Collection

    from cued.daemon.runtime.gates import Gates
    from cued.daemon.store import PauseRow, RunRow, Store
    from cued.daemon.store.pg_notify import Notices

__all__ = ["NO_SIGNALS", "SIGNAL_CHANNEL", "PeerSignals", "Signals", "parse_signal"]

#: Where daemons on one database signal each other.
SIGNAL_CHANNEL = "cued_signal"

_KINDS = {"cancel": 1, "gate": 2, "pause": 1, "waits": 1}
"""Each signal and how many names it carries."""
_MAX_NAME = 1000
_TELL = ("tell", ())
"""Queued to tell the owners of runs whose waits were woken here (see :meth:`waits_woken`)."""


class Signals(Protocol):
    """What the runner, its gates and ops tell the other daemons on the same database."""

    @property
    def enabled(self) -> bool:
        """Whether other daemons may have runs of this store (it is shared)."""

    def cancelled(self, run_id: str) -> None:
        """The run was cancelled in the store: the daemon that has it stops it."""

    def decided(self, run_id: str, key: str) -> None:
        """The gate ``key`` of the run was settled in the store: the daemon that has the
        run goes on with it."""

    def pause_changed(self, pipeline: str) -> None:
        """The pipeline was paused or unpaused in the store."""

    def waits_woken(self, run_ids: Collection[str]) -> None:
        """Waits of these runs were settled (or the runs asked to be cancelled) in the
        store: the nodes that own them apply them."""


class _NoSignals:
    """One daemon on its store: nobody to tell."""

    enabled = False

    def cancelled(self, run_id: str) -> None:
        pass

    def decided(self, run_id: str, key: str) -> None:
        pass

    def pause_changed(self, pipeline: str) -> None:
        pass

    def waits_woken(self, run_ids: Collection[str]) -> None:
        pass


NO_SIGNALS: Signals = _NoSignals()


class SignalHost(Protocol):
    """What applying a signal needs of the runner (a port: the runner is one)."""

    @property
    def store(self) -> Store: ...

    def is_active(self, run_id: str) -> bool: ...

    def active_run_ids(self) -> list[str]: ...

    async def cancel(self, run_id: str) -> RunRow: ...

    def cancelled_elsewhere(self, run_id: str) -> None: ...

    def settle_gate(
        self, run_id: str, key: str, *, ok: bool, output: Any, error: str | None
    ) -> bool: ...

    def pause_changed(self, pipeline: str, pause: PauseRow | None) -> None: ...

    def pipelines(self) -> list[str]: ...

    def wake_waits(self, run_ids: Collection[str] = ()) -> None: ...

    @property
    def gates(self) -> Gates: ...


def parse_signal(text: str) -> tuple[str, tuple[str, ...]] | None:
    """A signal's kind and the names it carries, from a notice's text (a JSON list:
    ``["cancel", RUN]``, ``["gate", RUN, KEY]``, ``["pause", PIPELINE]``); ``None`` if it
    is none of these. Never raises: the text is whatever was sent on the channel."""
    try:
        found = json.loads(text)
    except ValueError:
        return None
    if not (isinstance(found, list) and found and isinstance(found[0], str)):
        return None
    kind, names = found[0], found[1:]
    if _KINDS.get(kind) != len(names):
        return None
    if not all(isinstance(n, str) and 0 < len(n) <= _MAX_NAME for n in names):
        return None
    return kind, tuple(names)


class PeerSignals:
    """Signals to and from the other daemons on this daemon's database; serve it with
    :meth:`serve` beside the runner it applies them to.

    :param notices: this daemon's connection for notices
    :param node: this daemon's node name (the ``waits`` signals for it are its own)
    """

    enabled = True

    def __init__(self, notices: Notices, node: str = "") -> None:
        self._notices = notices
        self.node = node
        self._tg: anyio.abc.TaskGroup | None = None
        self._woken: set[str] = set()
        """Runs whose waits were woken here, whose owners are still to be told."""
        self._send, self._receive = anyio.create_memory_object_stream[
            tuple[str, tuple[str, ...]] | None
        ](1000)
        self._overflowed = False
        self._log = get_logger()
        notices.on(SIGNAL_CHANNEL, self._received, missed=self._missed)

    def cancelled(self, run_id: str) -> None:
        self._signal("cancel", run_id)

    def decided(self, run_id: str, key: str) -> None:
        self._signal("gate", run_id, key)

    def pause_changed(self, pipeline: str) -> None:
        self._signal("pause", pipeline)

    def waits_woken(self, run_ids: Collection[str]) -> None:
        # their owners are read from the store by the serving task: here nothing waits
        self._woken.update(run_ids)
        self._queue(_TELL)

    def _signal(self, kind: str, *names: str) -> None:
        self._notices.send(SIGNAL_CHANNEL, json.dumps([kind, *names]))

    def _received(self, text: str) -> None:
        signal = parse_signal(text)
        if signal is None:
            self._log.warning("signal_not_understood", text=text[:200])
            return
        self._queue(signal)

    def _missed(self) -> None:
        self._queue(None)  # compare everything with the store

    def _queue(self, signal: tuple[str, tuple[str, ...]] | None) -> None:
        try:
            self._send.send_nowait(signal)
        except anyio.ClosedResourceError:
            pass  # the daemon stops
        except anyio.WouldBlock:
            # too many at once to keep each: compare everything with the store instead
            self._log.warning("signals_overflowed", note="comparing the runs with the store")
            self._overflowed = True

    async def serve(
        self,
        host: SignalHost,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Apply the signals received to ``host``'s runs, one at a time, until cancelled."""
        task_status.started()
        async with self._send, self._receive, anyio.create_task_group() as tg:
            self._tg = tg
            async for signal in self._receive:
                if self._overflowed:
                    self._overflowed, signal = False, None
                try:
                    if self._woken:  # (a tell lost to an overflow is made with the next)
                        await self._tell_owners(host)
                    await self._apply(host, signal)
                except CuedError as exc:  # the run went meanwhile, or the store failed
                    self._log.warning("signal_not_applied", signal=signal, error=str(exc))
                except Exception as exc:  # noqa: BLE001 - one signal must not stop the daemon
                    self._log.error("signal_failed", signal=signal, error=repr(exc))

    async def _tell_owners(self, host: SignalHost) -> None:
        """Tell the nodes that own the runs whose waits were woken here to apply them."""
        woken, self._woken = self._woken, set()
        owners = await host.store.run_owners(sorted(woken))
        for node in sorted(set(owners.values()) - {self.node}):
            self._signal("waits", node)

    async def _apply(self, host: SignalHost, signal: tuple[str, tuple[str, ...]] | None) -> None:
        if signal is None:
            await self._compare(host)
            return
        kind, names = signal
        if kind == "waits":
            if names[0] == self.node:
                host.wake_waits()
        elif kind == "pause":
            await _pause(host, names[0])
        elif kind == "cancel":
            if host.is_active(names[0]):
                await host.cancel(names[0])
                self._log.info("run_cancelled_by_peer", run_id=names[0])
            else:  # a claim's read out here may have found it queued before the cancel
                host.cancelled_elsewhere(names[0])
        elif kind == "gate":
            await _settle(host, *names, node=self.node, later=self._tg)

    async def _compare(self, host: SignalHost) -> None:
        """What a lost connection may have missed, from the store: pauses, cancelled
        runs, settled gates, ended child runs, settled waits."""
        host.wake_waits()
        for pipeline in host.pipelines():
            await _pause(host, pipeline)
        for run_id in host.active_run_ids():
            run = await host.store.get_run(run_id)
            if run is not None and run.state == RunState.CANCELLED and host.is_active(run_id):
                await host.cancel(run_id)
                continue
            for gate in await host.store.get_approvals(run_id):
                if gate.state != "waiting" and host.is_active(run_id):
                    await _settle(host, run_id, gate.key)
            for child in await host.store.children_of(run_id):  # ended on another node
                if child.state in TERMINAL_RUN_STATES and child.parent_key is not None:
                    await _settle(host, run_id, child.parent_key)


async def _pause(host: SignalHost, pipeline: str) -> None:
    host.pause_changed(pipeline, (await host.store.paused_pipelines()).get(pipeline))


async def _settle(
    host: SignalHost,
    run_id: str,
    key: str,
    *,
    node: str | None = None,
    later: anyio.abc.TaskGroup | None = None,
) -> None:
    """Settle the waiting task ``key`` of a run here as the store says: as its gate was
    decided, or (a ``pipeline`` task) as its attempt was ended when its child run ended.
    A task not waiting is left as it is; a run that is not here is left to its owner.

    :param node: this daemon's node: a run of its own that parked (or is parking)
        meanwhile goes on from the store (``None``: only a run in memory is settled)
    :param later: where a run still in memory is waited for until it parks (not in the
        loop that applies signals)
    """
    active = host.is_active(run_id)
    if not active and node is None:
        return
    gate = await host.store.get_approval(run_id, key)
    if gate is not None and gate.state == "waiting":
        return
    attempts = [a for a in await host.store.get_attempts(run_id) if a.key == key]
    number = gate.attempt if gate is not None else max((a.attempt for a in attempts), default=0)
    attempt = next((a for a in attempts if a.attempt == number), None)
    if attempt is None or attempt.state not in ("succeeded", "failed"):
        return  # not settled (yet): its own signal comes
    ok = gate.state == "approved" if gate is not None else attempt.state == "succeeded"
    if active and host.settle_gate(run_id, key, ok=ok, output=attempt.output, error=attempt.error):
        get_logger().info("gate_settled_by_peer", run_id=run_id, task=key, ok=ok)
        return
    if node is None or later is None:
        return
    if not active and (await host.store.run_owners([run_id])).get(run_id) != node:
        return  # not this node's: its owner has the signal too
    # it parked here before the signal came (or is parking): it goes on from the store
    go_on = partial(host.gates.go_on, ok=ok, output=attempt.output, error=attempt.error)
    later.start_soon(go_on, run_id, key, number)
