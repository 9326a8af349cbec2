"""One attempt of a task kind (daemon/runtime/attempts.py): what it ends as, whatever the
kind does, and what is kept of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest
from pydantic import BaseModel, ConfigDict

from cued.daemon.core.engine import Instance, Start
from cued.daemon.core.plan import PipelinePlan
from cued.daemon.errors import PermanentTaskError
from cued.daemon.logs import get_logger
from cued.daemon.runtime.attempts import Outcome, TaskAttempts
from cued.daemon.sdk.kinds import AwaitingDecision, Meter, TaskContext
from cued.daemon.store import RunRow

if TYPE_CHECKING:
    import httpx


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    function: str
    args: dict[str, Any] = {}


class _Kind:
    """A task kind that does what its ``args.do`` says."""

    name = "python"
    Params = _Params

    def __init__(self) -> None:
        self.seen: list[TaskContext] = []

    async def execute(self, params: _Params, ctx: TaskContext) -> Any:
        self.seen.append(ctx)
        ctx.meter.add(0.5)
        match params.args.get("do"):
            case "hang":
                await anyio.sleep_forever()
            case "refuse":
                raise PermanentTaskError("no point retrying")
            case "fail":
                raise RuntimeError("flaky")
            case "fail-quietly":
                raise RuntimeError
        return {"echo": params.args}


class _NoSpending:
    async def by_run(self, run_id: str) -> float:
        return 0.0

    async def today(self) -> float:
        return 0.0


CONFIG = """
[pipelines.p.tasks.t]
kind = "python"
function = "tests.support.probes:record"
args = { name = "t" }
"""


async def _run(make_config, params: dict[str, Any], *, limit: str = "1h") -> Outcome:
    plan = PipelinePlan.build("p", make_config(f'{CONFIG}timeout = "{limit}"\n').pipelines["p"])
    kind = _Kind()
    attempts = TaskAttempts(
        {"python": kind}, cast("httpx.AsyncClient", None), _NoSpending(), ["HOME"]
    )
    row = RunRow("r1", "p", "running", {}, 1.0)
    meter = Meter()
    outcome = await attempts.run(
        plan, row, Start(Instance("t", None), params, 2), get_logger(), meter
    )
    assert meter.cost == (0.5 if kind.seen else None)
    if kind.seen:
        (ctx,) = kind.seen
        assert (ctx.run_id, ctx.task, ctx.attempt, ctx.idempotency_key) == ("r1", "t", 2, "r1/t")
        assert ctx.pass_env == ("HOME",)
    return outcome


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param({"do": "echo"}, Outcome({"echo": {"do": "echo"}}), id="succeeded"),
        pytest.param({"do": "fail"}, Outcome(error="flaky"), id="failed-retryable"),
        pytest.param({"do": "fail-quietly"}, Outcome(error="RuntimeError"), id="no-message"),
        pytest.param(
            {"do": "refuse"}, Outcome(error="no point retrying", retryable=False), id="permanent"
        ),
    ],
)
async def test_what_an_attempt_ends_as(make_config, args, expected):
    assert await _run(make_config, {"function": "f", "args": args}) == expected


async def test_parameters_that_fail_their_check_fail_for_good(make_config):
    outcome = await _run(make_config, {"function": "f", "nope": 1})
    assert outcome.error is not None
    assert outcome.error.startswith("invalid parameters: nope: ")
    assert not outcome.retryable


async def test_an_attempt_past_its_timeout_fails_and_may_be_retried(make_config):
    with anyio.fail_after(10):
        outcome = await _run(make_config, {"function": "f", "args": {"do": "hang"}}, limit="1ms")
    assert outcome.error == "Task 't' did not finish within 0.001s"
    assert outcome.retryable


def test_what_is_kept_is_json_and_an_output_that_is_not_fails_for_good():
    assert Outcome({"a": [1]}).kept() == Outcome({"a": [1]}, output_json='{"a": [1]}')
    kept = Outcome({1, 2}).kept()
    assert kept.error is not None
    assert kept.error.startswith("output is not JSON-serialisable: ")
    assert not kept.retryable
    assert Outcome(error="boom").kept() == Outcome(error="boom")


def test_an_attempt_that_asks_for_a_decision_awaits_it():
    ask = AwaitingDecision("ship it?")
    assert Outcome(ask).kept().awaiting is ask
    assert Outcome(ask, error="boom").awaiting is None
    assert Outcome({"x": 1}).awaiting is None
