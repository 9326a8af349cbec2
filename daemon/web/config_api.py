"""The configuration versions and the reload, under ``/api/v1/config`` (operators only:
a configuration's text may hold secrets written in it; those the daemon resolved are
redacted).

```
GET  /api/v1/config                           the version running, and the last reload
POST /api/v1/config/reload                    read the file again and apply it, or refuse it
GET  /api/v1/config/versions                  every version loaded, newest first
GET  /api/v1/config/versions/{version}        one, with its text
GET  /api/v1/config/diff?old=A&new=B          what changed from A to B (unified diff)
```
"""

# No `from __future__ import annotations` here: FastAPI reads the annotations of the
# endpoints at run time.

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from cued.daemon.config.secrets import redact_text
from cued.daemon.errors import NotFound
from cued.daemon.ops import commands
from cued.daemon.ops.host import Reloading
from cued.daemon.runtime.reload import ReloadOutcome
from cued.daemon.store import ConfigVersionRow
from cued.daemon.web.auth import ERRORS, Ctx, Operator, json_response

__all__ = ["config_routes"]

config_routes = APIRouter(prefix="/api/v1/config", responses=ERRORS, tags=["config"])

_MAX_SQL_INT = 2**63 - 1  # SQLite's largest integer: a larger one cannot be compared
Version = Annotated[int, Path(ge=1, le=_MAX_SQL_INT, description="a config version")]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class ConfigVersion(_Model):
    version: int
    hash: str = Field(description="sha256 of the text, in hex")
    file: str
    loaded_at: float
    text: str | None = Field(None, description="only when one version is asked for")

    @classmethod
    def of(cls, row: ConfigVersionRow, *, text: bool = False) -> "ConfigVersion":
        return cls(
            version=row.version,
            hash=row.hash,
            file=row.file,
            loaded_at=row.loaded_at,
            text=redact_text(row.text) if text else None,
        )


class Reload(_Model):
    applied: bool = Field(description="false: refused, the running configuration is kept")
    version: int | None = Field(description="the version running after it")
    problems: list[str] = Field(
        description="why it was refused (file:line: key: message), or what failed to start"
    )
    changes: dict[str, Any]
    started_at: float
    ended_at: float

    @classmethod
    def of(cls, outcome: ReloadOutcome) -> "Reload":
        return cls(
            applied=outcome.applied,
            version=outcome.version,
            problems=list(outcome.problems),
            changes=outcome.changes,
            started_at=outcome.started_at,
            ended_at=outcome.ended_at,
        )


class ConfigState(_Model):
    version: int | None = Field(description="the version running now")
    last_reload: Reload | None


class ConfigDiff(_Model):
    old: int
    new: int
    diff: str = Field(description="unified diff of the texts; empty if they are the same")


def _reloader(reloader: Reloading | None) -> Reloading:
    if reloader is None:
        raise NotFound("no daemon runs here to reload")
    return reloader


@config_routes.get("", response_model=ConfigState)
async def config_state(ctx: Ctx, caller: Operator) -> Response:
    """The configuration version running now, and how the last reload went."""
    reloader = _reloader(ctx.reloader)
    last = reloader.last
    return json_response(
        ConfigState(version=reloader.version, last_reload=Reload.of(last) if last else None)
    )


@config_routes.post("/reload", response_model=Reload)
async def reload(ctx: Ctx, caller: Operator) -> Response:
    """Read the configuration file again and apply it in place (as SIGHUP does). An
    invalid one is refused (``applied`` false, ``problems`` with file and line) and the
    running configuration is kept."""
    outcome = await commands.reload(_reloader(ctx.reloader))
    return json_response(Reload.of(outcome))


@config_routes.get("/versions", response_model=list[ConfigVersion])
async def versions(
    ctx: Ctx,
    caller: Operator,
    limit: Annotated[int, Query(ge=1, le=500, description="how many, newest first")] = 100,
) -> Response:
    """Every configuration the daemon loaded (at start and at each reload), newest first."""
    rows = await ctx.queries.config_versions(limit)
    return json_response([ConfigVersion.of(r) for r in rows])


@config_routes.get("/versions/{version}", response_model=ConfigVersion)
async def version(version: Version, ctx: Ctx, caller: Operator) -> Response:
    """One configuration loaded, with its text (secrets the daemon resolved redacted)."""
    return json_response(ConfigVersion.of(await ctx.queries.config_version(version), text=True))


@config_routes.get("/diff", response_model=ConfigDiff)
async def diff(
    ctx: Ctx,
    caller: Operator,
    old: Annotated[int, Query(ge=1, le=_MAX_SQL_INT, description="the version to compare from")],
    new: Annotated[int, Query(ge=1, le=_MAX_SQL_INT, description="the version to compare to")],
) -> Response:
    """What changed from version ``old`` to ``new``, as a unified diff of their text."""
    text = redact_text(await ctx.queries.config_diff(old, new))
    return json_response(ConfigDiff(old=old, new=new, diff=text))
