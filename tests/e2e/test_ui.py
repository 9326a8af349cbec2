"""The web UI in a real browser: headless Chromium (Debian's, at /usr/bin/chromium) driven
by Playwright against the whole daemon in this process. Every step leaves a screenshot in
tests/e2e/artifacts/.

Chromium must be there (``make test`` installs it): without it these tests fail, they are
never skipped.
"""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.async_api import async_playwright, expect

from cued.daemon.store import AttemptRow, InstanceRow
from cued.daemon.web.ui.draw import gantt, layers, summarise, task_graph
from tests.support.running import daemon_running, wait_finished

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from playwright.async_api import Page

CHROMIUM = Path("/usr/bin/chromium")
# as this machine kind runs it: no sandbox as root, and no calls home through a closed network
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
TOKEN = "ada-token"
UI_TIMEOUT_MS = 10_000
expect.set_options(timeout=UI_TIMEOUT_MS)

CONFIG = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"
shutdown_grace = "1s"

[auth.users.ada]
token = "ada-token"
roles = ["viewer", "operator", "approver"]
[auth.users.olga]
token = "olga-token"
roles = ["approver"]

[sources.orders]
kind = "webhook"
path = "/hooks/orders"

[[triggers]]
source = "orders"
pipeline = "hello"
inputs = { name = "{{ event.data.customer }}" }

[pipelines.hello]
inputs = { name = "world", items = [1, 2, 3] }
[pipelines.hello.tasks.greet]
kind = "shell"
argv = ["echo", "hello {{ inputs.name }}"]
[pipelines.hello.tasks.fan]
kind = "shell"
needs = ["greet"]
map = "{{ inputs.items }}"
# each item waits until the test lets it go: the test sees the run running, for sure
argv = ["sh", "-c", "while [ ! -e RELEASE ]; do sleep 0.02; done; echo {{ item }}"]
[pipelines.hello.tasks.done]
kind = "shell"
needs = ["fan"]
argv = ["echo", "done"]
produces = ["greetings"]

[pipelines.post]
[pipelines.post.tasks.draft]
kind = "shell"
argv = ["echo", "A post about cats"]
[pipelines.post.tasks.gate]
kind = "approval"
needs = ["draft"]
message = "Publish '{{ tasks.draft.output.stdout | trim }}'?"
payload = { title = "{{ tasks.draft.output.stdout | trim }}" }
[pipelines.post.tasks.publish]
kind = "shell"
needs = ["gate"]
argv = ["echo", "published"]

[pipelines.slow]
[pipelines.slow.tasks.nap]
kind = "sleep"
seconds = 30
"""


@pytest.fixture(autouse=True)
def _chromium() -> None:
    # a failure, never a skip: a machine without the browser must not pass these tests
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `apt-get install -y chromium` (make test)"


@pytest.fixture
def config(make_config, tmp_path):
    """The config; runs of ``hello`` with items wait until ``release()`` is called."""
    return make_config(CONFIG.replace("RELEASE", str(tmp_path / "release")))


@pytest.fixture
def release(tmp_path):
    return lambda: (tmp_path / "release").touch()


@asynccontextmanager
async def browser_page(base: str, *, login: bool = True) -> AsyncIterator[Page]:
    """A fresh headless Chromium with one page, logged in unless asked not to."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.on("dialog", lambda dialog: dialog.accept())
            if login:
                await page.goto(f"{base}/ui/login")
                await page.fill("input[name=token]", TOKEN)
                await page.click("button[type=submit]")
                await page.wait_for_url(f"{base}/ui/")
            yield page
        finally:
            await browser.close()


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def api(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"})


async def test_log_in_with_the_token_and_see_the_overview(config):
    async with daemon_running(config) as info:
        base = "http://{}:{}".format(*info.http_address)
        async with browser_page(base, login=False) as page:
            await page.goto(f"{base}/")
            await expect(page).to_have_url(re.compile(r"/ui/login\?next="))
            await page.fill("input[name=token]", "wrong")
            await page.click("button[type=submit]")
            await expect(page.locator("#flash")).not_to_be_empty()
            await shot(page, "01-login")
            await page.fill("input[name=token]", TOKEN)
            await page.click("button[type=submit]")
            await expect(page).to_have_url(f"{base}/ui/")
            await expect(page.locator("tr[data-source=orders]")).to_contain_text("webhook")
            await expect(page.locator("#backpressure")).to_have_text("accepting")
            await expect(page.locator("[data-count=approvals]")).to_have_text("0")
            await expect(page.locator("details[data-pipeline]")).to_have_count(3)
            await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
            await shot(page, "02-overview")
            await page.click("#logout")
            await expect(page).to_have_url(f"{base}/ui/login")
            await page.goto(f"{base}/ui/runs")
            await expect(page).to_have_url(re.compile(r"/ui/login\?next="))


async def test_a_run_triggered_in_the_ui_finishes_live_and_its_graph_turns_green(config, release):
    async with daemon_running(config) as info:
        base = "http://{}:{}".format(*info.http_address)
        async with browser_page(base) as page:
            form = page.locator("details[data-pipeline=hello]")
            await form.locator("summary").click()
            await expect(form.locator("input[name='inputs.name']")).to_have_value("world")
            await expect(form.locator("input[name='inputs.items']")).to_have_value("[1, 2, 3]")
            await form.locator("input[name='inputs.name']").fill("ui")
            await form.locator("button[type=submit]").click()
            await page.wait_for_url(re.compile(r"/ui/runs/\w+$"))
            run_id = page.url.rsplit("/", 1)[1]
            # a mark that a reload would wipe: the state must change under it
            await page.evaluate("window.__sameDocument = true")
            await expect(page.locator("#run-state .badge")).to_have_text("running")
            fan = page.locator("svg.graph g.node[data-task=fan]")
            await expect(fan).to_have_attribute("data-state", "running")
            await shot(page, "03-run-running")
            release()
            await expect(page.locator("#run-state .badge")).to_have_text("succeeded")
            assert await page.evaluate("window.__sameDocument") is True
            nodes = page.locator("svg.graph g.node")
            await expect(nodes).to_have_count(3)
            for i in range(3):
                await expect(nodes.nth(i)).to_have_attribute("data-state", "succeeded")
            await expect(fan).to_contain_text("3/3 succeeded")
            await expect(page.locator(".gantt .g-bar")).to_have_count(5)
            await expect(page.locator("tr[data-key=greet]")).to_contain_text("hello ui")
            await expect(page.locator(".assets")).to_contain_text("greetings")
            await shot(page, "04-run-succeeded")
        (row,) = await wait_finished(info, [run_id])
        assert row.inputs == {"name": "ui", "items": [1, 2, 3]}


async def test_a_gate_approved_in_the_inbox_lets_the_run_go_on(config):
    async with daemon_running(config) as info:
        base = "http://{}:{}".format(*info.http_address)
        async with browser_page(base) as page:
            await page.goto(f"{base}/ui/approvals")
            await expect(page.locator("#no-gates")).to_be_visible()
            async with api(base) as client:
                answer = await client.post("/api/v1/pipelines/post/runs", json={})
                run_id = answer.json()["run_id"]
            gate = page.locator(f"article[data-gate='{run_id}/gate']")
            await expect(gate).to_contain_text("Publish 'A post about cats'?")
            await gate.locator("textarea").fill("ship it")
            await shot(page, "05-approvals")
            await gate.locator("button.ok").click()
            await expect(page.locator("#no-gates")).to_be_visible()
            await page.goto(f"{base}/ui/runs/{run_id}")
            await expect(page.locator("#run-state .badge")).to_have_text("succeeded")
            await expect(page.locator("[data-gate=gate]")).to_contain_text("ada approved")
            await expect(page.locator("[data-gate=gate]")).to_contain_text("ship it")
            await expect(page.locator("svg.graph g.node[data-task=publish]")).to_have_attribute(
                "data-state", "succeeded"
            )
            await shot(page, "06-approved-run")


async def test_the_events_page_shows_a_webhook_event_and_the_run_it_started(config, release):
    async with daemon_running(config) as info:
        base = "http://{}:{}".format(*info.http_address)
        release()
        async with browser_page(base) as page:
            await page.goto(f"{base}/ui/events")
            async with httpx.AsyncClient(base_url=base) as client:
                answer = await client.post("/hooks/orders", json={"customer": "acme", "total": 42})
            assert answer.status_code == 202
            event_id, (run_id,) = answer.json()["event_id"], answer.json()["runs"]
            row = page.locator(f"tr[data-event='{event_id}']")
            await expect(row).to_contain_text('"customer": "acme"')  # arrived live
            await expect(row).to_contain_text("matched")
            await shot(page, "07-events")
            await row.locator(f"a[href='/ui/runs/{run_id}']").click()
            await expect(page.locator("#run-state .badge")).to_have_text("succeeded")
            await page.click(f"a[href='/ui/events/{event_id}']")
            await expect(page.locator("h1")).to_contain_text(event_id)
            await expect(page.locator("main")).to_contain_text('"total": 42')

            # replayed, forced (confirmed in the dialog): a second run of the trigger
            # starts, listed on the event's page beside the first
            await page.click("#replay-force")
            runs = page.locator("dl.facts a[href^='/ui/runs/']")
            await expect(runs).to_have_count(2)
            await shot(page, "07b-event-replayed")
            (replayed,) = [
                r
                for r in await info.runner.store.get_runs(
                    (await info.runner.store.get_events([event_id]))[0].run_ids
                )
                if r.run_id != run_id
            ]
            assert replayed.event_id == event_id


async def test_cancel_then_retry_from_the_run_page(config):
    async with daemon_running(config) as info:
        base = "http://{}:{}".format(*info.http_address)
        async with browser_page(base) as page:
            run_id = (await info.runner.start_run("slow")).run_id
            await page.goto(f"{base}/ui/runs/{run_id}")
            await expect(page.locator("#run-state .badge")).to_have_text("running")
            await page.click("#cancel")
            await expect(page.locator("#run-state .badge")).to_have_text("cancelled")
            await page.click("#retry")
            await expect(page.locator("#run-state .badge")).to_have_text("running")
            await expect(page.locator("tr[data-key=nap]")).to_have_count(2)
            await shot(page, "08-retried")
            await info.runner.cancel(run_id)


async def test_pages_need_a_login_stay_small_and_filter_runs(config):
    async with daemon_running(config) as info:
        base = "http://{}:{}".format(*info.http_address)
        ids = [(await info.runner.start_run("hello", {"items": []})).run_id for _ in range(55)]
        await wait_finished(info, ids)
        async with httpx.AsyncClient(base_url=base) as anonymous:
            answer = await anonymous.get("/ui/runs")
            assert answer.status_code == 303
            assert answer.headers["location"] == "/ui/login?next=%2Fui%2Fruns"
            fragment = await anonymous.get("/ui/runs", headers={"HX-Request": "true"})
            assert fragment.status_code == 401
            assert fragment.headers["HX-Redirect"].startswith("/ui/login")
            olga = {"Authorization": "Bearer olga-token"}  # an approver, but not a viewer
            not_a_viewer = await anonymous.get("/ui/", headers=olga)
            assert not_a_viewer.status_code == 403
            assert "lacks the &#39;viewer&#39; role" in not_a_viewer.text
        async with api(base) as client:
            first = await client.get("/ui/runs", params={"pipeline": "hello", "state": "succeeded"})
            assert first.status_code == 200
            assert first.text.count('<tr data-run="') == 50
            assert 'rel="next"' in first.text
            older = re.search(r'<a href="([^"]+)" rel="next">', first.text)
            assert older is not None
            second = await client.get(older.group(1).replace("&amp;", "&"))
            assert second.text.count('<tr data-run="') == 5
            assert 'rel="next"' not in second.text
            none = await client.get("/ui/runs", params={"pipeline": "post"})
            assert '<tr data-run="' not in none.text
            fragment = await client.get(f"/ui/runs/{ids[0]}", headers={"HX-Request": "true"})
            assert fragment.text.startswith('<div id="live"')
            assert "<html" not in fragment.text
            for path in ("/ui/", f"/ui/runs/{ids[0]}", "/ui/runs", "/ui/events"):
                page = await client.get(path, headers={"Accept-Encoding": "identity"})
                assert len(page.content) < 50_000, path
            assets = 0
            for name in ("cued.css", "cued.js", "htmx.min.js"):
                asset = await client.get(f"/ui/static/{name}")  # gzip, as a browser asks
                assert asset.headers["content-encoding"] == "gzip"
                assert "immutable" in asset.headers["cache-control"]
                assets += int(asset.headers["content-length"])
            assert assets < 30_000


async def test_a_pipeline_page_pauses_triggers_and_resumes_its_runs(config, release):
    async with daemon_running(config) as info:
        base = "http://{}:{}".format(*info.http_address)
        async with browser_page(base) as page:
            # from the overview to the page of a pipeline without a run
            await page.click("header.top a[href='/ui/pipelines']")
            await expect(page.locator("tr[data-pipeline=post]")).to_contain_text("active")
            await page.click("tr[data-pipeline=hello] a")
            await expect(page).to_have_url(f"{base}/ui/pipelines/hello")
            await expect(page.locator("svg.graph g.node")).to_have_count(3)
            await expect(page.locator("tr[data-trigger='orders->hello']")).to_contain_text("orders")
            await expect(page.locator("table.runs")).to_contain_text("No runs yet.")
            await expect(page.locator("#pipeline-state")).to_have_text("active")
            await shot(page, "09-pipeline")
            await page.click("#pause")  # confirmed in the dialog
            await expect(page.locator("#pipeline-state")).to_have_text("paused")
            await expect(page.locator("#paused-note")).to_contain_text("by ada")
            # a run triggered from the page's form waits while the pipeline is paused
            form = page.locator("form#trigger")
            await expect(form.locator("input[name='inputs.items']")).to_have_value("[1, 2, 3]")
            await form.locator("input[name='inputs.name']").fill("paused")
            await form.locator("button[type=submit]").click()
            await page.wait_for_url(re.compile(r"/ui/runs/\w+$"))
            by_hand = page.url.rsplit("/", 1)[1]
            await expect(page.locator("#run-state .badge")).to_have_text("queued")
            await page.goto(f"{base}/ui/pipelines/hello")
            # an event's run waits too, and shows up live with what started it
            async with httpx.AsyncClient(base_url=base) as client:
                answer = await client.post("/hooks/orders", json={"customer": "acme"})
            event_id, (from_event,) = answer.json()["event_id"], answer.json()["runs"]
            row = page.locator(f"tr[data-run='{from_event}']")
            await expect(row).to_contain_text("queued")
            await expect(row).to_contain_text("orders->hello")
            await expect(row.locator(f"a[data-event='{event_id}']")).to_be_visible()
            await expect(page.locator("[data-count=queued]")).to_have_text("2")
            await expect(page.locator(f"tr[data-run='{by_hand}']")).to_contain_text("by hand")
            await shot(page, "10-pipeline-paused")
            assert not info.runner.is_active(from_event)
            await page.click("#resume")
            await expect(page.locator("#pipeline-state")).to_have_text("active")
            release()
            await expect(row).to_contain_text("succeeded")
            await expect(page.locator(f"tr[data-run='{by_hand}']")).to_contain_text("succeeded")
            await shot(page, "11-pipeline-resumed")
            # the runs list says what started each run, the event a link
            await page.goto(f"{base}/ui/runs")
            listed = page.locator(f"tr[data-run='{from_event}']")
            await expect(listed).to_contain_text("orders->hello")
            await listed.locator(f"a[data-event='{event_id}']").click()
            await expect(page.locator("h1")).to_contain_text(event_id)
            # an unknown UI path is a page, not JSON; / goes to the overview
            missing = await page.goto(f"{base}/ui/no/such/page")
            assert missing is not None
            assert missing.status == 404
            await expect(page.locator("h1")).to_have_text("Not found")
            await expect(page.locator("main")).to_contain_text("/ui/no/such/page")
            await page.goto(f"{base}/")
            await expect(page).to_have_url(f"{base}/ui/")
        rows = {r.run_id: r for r in await wait_finished(info, [by_hand, from_event])}
        assert rows[by_hand].inputs["name"] == "paused"
        assert rows[from_event].state == "succeeded"


LOGS_CONFIG = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"
shutdown_grace = "1s"
task_log_flush = "50ms"

[auth.users.ada]
token = "ada-token"
roles = ["viewer"]

[pipelines.talk.tasks.say]
kind = "shell"
# prints a line, waits for the test, prints another, waits again: the second line is
# printed while the page is open and the task still runs
command = "echo before; while [ ! -e GATE1 ]; do sleep 0.02; done; echo after >&2; while [ ! -e GATE2 ]; do sleep 0.02; done"
"""


async def test_the_run_page_shows_a_tasks_log_lines_as_they_come(make_config, tmp_path):
    text = LOGS_CONFIG.replace("GATE1", str(tmp_path / "gate1"))
    config = make_config(text.replace("GATE2", str(tmp_path / "gate2")))
    async with daemon_running(config) as info:
        base = "http://{}:{}".format(*info.http_address)
        run_id = (await info.runner.start_run("talk")).run_id
        async with browser_page(base) as page:
            await page.goto(f"{base}/ui/runs/{run_id}")
            lines = page.locator("#log-lines .log-line")
            await expect(lines.first).to_have_text("say#1 stdout: before")
            await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
            await page.evaluate("window.__sameDocument = true")
            (tmp_path / "gate1").touch()
            await expect(page.locator("#log-lines")).to_contain_text("say#1 stderr: after")
            await expect(page.locator(".log-line[data-stream=stderr]")).to_have_count(1)
            await expect(page.locator("#run-state .badge")).to_have_text("running")
            assert await page.evaluate("window.__sameDocument") is True
            await shot(page, "10-run-logs")
            (tmp_path / "gate2").touch()
            await expect(page.locator("#run-state .badge")).to_have_text("succeeded")
            await expect(lines).to_have_count(2)


def test_the_graph_puts_each_task_one_column_right_of_its_deepest_need():
    needs = {"a": (), "b": ("a",), "c": (), "d": ("b", "c"), "e": ("a",)}
    assert layers(["a", "c", "b", "e", "d"], needs) == [["a", "c"], ["b", "e"], ["d"]]
    boxes = summarise(
        ["a"], ["a"], [_instance("a[0]", "a", "succeeded"), _instance("a[1]", "a", "failed")]
    )
    assert boxes["a"].state == "failed"
    assert boxes["a"].caption == "1/2 succeeded"
    svg = task_graph(["a", "b"], {"a": (), "b": ("a",)}, {"a": boxes["a"]})
    assert svg.count('class="node') == 2
    assert svg.count('class="edge"') == 1
    assert 'data-task="b" data-state="pending"' in svg
    assert ">a \u00d72</text>" in svg  # a mapped task's name says how many items


def test_the_timeline_scales_attempts_to_the_runs_span():
    attempts = [
        AttemptRow("r", "t", 1, "failed", 100.0, 101.0),
        AttemptRow("r", "t", 2, "succeeded", 102.0, 104.0),
        AttemptRow("r", "u", 1, "running", 103.0),
    ]
    rows, span = gantt(attempts, 100.0, 104.0, now=105.0)
    assert span == 5.0  # widened to the attempt still running
    assert [r.key for r in rows] == ["t", "u"]
    first, second = rows[0].bars
    assert (first.left, first.width, second.left, second.width) == (0.0, 20.0, 40.0, 40.0)
    assert rows[1].bars[0].state == "running"


def _instance(key: str, task: str, state: str) -> InstanceRow:
    return InstanceRow("r", key, task, 0, state, 1, None, 0.0)
