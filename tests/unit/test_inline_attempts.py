"""Attempts stepped in turns by one task of their run (daemon/runtime/inline.py), and the
store's call back once a submission is committed (daemon/store/_batch.py)."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from cued.daemon.errors import PermanentTaskError
from cued.daemon.runtime.attempts import InlineAttempt, Outcome
from cued.daemon.runtime.inline import Begun, LazyLog, Stepper
from cued.daemon.store._batch import _Batch


async def turns(n: int, output: Any = None) -> Any:
    for _ in range(n):
        await anyio.lowlevel.checkpoint()
    return output


async def raises(exc: Exception) -> Any:
    await anyio.lowlevel.checkpoint()
    raise exc


class Record:
    """What the stepper told of each attempt, by its name (the owner of every attempt)."""

    def __init__(self) -> None:
        self.ended: dict[str, Outcome] = {}
        self.waited: dict[str, Outcome] = {}
        self.stopped: list[str] = []
        self.in_task: list[str] = []
        self._tg: anyio.abc.TaskGroup | None = None

    def stepper(self, tg: anyio.abc.TaskGroup) -> Stepper:
        self._tg = tg
        return Stepper(tg)

    def attempt_ended(self, begun: Begun, attempt: InlineAttempt, outcome: Outcome) -> None:
        self.ended[begun.log] = outcome  # type: ignore[index]

    def attempt_waits(self, begun: Begun, attempt: InlineAttempt) -> None:
        assert self._tg is not None
        self._tg.start_soon(self._waits, begun, attempt)

    async def _waits(self, begun: Begun, attempt: InlineAttempt) -> None:
        self.in_task.append(begun.log)  # type: ignore[arg-type]
        try:
            self.waited[begun.log] = await attempt.resume()  # type: ignore[index]
        except anyio.get_cancelled_exc_class():
            self.stopped.append(begun.log)  # type: ignore[arg-type]
            raise

    async def attempt_stopped(self, begun: Begun, attempt: InlineAttempt) -> None:
        self.stopped.append(begun.log)  # type: ignore[arg-type]


def begun(name: str) -> Begun:
    # the name stands in the logger's place: the stepper hands Begun on untouched
    return Begun(None, None, 0.0, None, name, None, None)  # type: ignore[arg-type]


async def test_attempts_end_in_turns_without_a_task_each():
    record = Record()
    tasks_before = len(anyio.get_running_tasks())
    seen_tasks = 0
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            stepper = record.stepper(tg)
            stepper.add(begun("none"), InlineAttempt(turns(0, "a"), None), record)
            stepper.add(begun("one"), InlineAttempt(turns(1, [1]), None), record)
            stepper.add(begun("three"), InlineAttempt(turns(3, {"x": 3}), None), record)
            stepper.add(begun("fails"), InlineAttempt(raises(ValueError("bad")), None), record)
            stepper.add(
                begun("for good"), InlineAttempt(raises(PermanentTaskError("never")), None), record
            )
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
                seen_tasks = max(seen_tasks, len(anyio.get_running_tasks()) - tasks_before)
    assert record.ended == {
        "none": Outcome("a"),
        "one": Outcome([1]),
        "three": Outcome({"x": 3}),
        "fails": Outcome(error="bad"),
        "for good": Outcome(error="never", retryable=False),
    }
    assert seen_tasks == 1  # the stepper, for five attempts
    assert record.stopped == []
    assert record.in_task == []


async def test_an_attempt_that_waits_on_something_goes_on_in_a_task_of_its_own():
    record = Record()
    event = anyio.Event()

    async def waits() -> str:
        await anyio.lowlevel.checkpoint()
        await event.wait()
        return "woken"

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            stepper = record.stepper(tg)
            stepper.add(begun("waits"), InlineAttempt(waits(), None), record)
            stepper.add(begun("quick"), InlineAttempt(turns(1, "q"), None), record)
            await anyio.wait_all_tasks_blocked()
            assert record.in_task == ["waits"]
            assert record.ended == {"quick": Outcome("q")}
            event.set()
    assert record.waited == {"waits": Outcome("woken")}


async def test_cancelling_the_run_stops_every_attempt_still_stepped_or_waiting():
    record = Record()
    closed: list[str] = []

    async def forever(name: str) -> None:
        try:
            while True:
                await anyio.lowlevel.checkpoint()
        finally:
            closed.append(name)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            stepper = record.stepper(tg)
            stepper.add(begun("a"), InlineAttempt(forever("a"), None), record)
            stepper.add(begun("b"), InlineAttempt(forever("b"), None), record)
            stepper.add(begun("waits"), InlineAttempt(anyio.sleep_forever(), None), record)
            stepper.add(begun("quick"), InlineAttempt(turns(1), None), record)
            for _ in range(5):
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
    assert sorted(record.stopped) == ["a", "b", "waits"]
    assert sorted(closed) == ["a", "b"]
    assert list(record.ended) == ["quick"]


async def test_the_stepper_starts_again_for_attempts_added_after_it_ended():
    record = Record()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            stepper = record.stepper(tg)
            stepper.add(begun("first"), InlineAttempt(turns(1, 1), None), record)
            await anyio.wait_all_tasks_blocked()
            assert record.ended == {"first": Outcome(1)}
            stepper.add(begun("second"), InlineAttempt(turns(2, 2), None), record)
    assert record.ended == {"first": Outcome(1), "second": Outcome(2)}


async def test_an_attempt_withdrawn_is_stepped_no_more_and_the_rest_go_on():
    record = Record()
    closed: list[str] = []

    async def forever() -> None:
        try:
            while True:
                await anyio.lowlevel.checkpoint()
        finally:
            closed.append("withdrawn")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            stepper = record.stepper(tg)
            withdrawn, attempt = begun("withdrawn"), InlineAttempt(forever(), None)
            stepper.add(withdrawn, attempt, record)
            stepper.add(begun("later"), InlineAttempt(turns(3, "l"), None), record)
            await anyio.lowlevel.checkpoint()
            assert stepper.withdraw(withdrawn)
            assert not stepper.withdraw(withdrawn)  # once
            attempt.stop()  # the owner's to stop
    assert closed == ["withdrawn"]
    assert record.ended == {"later": Outcome("l")}
    assert record.stopped == []


def test_a_lazy_log_binds_its_context_only_when_used():
    bound: list[dict[str, Any]] = []

    class Base:
        def bind(self, **kw: Any) -> Any:
            bound.append(kw)
            return self

        def info(self, event: str) -> str:
            return event

    log = LazyLog(Base(), run_id="r", task="t")  # type: ignore[arg-type]
    assert bound == []
    assert log.info("x") == "x"
    assert log.info("y") == "y"
    assert bound == [{"run_id": "r", "task": "t"}]


@pytest.mark.parametrize("error", [None, RuntimeError("disk full")])
async def test_a_batch_calls_back_once_when_done_in_order_and_after_as_well(error):
    batch = _Batch()
    calls: list[tuple[str, BaseException | None]] = []
    batch.then(lambda e: calls.append(("first", e)))
    batch.then(lambda e: calls.append(("second", e)))
    assert calls == []
    batch.error = error
    batch.done.set()
    batch.done.set()  # the writer sets it twice on some paths: called back once
    batch.then(lambda e: calls.append(("late", e)))
    assert calls == [("first", error), ("second", error), ("late", error)]
    if error is None:
        await batch.wait()
    else:
        with pytest.raises(Exception, match="disk full"):
            await batch.wait()
