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
gate RUN KEY    settles the waiting task KEY of the run here, as the stored gate says
pause PIPELINE  pauses, or unpauses, the pipeline here as the store says (new runs wait)
==============  ===========================================================================

A signal only wakes: a daemon whose listening connection was lost may have missed some,
so once it listens again it compares the runs it has with the store (cancelled ones stop,
settled gates settle) and reads the pauses again. With one daemon (SQLite) nothing is
sent (:data:`NO_SIGNALS`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from cued.daemon.core.engine import RunState
from cued.daemon.errors import CuedError
from cued.daemon.logs import get_logger

if TYPE_CHECKING:
    from cued.daemon.store import PauseRow, RunRow, Store
    from cued.daemon.store.pg_notify import Notices

__all__ = ["NO_SIGNALS", "SIGNAL_CHANNEL", "PeerSignals", "Signals", "parse_signal"]

#: Where daemons on one database signal each other.
SIGNAL_CHANNEL = "cued_signal"

_KINDS = {"cancel": 1, "gate": 2, "pause": 1}
"""Each signal and how many names it carries."""
_MAX_NAME = 1000


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


class _NoSignals:
    """One daemon on its store: nobody to tell."""

    enabled = False

    def cancelled(self, run_id: str) -> None:
        pass

    def decided(self, run_id: str, key: str) -> None:
        pass

    def pause_changed(self, pipeline: str) -> None:
        pass


NO_SIGNALS: Signals = _NoSignals()


class SignalHost(Protocol):
    """What applying a signal needs of the runner (a port: the runner is one)."""

    @property
    def store(self) -> Store: ...

    def is_active(self, run_id: str) -> bool: ...

    def active_run_ids(self) -> list[str]: ...

    async def cancel(self, run_id: str) -> RunRow: ...

    def settle_gate(
        self, run_id: str, key: str, *, ok: bool, output: Any, error: str | None
    ) -> bool: ...

    def pause_changed(self, pipeline: str, pause: PauseRow | None) -> None: ...

    def pipelines(self) -> list[str]: ...


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
    """

    enabled = True

    def __init__(self, notices: Notices) -> None:
        self._notices = notices
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
        async with self._send, self._receive:
            async for signal in self._receive:
                if self._overflowed:
                    self._overflowed, signal = False, None
                try:
                    await self._apply(host, signal)
                except CuedError as exc:  # the run went meanwhile, or the store failed
                    self._log.warning("signal_not_applied", signal=signal, error=str(exc))
                except Exception as exc:  # noqa: BLE001 - one signal must not stop the daemon
                    self._log.error("signal_failed", signal=signal, error=repr(exc))

    async def _apply(self, host: SignalHost, signal: tuple[str, tuple[str, ...]] | None) -> None:
        if signal is None:
            await self._compare(host)
            return
        kind, names = signal
        if kind == "pause":
            await _pause(host, names[0])
        elif kind == "cancel":
            if host.is_active(names[0]):
                await host.cancel(names[0])
                self._log.info("run_cancelled_by_peer", run_id=names[0])
        elif kind == "gate" and host.is_active(names[0]):
            await _settle(host, *names)

    async def _compare(self, host: SignalHost) -> None:
        """What a lost connection may have missed, from the store: pauses, cancelled
        runs, settled gates."""
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


async def _pause(host: SignalHost, pipeline: str) -> None:
    host.pause_changed(pipeline, (await host.store.paused_pipelines()).get(pipeline))


async def _settle(host: SignalHost, run_id: str, key: str) -> None:
    """Settle the waiting task ``key`` of a run here as its stored gate says (a task not
    waiting is left as it is)."""
    gate = await host.store.get_approval(run_id, key)
    if gate is None or gate.state == "waiting":
        return
    attempt = next(
        (
            a
            for a in await host.store.get_attempts(run_id)
            if a.key == key and a.attempt == gate.attempt
        ),
        None,
    )
    if attempt is None:
        return
    ok = gate.state == "approved"
    if host.settle_gate(run_id, key, ok=ok, output=attempt.output, error=attempt.error):
        get_logger().info("gate_settled_by_peer", run_id=run_id, task=key, state=gate.state)
