"""Reloading the configuration of a running daemon (SIGHUP, or the API): the whole daemon
in process, its configuration in a real file, events sent over real HTTP.

What a reload promises: an invalid file is refused and the running configuration serves on;
a valid one is applied in place, with no event lost or recorded twice while sources are
added, changed and removed under a flood; sources whose settings did not change keep
running (the same instance, still serving); runs already started finish on the
definition they started with.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Sized
from typing import TYPE_CHECKING, TypeVar

import anyio
import httpx
import structlog

from cued.daemon.config import load_config
from cued.daemon.ops import commands
from tests.support import probes
from tests.support.kafka_broker import create_topics, started_producer, unique_name
from tests.support.kafka_source import daemon_toml, eventually, produce, source_toml
from tests.support.logs import info_logs
from tests.support.running import daemon_running

Sized_T = TypeVar("Sized_T", bound=Sized)

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from pathlib import Path

    from cued.daemon.assembly import DaemonInfo
    from cued.daemon.config import Config
    from cued.daemon.runtime.reload import ReloadOutcome
    from cued.daemon.store import RunRow

#: Generous bounds, only so that a broken reload fails instead of hanging.
WAIT_S = 60
SENDERS = 4
RELOADS = 10


class Reloads:
    """A reload listener (the hook systemd's RELOADING=1 / READY=1 go through) that lets
    a test wait for the reload it caused."""

    def __init__(self) -> None:
        self.began = 0
        self.outcomes: list[ReloadOutcome] = []
        self._ended = anyio.Event()

    def reload_began(self) -> None:
        self.began += 1

    def reload_ended(self, outcome: ReloadOutcome) -> None:
        self.outcomes.append(outcome)
        self._ended.set()
        self._ended = anyio.Event()

    async def sighup(self) -> ReloadOutcome:
        """Send the daemon (this process) SIGHUP and wait for that reload to end."""
        ended = self._ended
        os.kill(os.getpid(), signal.SIGHUP)
        with anyio.fail_after(WAIT_S):
            await ended.wait()
        return self.outcomes[-1]


def _generation(g: int) -> str:
    """The configuration of reload ``g``: ``hook`` changes every time (its source is
    replaced), ``steady`` never does, ``extra`` comes and goes, each generation has a
    pipeline and a trigger of its own, and every trigger's inputs name the generation."""
    extra = (
        f'[sources.extra]\nkind = "webhook"\npath = "/extra"\n'
        f'[[triggers]]\nsource = "extra"\npipeline = "p"\n'
        f'inputs = {{ gen = {g}, n = "{{{{ event.data.n }}}}" }}\n'
        if g % 2
        else ""
    )
    return f"""
[daemon]
log_level = "warning"
pools = {{ shared = {2 + g} }}

[http]
listen = "127.0.0.1:0"

[pipelines.p]
inputs = {{ gen = -1, n = "" }}
[pipelines.p.tasks.t]
kind = "sleep"
pool = "shared"

[pipelines.only{g}]
[pipelines.only{g}.tasks.t]
kind = "sleep"

[sources.hook]
kind = "webhook"
path = "/hook"
max_body_bytes = {10_000 + g}

[sources.steady]
kind = "webhook"
path = "/steady"

{extra}
[[triggers]]
source = "hook"
pipeline = "p"
inputs = {{ gen = {g}, n = "{{{{ event.data.n }}}}" }}

[[triggers]]
source = "steady"
pipeline = "p"
name = "steady-{g}"
inputs = {{ gen = {g}, n = "{{{{ event.data.n }}}}" }}
"""


async def _started(tmp_path: Path, text: str) -> tuple[Path, Config]:
    file = tmp_path / "config.toml"
    file.write_text(text)
    return file, load_config(file)


class Flood:
    """Senders that post numbered events to webhook paths until stopped, resending one that
    was not taken (``429``/``503``: the sender's duty) and keeping every one answered
    ``202``, by number."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.accepted: dict[str, list[str]] = {}
        self.refused = 0
        self.stop = anyio.Event()
        self.errors: list[str] = []

    async def send(self, path: str, sender: int) -> None:
        accepted = self.accepted.setdefault(path, [])
        async with httpx.AsyncClient(base_url=self.base, timeout=WAIT_S) as client:
            number = 0
            while not self.stop.is_set():
                n = f"{path}-{sender}-{number}"
                response = await client.post(path, json={"n": n})
                if response.status_code == 202:
                    accepted.append(n)
                    number += 1
                elif response.status_code in (429, 503):
                    self.refused += 1
                    await anyio.sleep(0.01)
                else:
                    self.errors.append(f"{path}: {response.status_code} {response.text}")
                    return

    def count(self, path: str) -> int:
        return len(self.accepted.get(path, []))


async def _more_accepted(flood: Flood, more: int) -> None:
    """Wait until each flooded path has had ``more`` events more answered 202."""
    paths = ("/hook", "/steady")
    wanted = [flood.count(p) + more for p in paths]

    async def check() -> bool:
        return all(flood.count(p) >= n for p, n in zip(paths, wanted, strict=True))

    await eventually(check, timeout_s=WAIT_S)


async def _at_least(found: Awaitable[Sized_T], count: int) -> Sized_T | None:
    got = await found
    return got if len(got) >= count else None


async def _runs_by_n(info: DaemonInfo) -> dict[str, list[int]]:
    runs = await info.runner.store.list_runs(limit=1_000_000, pipeline="p")
    found: dict[str, list[int]] = {}
    for run in runs:
        found.setdefault(run.inputs["n"], []).append(run.inputs["gen"])
    return found


async def test_ten_reloads_under_a_webhook_flood_lose_and_double_no_event(tmp_path):
    file, config = await _started(tmp_path, _generation(0))
    reloads = Reloads()
    async with daemon_running(config) as info:
        assert info.reloader is not None
        assert info.sources is not None
        info.reloader.on_reload(reloads)
        steady = info.sources.running["steady"]
        host, port = info.http_address or ("", 0)
        flood = Flood(f"http://{host}:{port}")
        async with anyio.create_task_group() as tg:
            for path in ("/hook", "/steady"):
                for sender in range(SENDERS):
                    tg.start_soon(flood.send, path, sender)
            for g in range(1, RELOADS + 1):
                # each reload comes while both paths are taking events
                await _more_accepted(flood, 5 * SENDERS)
                file.write_text(_generation(g))
                outcome = await reloads.sighup()
                assert outcome.applied, outcome.problems
                assert outcome.version == info.reloader.version
                assert "hook" in outcome.changes["sources"]["changed"]
                # a source added or removed on every other reload
                assert ("extra" in outcome.changes["sources"].get("added", [])) == bool(g % 2)
                assert ("extra" in outcome.changes["sources"].get("removed", [])) != bool(g % 2)
                if g % 2:
                    async with httpx.AsyncClient(base_url=flood.base) as client:
                        answer = await client.post("/extra", json={"n": f"/extra-{g}"})
                    assert answer.status_code == 202
                    flood.accepted.setdefault("/extra", []).append(f"/extra-{g}")
                # the unchanged source is the very same instance, still serving
                assert info.sources.running["steady"] is steady
            flood.stop.set()
        assert not flood.errors
        # the runs of every event answered 202 are recorded, each once, under the
        # generation whose triggers matched it
        accepted = [n for ns in flood.accepted.values() for n in ns]
        assert len(accepted) == len(set(accepted))
        runs = await eventually(
            lambda: _at_least(_runs_by_n(info), len(accepted)), timeout_s=WAIT_S
        )
        events = await info.runner.store.list_events(limit=1_000_000)
    assert sorted(runs) == sorted(accepted)
    assert all(len(gens) == 1 for gens in runs.values())
    assert len(events) == len(accepted)
    assert {e.status for e in events} == {"matched"}
    assert {gens[0] for gens in runs.values()} >= set(range(RELOADS))
    assert reloads.began == RELOADS
    assert flood.count("/hook") > RELOADS * SENDERS
    # the path of a replaced webhook is handed over: its senders wait, none is refused
    assert flood.refused == 0


async def test_an_invalid_file_is_refused_with_its_lines_and_the_old_one_serves_on(tmp_path):
    file, config = await _started(tmp_path, _generation(0))
    reloads = Reloads()
    async with daemon_running(config) as info:
        assert info.reloader is not None
        info.reloader.on_reload(reloads)
        version = info.reloader.version
        broken = _generation(1).replace('pipeline = "p"\nname = "steady-1"', 'pipeline = "nope"')
        file.write_text(broken + '\n[sources.bad]\nkind = "webhook"\n')
        with structlog.testing.capture_logs() as logs:
            outcome = await reloads.sighup()
        host, port = info.http_address or ("", 0)
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            answer = await client.post("/steady", json={"n": "after"})
        assert answer.status_code == 202
        (run_id,) = answer.json()["runs"]
        run = await info.runner.wait(run_id)
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            page = await client.get(f"/ui/runs/{run_id}")
            api = await client.get(f"/api/v1/runs/{run_id}")
            versions = await client.get("/ui/config")
    assert not outcome.applied
    assert outcome.version == version
    assert any("nope" in p and f"{file}:" in p for p in outcome.problems), outcome.problems
    assert any("bad" in p and "path" in p for p in outcome.problems), outcome.problems
    problems = [e["problem"] for e in logs if e["event"] == "config_problem"]
    assert problems == list(outcome.problems)
    assert any(e["event"] == "config_reload_refused" for e in logs)
    # the old configuration serves on: its trigger, its generation, its version
    assert run.inputs == {"gen": 0, "n": "after"}
    assert run.config_version == version
    # the run's page and the API say which version it ran
    assert f"version {version}" in page.text
    assert api.json()["config_version"] == version
    assert versions.status_code == 200
    assert f'data-version="{version}"' in versions.text
    assert 'id="reload"' in versions.text, "an operator (open mode: this machine) may reload"
    assert f'data-version="{(version or 0) + 1}"' not in versions.text, "nothing refused is kept"


async def test_runs_started_before_a_reload_finish_on_the_definition_they_started_with(
    tmp_path,
):
    def pipeline(version: str, *, hold: bool) -> str:
        return f"""
[daemon]
log_level = "warning"
[http]
listen = ""
[pipelines.job.tasks.first]
kind = "python"
function = "tests.support.probes:record"
args = {{ name = "first-{version}", until_released = {str(hold).lower()} }}
[pipelines.job.tasks.second]
kind = "python"
function = "tests.support.probes:record"
args = {{ name = "second-{version}" }}
needs = ["first"]
"""

    probe = probes.reset()
    file, config = await _started(tmp_path, pipeline("v1", hold=True))
    async with daemon_running(config) as info:
        assert info.reloader is not None
        old = await info.runner.start_run("job")
        with anyio.fail_after(WAIT_S):
            await probe.entered.wait()
        file.write_text(pipeline("v2", hold=False))
        outcome = await info.reloader.reload()
        assert outcome.applied
        assert outcome.changes == {"pipelines": {"changed": ["job"]}}
        new = await info.runner.start_run("job")
        with anyio.fail_after(WAIT_S):
            new_done = await info.runner.wait(new.run_id)
            probe.released.set()
            old_done = await info.runner.wait(old.run_id)
    assert (old_done.state, new_done.state) == ("succeeded", "succeeded")
    assert probe.calls == ["first-v1", "first-v2", "second-v2", "second-v1"]
    assert old_done.config_version is not None
    assert new_done.config_version == outcome.version != old_done.config_version


async def test_a_reload_that_changes_nothing_keeps_every_source_and_the_version(tmp_path):
    _file, config = await _started(tmp_path, _generation(3))
    async with daemon_running(config) as info:
        assert info.reloader is not None
        assert info.sources is not None
        before = dict(info.sources.running)
        version = info.reloader.version
        outcome = await info.reloader.reload()
        after = dict(info.sources.running)
    assert outcome.applied
    assert outcome.changes == {}
    assert outcome.version == version
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before)


# -- Kafka ---------------------------------------------------------------------------------


def _kafka_generation(g: int, bootstrap: str, topics: dict[str, str]) -> str:
    """Reload ``g`` of a daemon with three Kafka sources: ``shop`` changes on every even
    reload (its consumer is replaced), ``steady`` never does, ``extra`` is there on odd
    ones only; the trigger of each names the generation."""

    def source(name: str, extra: str = "") -> str:
        return source_toml(name, bootstrap, [topics[name]], f"{topics[name]}-group", extra)

    def trigger(name: str) -> str:
        return (
            f'[[triggers]]\nsource = "{name}"\npipeline = "p"\n'
            f'inputs = {{ gen = {g}, n = "{{{{ event.data.n }}}}" }}\n'
        )

    parts = [
        '[pipelines.p]\ninputs = { gen = -1, n = "" }\n[pipelines.p.tasks.t]\nkind = "sleep"\n',
        source("shop", f"max_batch = {100 + g // 2}"),
        source("steady"),
        trigger("shop"),
        trigger("steady"),
    ]
    if g % 2:
        parts += [source("extra"), trigger("extra")]
    return daemon_toml(*parts).replace('listen = "127.0.0.1:0"', 'listen = ""')


async def _produce_until(bootstrap: str, topic: str, stop: anyio.Event, sent: list[str]) -> None:
    async with started_producer(bootstrap) as producer:
        number = 0
        while not stop.is_set():
            batch = [f"{topic}-{number + i}" for i in range(10)]
            for n in batch:
                await producer.send(topic, json.dumps({"n": n}).encode())
            await producer.flush()
            sent.extend(batch)
            number += len(batch)
            await anyio.sleep(0.02)


async def test_ten_reloads_under_a_kafka_flood_lose_and_double_no_message(kafka, tmp_path):
    topics = {name: unique_name(name) for name in ("shop", "steady", "extra")}
    await create_topics(kafka.bootstrap, topics["shop"], topics["steady"], partitions=2)
    await create_topics(kafka.bootstrap, topics["extra"])
    extra = [f"{topics['extra']}-{i}" for i in range(50)]
    await produce(kafka.bootstrap, topics["extra"], [{"n": n} for n in extra])
    file, config = await _started(tmp_path, _kafka_generation(0, kafka.bootstrap, topics))
    reloads = Reloads()
    sent: dict[str, list[str]] = {"shop": [], "steady": []}
    stop = anyio.Event()
    with info_logs() as logs:
        async with daemon_running(config) as info:
            assert info.reloader is not None
            assert info.sources is not None
            info.reloader.on_reload(reloads)
            steady = info.sources.running["steady"]

            async def recorded(source: str) -> int:
                return len(await info.runner.store.list_events(limit=1_000_000, source=source))

            async with anyio.create_task_group() as tg:
                for name, into in sent.items():
                    tg.start_soon(_produce_until, kafka.bootstrap, topics[name], stop, into)
                for g in range(1, RELOADS + 1):
                    # each reload comes while both topics are being consumed
                    before = await recorded("shop"), await recorded("steady")

                    async def both_moved(before: tuple[int, int] = before) -> bool:
                        return await recorded("shop") > before[0] and (
                            await recorded("steady") > before[1]
                        )

                    await eventually(both_moved, timeout_s=WAIT_S)
                    file.write_text(_kafka_generation(g, kafka.bootstrap, topics))
                    outcome = await reloads.sighup()
                    assert outcome.applied, outcome.problems
                    if g % 2 == 0 and g < RELOADS:
                        # while extra is away (and comes back after), what comes for it
                        # waits in its topic. Only once it is away: a message it took
                        # while the reload went on would be matched by the new triggers,
                        # which have none for it (recorded unmatched, as documented)
                        more = [f"{topics['extra']}-{len(extra) + i}" for i in range(10)]
                        await produce(kafka.bootstrap, topics["extra"], [{"n": n} for n in more])
                        extra += more
                    changed = outcome.changes["sources"]
                    assert ("shop" in changed.get("changed", [])) == (g % 2 == 0)
                    assert ("extra" in changed.get("added", [])) == bool(g % 2)
                    assert info.sources.running["steady"] is steady
                    if g % 2:
                        # back: extra goes on from where it left off, up to the last one
                        wanted = len(extra)

                        async def extra_done(wanted: int = wanted) -> bool:
                            return await recorded("extra") >= wanted

                        await eventually(extra_done, timeout_s=WAIT_S)
                stop.set()

            # every message of each topic is recorded once, and started one run
            async def all_recorded() -> bool:
                return await recorded("shop") >= len(sent["shop"]) and (
                    await recorded("steady") >= len(sent["steady"])
                )

            await eventually(all_recorded, timeout_s=WAIT_S)
            runs = await info.runner.store.list_runs(limit=1_000_000, pipeline="p")
            events = await info.runner.store.list_events(limit=1_000_000)
    by_source: dict[str, list[str]] = {}
    for event in events:
        by_source.setdefault(event.source, []).append(event.data["n"])
    assert sorted(by_source["shop"]) == sorted(sent["shop"])
    assert sorted(by_source["steady"]) == sorted(sent["steady"])
    # extra was there on and off, five times: read on each time from where it left off
    assert sorted(by_source["extra"]) == sorted(extra)
    assert {e.status for e in events} == {"matched"}
    started = [r.inputs["n"] for r in runs]
    assert sorted(started) == sorted([*sent["shop"], *sent["steady"], *extra])
    assert all(len(e.run_ids) == 1 for e in events)
    # the unchanged consumer kept its partitions through all ten reloads
    steady_logs = [e for e in logs if e.get("source") == "steady"]
    assert [e["event"] for e in steady_logs if e["event"].startswith("kafka_partitions")] == [
        "kafka_partitions_assigned"
    ]
    assert reloads.began == RELOADS


async def test_users_and_alert_channels_are_replaced_in_place(tmp_path):
    def users(*names: str) -> str:
        tables = "".join(
            f'[auth.users.{n}]\ntoken = "token-of-{n}-0123456789"\nroles = ["viewer"]\n'
            for n in names
        )
        return f'[daemon]\nlog_level = "warning"\n[http]\nlisten = "127.0.0.1:0"\n{tables}'

    broken = '[pipelines.broken.tasks.fail]\nkind = "shell"\nargv = ["false"]\n'
    # a channel added by the reload: it writes the alert beside the config
    alert = (
        '[alerts.ops]\nkind = "command"\non = ["run_failed"]\n'
        'argv = ["/bin/sh", "-c", "printf %s \\"$CUED_ALERT_JSON\\" > alert.json"]\n'
    )
    file, config = await _started(tmp_path, users("ann") + broken)
    async with daemon_running(config) as info:
        assert info.reloader is not None
        host, port = info.http_address or ("", 0)

        async def status(name: str) -> int:
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
                answer = await client.get(
                    "/api/v1/runs", headers={"Authorization": f"Bearer token-of-{name}-0123456789"}
                )
                return answer.status_code

        before = (await status("ann"), await status("bob"))
        file.write_text(users("bob") + broken + alert)
        outcome = await info.reloader.reload()
        after = (await status("ann"), await status("bob"))
        failed = await info.runner.start_run("broken")
        sent = await eventually(lambda: _read_when_there(tmp_path / "alert.json"), timeout_s=WAIT_S)
    assert outcome.applied, outcome.problems
    assert outcome.changes["users"] == {"added": ["bob"], "removed": ["ann"]}
    assert outcome.changes["alerts"] == {"added": ["ops"]}
    assert before == (200, 401)
    assert after == (401, 200)
    assert json.loads(sent)["run_id"] == failed.run_id


async def _read_when_there(path: Path) -> str | None:
    text = path.read_text() if path.exists() else ""  # noqa: ASYNC240 - a small file
    return text if text.endswith("}") else None


async def test_a_run_parked_at_a_gate_goes_on_in_its_own_definition_after_a_reload(tmp_path):
    def gated(version: str) -> str:
        return f"""
[daemon]
log_level = "warning"
[http]
listen = ""
[auth.users.alice]
token = "alice-token-0123456789"
roles = ["approver"]
[pipelines.post.tasks.gate]
kind = "approval"
message = "Publish?"
approvers = ["alice"]
[pipelines.post.tasks.publish]
kind = "shell"
needs = ["gate"]
argv = ["echo", "published {version}"]
"""

    file, config = await _started(tmp_path, gated("v1"))
    async with daemon_running(config) as info:
        assert info.reloader is not None
        run = await info.runner.start_run("post")
        with anyio.fail_after(WAIT_S):
            parked = await info.runner.wait(run.run_id)
        assert parked.state == "waiting"
        file.write_text(gated("v2"))
        outcome = await info.reloader.reload()
        await commands.decide(info.runner, run.run_id, "gate", who="alice", approve=True)

        async def ended() -> RunRow | None:
            row = await info.runner.wait(run.run_id)
            return None if row.state == "waiting" else row

        done = await eventually(ended, timeout_s=WAIT_S)
        attempts = await info.runner.store.get_attempts(run.run_id)
    assert outcome.applied
    assert outcome.changes == {"pipelines": {"changed": ["post"]}}
    assert done.state == "succeeded"
    (publish,) = [a for a in attempts if a.key == "publish"]
    assert publish.output["stdout"].strip() == "published v1"
