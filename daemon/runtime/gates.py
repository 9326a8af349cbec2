"""Deciding approval gates: record who decided what, when and why, and settle the gate
once enough approved (or one rejected, or its time ran out); the run then goes on.

A gate's run is usually parked (in the store only); settling it commits the decision, the
gate's outcome and the instance's new state in one transaction, then resumes the run from
the store. If other tasks of the run still run, the run is in memory and is settled there,
after the same commit.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from cued.daemon.core.engine import RunState, State
from cued.daemon.core.ids import now
from cued.daemon.errors import Conflict, Forbidden, InvalidRequest, NotFound
from cued.daemon.store import AttemptRow, DecisionRow

if TYPE_CHECKING:
    from collections.abc import Iterable

    import anyio
    import structlog

    from cued.daemon.store import ApprovalRow, Row, Store

__all__ = ["GateHost", "decide", "expire_due"]


class GateHost(Protocol):
    """What deciding a gate needs of the runner (a port: the runner calls
    :func:`expire_due`, so this module must not know the runner)."""

    @property
    def store(self) -> Store: ...
    @property
    def log(self) -> structlog.typing.FilteringBoundLogger: ...
    @property
    def gate_lock(self) -> anyio.Lock: ...
    def is_active(self, run_id: str) -> bool: ...
    def settle(
        self, run_id: str, key: str, *, ok: bool, output: Any, error: str | None
    ) -> bool: ...
    async def resume_run(self, run_id: str) -> None: ...


_UNSET: Any = object()


async def decide(
    runner: GateHost,
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
    async with runner.gate_lock:
        gate = await _waiting_gate(runner, run_id, key)
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
            for d in await runner.store.get_decisions(run_id, key)
            if d.attempt == gate.attempt and d.who != who
        ]
        decisions = [*earlier, decision]
        approvals = sum(d.decision == "approve" for d in decisions)
        if approve and approvals < gate.min_approvals:
            await runner.store.submit([decision]).wait()
            return gate
        outcome = "approved" if approve else "rejected"
        return await _settle(runner, gate, outcome, decisions, [decision])


async def expire_due(runner: GateHost) -> None:
    """Settle every waiting gate whose time is up, as its ``on_timeout`` says."""
    for due in await runner.store.approvals_due(now()):
        async with runner.gate_lock:
            try:
                gate = await _waiting_gate(runner, due.run_id, due.key)
            except (NotFound, InvalidRequest):
                continue  # settled meanwhile
            decisions = [
                d
                for d in await runner.store.get_decisions(gate.run_id, gate.key)
                if d.attempt == gate.attempt
            ]
            outcome = {"approve": "approved", "reject": "rejected"}.get(
                gate.on_timeout, "timed_out"
            )
            runner.log.info(
                "approval_timed_out", run_id=gate.run_id, task=gate.key, outcome=outcome
            )
            await _settle(runner, gate, outcome, decisions, [], timed_out=True)


async def _waiting_gate(runner: GateHost, run_id: str, key: str) -> ApprovalRow:
    gate = await runner.store.get_approval(run_id, key)
    if gate is None:
        raise NotFound(f"run {run_id!r} has no approval gate {key!r}")
    if gate.state != "waiting":
        raise Conflict(f"gate {key!r} of run {run_id!r} is settled already: {gate.state}")
    return gate


async def _settle(
    runner: GateHost,
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
    error = None
    if not ok:
        rejecters = [d for d in decisions if d.decision == "reject"]
        error = (
            f"approval timed out ({outcome})"
            if timed_out
            else f"rejected by {rejecters[-1].who}"
            + (f": {rejecters[-1].comment}" if rejecters[-1].comment else "")
        )
    settled = replace(
        gate, state="timed_out" if timed_out and outcome == "timed_out" else outcome, decided_at=at
    )
    attempts = {
        a.attempt: a for a in await runner.store.get_attempts(gate.run_id) if a.key == gate.key
    }
    started_at = (
        attempts[gate.attempt].started_at if gate.attempt in attempts else gate.requested_at
    )
    rows: list[Row] = [
        settled,
        *new,
        AttemptRow(
            gate.run_id,
            gate.key,
            gate.attempt,
            "succeeded" if ok else "failed",
            started_at,
            at,
            error,
            json.dumps(output),
        ),
    ]
    in_memory = runner.is_active(gate.run_id)
    if not in_memory:
        rows.extend(await _parked_rows(runner, gate, ok, error))
    await runner.store.submit(rows).wait()
    if in_memory:
        runner.settle(gate.run_id, gate.key, ok=ok, output=output, error=error)
    else:
        await runner.resume_run(gate.run_id)
    return settled


async def _parked_rows(
    runner: GateHost, gate: ApprovalRow, ok: bool, error: str | None
) -> list[Row]:
    found = await runner.store.run_state(gate.run_id)
    if found is None:
        raise NotFound(f"no run {gate.run_id!r}")
    run, instances, _ = found
    (inst,) = [i for i in instances if i.key == gate.key]
    state = State.SUCCEEDED if ok else State.FAILED
    return [
        replace(inst, state=state.value, error=error, updated_at=now()),
        replace(run, state=RunState.QUEUED.value),
    ]
