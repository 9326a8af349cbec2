"""Nodes on one database learn that runs wait elsewhere, without asking on a timer.

A waiting run is driven by the node that claims it (:mod:`cued.daemon.store.pg_claims`):
its own node as slots free there, or another node with a free slot of its pipeline and
nothing of it waiting. That other node learns of the runs by a notice on the channel
``cued_waiting`` (``NOTIFY``), naming the pipeline, which a node sends as runs of it come
to wait cold (past its window: those the node itself will not start soon), at most once
per window's read:

==================  =====================================================================
notice              the nodes that hear it
==================  =====================================================================
waiting PIPELINE    claim the pipeline's next waiting runs (any node's) while they have
                    a free slot of it and nothing of it waiting; until a claim finds none
==================  =====================================================================

A notice only wakes: a node that missed some (its listening connection was lost) tries
every pipeline once it listens again; a claim that finds nothing costs one read.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Protocol

import anyio

from cued.daemon.logs import get_logger

if TYPE_CHECKING:
    from cued.daemon.store.pg_notify import Notices

__all__ = ["WAITING_CHANNEL", "ClaimHost", "WaitingNotices", "parse_waiting"]

#: Where nodes say that runs of a pipeline wait.
WAITING_CHANNEL = "cued_waiting"

_MAX_NAME = 1000


class ClaimHost(Protocol):
    """What a notice needs of the runner (a port: the runner is one)."""

    def peer_waiting(self, pipeline: str) -> None: ...

    def pipelines(self) -> list[str]: ...


def parse_waiting(text: str) -> str | None:
    """The pipeline a notice names (its text: ``["waiting", PIPELINE]``); ``None`` if it
    is not such a notice. Never raises: the text is whatever was sent on the channel."""
    try:
        found = json.loads(text)
    except ValueError:
        return None
    if not (isinstance(found, list) and len(found) == 2 and found[0] == "waiting"):
        return None
    name = found[1]
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME:
        return None
    return name


class WaitingNotices:
    """Notices of waiting runs to and from the other nodes; serve it with :meth:`serve`
    beside the runner it wakes.

    :param notices: this daemon's connection for notices
    """

    def __init__(self, notices: Notices) -> None:
        self._notices = notices
        self._pending: set[str] = set()
        self._everything = False
        self._wake = anyio.Event()
        self._log = get_logger()
        notices.on(WAITING_CHANNEL, self._received, missed=self._missed)

    def waiting(self, pipeline: str) -> None:
        """Runs of ``pipeline`` wait here: the other nodes may claim them."""
        self._notices.send(WAITING_CHANNEL, json.dumps(["waiting", pipeline]))

    def _received(self, text: str) -> None:
        pipeline = parse_waiting(text)
        if pipeline is None:
            self._log.warning("notice_not_understood", channel=WAITING_CHANNEL, text=text[:200])
            return
        self._pending.add(pipeline)  # as many notices as come: one claim each, at most
        self._wake.set()

    def _missed(self) -> None:
        self._everything = True
        self._wake.set()

    async def serve(
        self,
        host: ClaimHost,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hand the notices heard to ``host`` (in a task, as a handler must not do work),
        until cancelled."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            pending, self._pending = self._pending, set()
            if self._everything:
                self._everything = False
                pending.update(host.pipelines())
            for pipeline in sorted(pending):
                host.peer_waiting(pipeline)
