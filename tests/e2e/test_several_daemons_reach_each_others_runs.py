"""Two daemons (processes) on one PostgreSQL database: what is asked of one reaches the run
on the other. Daemon b's live stream shows a run of daemon a; a decision made on b settles
the gate of a run that a has in memory, and a goes on with it; a cancel made on b stops
the run on a; a pause made on b holds a's new runs, and b's resume starts them.

Each daemon's tasks write their daemon's name to a ledger, so where a task ran shows."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anyio
import httpx

from tests.support.daemon import Daemon
from tests.support.raw_http import free_port
from tests.support.stores import StoreAt, fresh_database

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

NODE = """
[http]
listen = "127.0.0.1:{port}"
[daemon]
state = "{url}"
shutdown_grace = "1s"

[auth.users.alice]
token = "alice-token"
roles = ["viewer", "operator", "approver"]

[pipelines.gated.tasks.gate]
kind = "approval"
message = "go on?"
approvers = ["alice"]
[pipelines.gated.tasks.busy]           # keeps the run in memory while its gate waits
kind = "shell"
command = "echo busy {name} >> {ledger}; sleep 600"
[pipelines.gated.tasks.after]
kind = "shell"
needs = ["gate"]
command = "echo after {name} >> {ledger}"

[pipelines.quick.tasks.t]
kind = "shell"
command = "echo quick {name} >> {ledger}"
"""

AUTH = {"authorization": "Bearer alice-token"}


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 60) -> None:
    """Poll ``check`` until true: the daemons are other processes, which cannot signal us."""
    with anyio.fail_after(timeout_s):
        while not await check():  # noqa: ASYNC110 - effects in other processes
            await anyio.sleep(0.05)


def node(tmp_path: Path, name: str, url: str, ledger: Path) -> tuple[Daemon, int]:
    folder = tmp_path / name
    folder.mkdir()
    port = free_port()
    (folder / "config.toml").write_text(NODE.format(port=port, url=url, name=name, ledger=ledger))
    return Daemon(folder / "config.toml", folder / "postgresql"), port


async def test_a_decision_a_cancel_and_a_pause_made_on_one_daemon_reach_the_other(tmp_path):
    ledger = tmp_path / "ledger"
    ledger.touch()
    async with fresh_database(migrated=True) as url:
        db = StoreAt("postgresql", url)
        (a, a_port), (b, b_port) = (node(tmp_path, n, url, ledger) for n in ("a", "b"))
        try:
            await a.start()
            await b.start()
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{a_port}", headers=AUTH) as on_a,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{b_port}", headers=AUTH) as on_b,
                anyio.create_task_group() as tg,
            ):
                # a shares its live updates once it knows another daemon is there
                async def a_heard_b() -> bool:
                    return "notices_peer_heard" in a.log.read_text()

                await until(a_heard_b)
                seen_on_b: dict[str, set[str]] = {}
                streaming = anyio.Event()
                tg.start_soon(_follow, on_b, seen_on_b, streaming)
                with anyio.fail_after(30):
                    await streaming.wait()
                run_id = (await on_a.post("/api/v1/pipelines/gated/runs")).json()["run_id"]

                async def gate_waits() -> bool:
                    return await _state(db, run_id, "gate") == "waiting" and "busy a" in (
                        ledger.read_text()
                    )

                await until(gate_waits)

                # b's stream shows the run of a, as it goes
                async def b_saw_it() -> bool:
                    return "running" in seen_on_b.get(run_id, set())

                await until(b_saw_it)

                # decided on b: a, which has the run in memory, goes on with it
                decided = await on_b.post(f"/api/v1/runs/{run_id}/tasks/gate/approve", json={})
                assert decided.status_code == 200, decided.text

                async def after_ran() -> bool:
                    return await _state(db, run_id, "after") == "succeeded"

                await until(after_ran)

                # cancelled on b: a stops it (else its task would sleep 600 s)
                cancelled = await on_b.post(f"/api/v1/runs/{run_id}/cancel")
                assert cancelled.status_code == 200, cancelled.text

                async def stopped() -> bool:
                    return await _state(db, run_id, "busy") == "cancelled"

                await until(stopped)

                # paused on b: a holds its new runs; b's resume reaches a, which starts them (its own)
                paused = await on_b.post("/api/v1/pipelines/quick/pause")
                assert paused.status_code == 200, paused.text

                async def a_knows() -> bool:
                    return "pipeline_paused_by_peer" in a.log.read_text()

                await until(a_knows)
                held = (await on_a.post("/api/v1/pipelines/quick/runs")).json()["run_id"]
                resumed = await on_b.post("/api/v1/pipelines/quick/resume")
                assert resumed.status_code == 200, resumed.text

                async def quick_ran() -> bool:
                    return await _state(db, held, "t") == "succeeded"

                await until(quick_ran)
                tg.cancel_scope.cancel()
        finally:
            for daemon in (a, b):
                if daemon.process is not None:
                    daemon.stop()
        (run_state,) = await db.query("SELECT state FROM runs WHERE run_id = ?", run_id)
    assert run_state == ("cancelled",)
    assert sorted(ledger.read_text().splitlines()) == ["after a", "busy a", "quick a"]


async def _state(db: StoreAt, run_id: str, key: str) -> str | None:
    rows = await db.query(
        "SELECT state FROM task_instances WHERE run_id = ? AND key = ?", run_id, key
    )
    return rows[0][0] if rows else None


async def _follow(client: httpx.AsyncClient, seen: dict[str, set[str]], up: anyio.Event) -> None:
    """Read the live stream: the states of each run it shows."""
    async with client.stream("GET", "/api/v1/stream", timeout=None) as response:
        assert response.status_code == 200
        up.set()
        kind = None
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind == "run":
                data = json.loads(line.removeprefix("data: "))
                seen.setdefault(data["run_id"], set()).add(data["state"])
