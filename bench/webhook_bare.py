"""The bare-library floor for webhooks: a Starlette endpoint on uvicorn that records each
request's body in SQLite (WAL, same ``synchronous`` as cued's default, group commit through
one aiosqlite writer) and answers 202 once it is committed. No signature check, no trigger
matching, no runs: what any durable webhook receiver must do, and nothing more.

Run: ``python bench/webhook_bare.py PORT DB``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from typing import TYPE_CHECKING

import aiosqlite
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class Writer:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self.rows: list[tuple[str, float, bytes]] = []
        self.done = asyncio.Event()
        self.wake = asyncio.Event()

    async def submit(self, row: tuple[str, float, bytes]) -> None:
        self.rows.append(row)
        done = self.done
        self.wake.set()
        await done.wait()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            rows, self.rows = self.rows, []
            done, self.done = self.done, asyncio.Event()
            await self.db.executemany("INSERT INTO events VALUES (?, ?, ?)", rows)
            await self.db.commit()
            done.set()


def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    writer: Writer | None = None

    async def hook(request):  # type: ignore[no-untyped-def]
        body = await request.body()
        event_id = uuid.uuid4().hex
        assert writer is not None
        await writer.submit((event_id, time.time(), body))
        return JSONResponse({"event_id": event_id}, 202)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal writer
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute(
            "CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, at REAL, body BLOB)"
        )
        writer = Writer(db)
        task = asyncio.get_running_loop().create_task(writer.run())
        yield
        task.cancel()

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])], lifespan=lifespan)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
