"""Approval gates: open one when a task asks for a decision, record who decided what, when
and why, and settle the gate once enough approved (or one rejected, or its time ran out);
the run then goes on. A task instance that waits for a child run (a ``pipeline`` task) is
settled here the same way when the child ends (:meth:`Gates.child_ended`).

A gate's run is usually parked (in the store only); settling it commits the decision, the
gate's outcome and the instance's new state in one transaction, then resumes the run from
the store. If other tasks of the run still run, the run is in memory and is settled there,
after the same commit. The runner owns a :class:`Gates` and is its :class:`GateHost`.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from cued.daemon.core.engine import RunState, State
from cued.daemon.core.ids import now
from cued.daemon.core.states import TERMINAL_RUN_STATES
from cued.daemon.errors import Conflict, Forbidden, InvalidRequest, NotFound
from cued.daemon.logs import get_logger
from cued.daemon.store import ApprovalRow, AttemptRow, DecisionRow

if TYPE_CHECKING:
    from collections.abc import Iterable

    from cued.daemon.runtime.signals import Signals
    from cued.daemon.sdk.kinds import AwaitingDecision
    from cued.daemon.store import Row, RunRow, Store

__all__ = ["GateHost", "Gates", "gate_row"]


class GateHost(Protocol):
    """What settling a gate needs of the runner (a port: the runner owns the gates, so
    this module must not know the runner)."""

    def is_active(self, run_id: str) -> bool:
        """Whether the run is in memory (not parked)."""

    def settle_gate(
        self, run_id: str, key: str, *, ok: bool, output: Any, error: str | None
    ) -> bool:
        """Settle the waiting instance ``key`` of a run in memory, as recorded."""

    async def resume_recorded(self, run_id: str) -> None:
        """Go on with a parked run whose gate is settled, from the store."""

    async def wait(self, run_id: str) -> Any:
        """Return once the run has left memory (parked, or ended)."""

    @property
    def signals(self) -> Signals:
        """What to tell the other daemons on the store (a shared database)."""


_UNSET: Any = object()


def gate_row(
    run_id: str, key: str, attempt: int, ask: AwaitingDecision, wait_s: float | None
) -> ApprovalRow:
    """The gate that attempt ``attempt`` of the task instance ``key`` opens by asking
    ``ask``, waiting from now.

    :param wait_s: how long to wait for the decision when ``ask`` does not say (the task's
        ``timeout``); None waits for ever
    """
    requested = now()
    if ask.timeout_s is not None:
        wait_s = ask.timeout_s
    return ApprovalRow(
        run_id,
        key,
        attempt,
        ask.message,
        ask.approvers,
        ask.min_approvals,
        ask.on_timeout,
        ask.payload,
        requested,
        None if wait_s is None else requested + wait_s,
        "waiting",
    )


class Gates:
    """The approval gates: decide them, and settle those whose time is up (serve
    :meth:`expire_when_due` in the runner's task group).

    :param store: where gates and decisions are
    :param host: the runs the gates hold up
    """

    def __init__(self, store: Store, host: GateHost) -> None:
        self._store = store
        self._host = host
        self._lock = anyio.Lock()
        """Held while a gate is decided: two decisions at once must not both settle it."""
        self._opened = anyio.Event()
        self._log = get_logger()

    def opened(self) -> None:
        """A gate started waiting (is committed): its deadline may be the next one."""
        self._opened.set()

    async def decide(
        self,
        run_id: str,
        key: str,
        *,
        who: str,
        approve: bool,
        comment: str | None = None,
        payload: Any = _UNSET,
        groups: Iterable[str] = (),
    ) -> ApprovalRow:
        """Record ``who``'s decision on gate ``key`` of run ``run_id``; settle the gate if
        that decides it. Returns the gate as it now stands.

        :param groups: the groups ``who`` belongs to (for ``group:NAME`` approvers)
        :param payload: the proposal as edited by ``who`` (default: as proposed)
        :raises NotFound: if there is no such gate
        :raises Conflict: if the gate was settled already
        :raises Forbidden: if ``who`` is not among its approvers
        """
        async with self._lock, self._store.deciding():
            gate = await self._waiting_gate(run_id, key)
            allowed = set(gate.approvers)
            if allowed and who not in allowed and not {f"group:{g}" for g in groups} & allowed:
                raise Forbidden(
                    f"{who!r} may not decide gate {key!r} of run {run_id!r} "
                    f"(approvers: {', '.join(gate.approvers)})"
                )
            decision = DecisionRow(
                run_id,
                key,
                gate.attempt,
                who,
                "approve" if approve else "reject",
                gate.payload if payload is _UNSET else payload,
                comment,
                now(),
            )
            earlier = [
                d
                for d in await self._store.get_decisions(run_id, key)
                if d.attempt == gate.attempt and d.who != who
            ]
            decisions = [*earlier, decision]
            approvals = sum(d.decision == "approve" for d in decisions)
            if approve and approvals < gate.min_approvals:
                await self._store.submit([decision]).wait()
                return gate
            outcome = "approved" if approve else "rejected"
            return await self._settle(gate, outcome, decisions, [decision])

    async def expire_when_due(self) -> None:
        """Settle gates whose time is up, as their ``on_timeout`` says, until cancelled;
        wakes for the earliest deadline in the store, and whenever a gate opens."""
        while True:
            self._opened = anyio.Event()
            next_at = await self._store.next_approval_deadline()
            delay = None if next_at is None else max(0.0, next_at - now())
            if delay == 0.0:
                await self.expire_due()
                continue
            with anyio.move_on_after(delay if delay is not None else math.inf):
                await self._opened.wait()

    async def expire_due(self) -> None:
        """Settle every waiting gate whose time is up, as its ``on_timeout`` says."""
        for due in await self._store.approvals_due(now()):
            async with self._lock, self._store.deciding():
                try:
                    gate = await self._waiting_gate(due.run_id, due.key)
                except (NotFound, InvalidRequest):
                    continue  # settled meanwhile
                decisions = [
                    d
                    for d in await self._store.get_decisions(gate.run_id, gate.key)
                    if d.attempt == gate.attempt
                ]
                outcome = {"approve": "approved", "reject": "rejected"}.get(
                    gate.on_timeout, "timed_out"
                )
                self._log.info(
                    "approval_timed_out", run_id=gate.run_id, task=gate.key, outcome=outcome
                )
                await self._settle(gate, outcome, decisions, [], timed_out=True)

    async def _waiting_gate(self, run_id: str, key: str) -> ApprovalRow:
        gate = await self._store.get_approval(run_id, key)
        if gate is None:
            raise NotFound(f"run {run_id!r} has no approval gate {key!r}")
        if gate.state != "waiting":
            raise Conflict(f"gate {key!r} of run {run_id!r} is settled already: {gate.state}")
        return gate

    async def _settle(
        self,
        gate: ApprovalRow,
        outcome: str,
        decisions: list[DecisionRow],
        new: list[DecisionRow],
        *,
        timed_out: bool = False,
    ) -> ApprovalRow:
        at = now()
        edited = [d.payload for d in decisions if d.decision == "approve"]
        output = {
            "decision": outcome,
            "timed_out": timed_out,
            "decided_by": [
                {"who": d.who, "decision": d.decision, "comment": d.comment, "at": d.decided_at}
                for d in decisions
            ],
            "comment": decisions[-1].comment if decisions else None,
            "payload": edited[-1] if edited else gate.payload,
            "message": gate.message,
        }
        ok = outcome == "approved"
        error: str | None = None
        if not ok:
            rejecters = [d for d in decisions if d.decision == "reject"]
            error = (
                f"approval timed out ({outcome})"
                if timed_out
                else f"rejected by {rejecters[-1].who}"
                + (f": {rejecters[-1].comment}" if rejecters[-1].comment else "")
            )
        settled = replace(
            gate,
            state="timed_out" if timed_out and outcome == "timed_out" else outcome,
            decided_at=at,
        )
        attempts = {
            a.attempt: a for a in await self._store.get_attempts(gate.run_id) if a.key == gate.key
        }
        started_at = (
            attempts[gate.attempt].started_at if gate.attempt in attempts else gate.requested_at
        )
        ended = AttemptRow(
            gate.run_id,
            gate.key,
            gate.attempt,
            "succeeded" if ok else "failed",
            started_at,
            at,
            error,
            json.dumps(output),
        )
        await self._settle_instance(
            gate.run_id, gate.key, ok, output, error, [settled, *new, ended]
        )
        return settled

    async def child_ended(self, child: RunRow) -> None:
        """A child run ended: settle the instance of its parent that waits for it (its
        outputs are the instance's output; a child that did not succeed fails it). Nothing
        happens if the instance waits no more (the parent was cancelled, say)."""
        parent_id, key = child.parent_run_id, child.parent_key
        if parent_id is None or key is None:
            return
        async with self._lock:
            found = await self._store.run_state(parent_id)
            if found is None:
                return
            parent, instances, _ = found
            inst = next((i for i in instances if i.key == key), None)
            if (
                parent.state in TERMINAL_RUN_STATES
                or inst is None
                or inst.state != State.WAITING
                or inst.attempts != child.parent_attempt
            ):
                return
            ok = child.state == RunState.SUCCEEDED
            child_state = await self._store.run_state(child.run_id)
            outputs = child_state[2] if child_state is not None else {}
            output = {
                "run_id": child.run_id,
                "pipeline": child.pipeline,
                "state": child.state,
                "outputs": outputs if ok else {},
            }
            error = None
            if not ok:
                error = f"child run {child.run_id} of pipeline {child.pipeline!r} {child.state}"
                if child.error:
                    error += f": {child.error}"
            attempt = inst.attempts
            started_at = next(
                (
                    a.started_at
                    for a in await self._store.get_attempts(parent_id)
                    if a.key == key and a.attempt == attempt
                ),
                child.created_at,
            )
            ended = AttemptRow(
                parent_id,
                key,
                attempt,
                "succeeded" if ok else "failed",
                started_at,
                now(),
                error,
                json.dumps(output),
            )
            self._log.info("child_run_ended", run_id=parent_id, task=key, child=child.run_id)
            await self._settle_instance(parent_id, key, ok, output, error, [ended])

    async def go_on(
        self, run_id: str, key: str, attempt: int, *, ok: bool, output: Any, error: str | None
    ) -> None:
        """Go on with a run of this node's whose waiting instance ``key`` (its attempt
        ``attempt``) another node settled in the store (a gate decided there, a child run
        ended there) while the run was in memory here, about to park: once parked, its
        instance ends as recorded and the run goes on from the store. Nothing happens if
        the instance waits no more (settled here meanwhile, or its run ended)."""
        if self._host.is_active(run_id):
            if self._host.settle_gate(run_id, key, ok=ok, output=output, error=error):
                return
            await self._host.wait(run_id)  # (not under the lock: it may run on for long)
        async with self._lock:
            found = await self._store.run_state(run_id)
            if found is None:
                return
            run, instances, _ = found
            inst = next((i for i in instances if i.key == key), None)
            if (
                run.state != RunState.WAITING
                or inst is None
                or inst.state != State.WAITING
                or inst.attempts != attempt
            ):
                return
            state = State.SUCCEEDED if ok else State.FAILED
            await self._store.submit(
                [
                    replace(inst, state=state.value, error=error, updated_at=now()),
                    replace(run, state=RunState.QUEUED.value),
                ]
            ).wait()
            self._log.info("run_goes_on_as_settled_elsewhere", run_id=run_id, task=key)
            await self._host.resume_recorded(run_id)

    async def _settle_instance(
        self, run_id: str, key: str, ok: bool, output: Any, error: str | None, rows: list[Row]
    ) -> None:
        """Commit ``rows`` with the waiting instance ``key`` settled, and go on with its run:
        in memory if it is there (other tasks of it run), else from the store. A run that
        is about to park (nothing else of it runs) is waited for, then settled parked."""
        if self._host.is_active(run_id):
            await self._store.submit(rows).wait()
            if self._host.settle_gate(run_id, key, ok=ok, output=output, error=error):
                return
            await self._host.wait(run_id)
        found = await self._store.run_state(run_id)
        if found is None:
            raise NotFound(f"no run {run_id!r}")
        run, instances, _ = found
        if run.state == RunState.RUNNING and self._host.signals.enabled:
            # the run runs on another daemon on the store: that one goes on with it
            await self._store.submit(rows).wait()
            self._host.signals.decided(run_id, key)
            return
        (inst,) = [i for i in instances if i.key == key]
        if run.state in TERMINAL_RUN_STATES:
            await self._store.submit(rows).wait()
            return  # it ended meanwhile (cancelled): nothing goes on
        state = State.SUCCEEDED if ok else State.FAILED
        parked: list[Row] = [
            replace(inst, state=state.value, error=error, updated_at=now()),
            replace(run, state=RunState.QUEUED.value),
        ]
        await self._store.submit([*rows, *parked]).wait()
        await self._host.resume_recorded(run_id)
