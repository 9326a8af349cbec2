"""Web UI benchmark: ``.venv/bin/python -m bench.ui [--loads 15] [--write]`` (needs Debian's
Chromium at /usr/bin/chromium, ``apt-get install -y chromium``, and the test extra for
Playwright).

The daemon runs in its own process with a token user, and first records some history:
``--runs`` runs of a pipeline of 3 tasks, one of them mapped over 20 items (so a run page
has 22 task instances, a graph and a timeline), and ``--events`` webhook events.

Then, for the overview (``/ui/``), the runs list and one run page (``/ui/runs/{id}``):

* size: the page's HTML, decoded and as sent (gzip), and what a first load transfers in
  all (HTML + CSS + JS, as the browser's resource timing reports it);
* time: Chromium's navigation timing (``responseEnd``, ``domContentLoadedEventEnd``,
  ``loadEventEnd``, in ms from the start of the navigation), median of ``--loads``
  loads, each in a fresh browser context (empty cache: a first load), and of a second
  visit in that context (CSS and JS from the cache, the page itself fetched again);
* floor: the API's own JSON for the same run (``GET /api/v1/runs/{id}``), loaded the same
  way: what any page showing that run must at least fetch.

Prints a Markdown section; ``--write`` appends it to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "bench-token"

CONFIG = """
[http]
listen = "127.0.0.1:{port}"
[daemon]
state = "state.db"
log_level = "warning"
shutdown_grace = "1s"
[auth.users.bench]
token = "bench-token"
roles = ["viewer", "operator", "approver"]
[sources.orders]
kind = "webhook"
path = "/hooks/orders"
[[triggers]]
source = "orders"
pipeline = "hello"
inputs = {{ name = "{{{{ event.data.customer }}}}" }}
[pipelines.hello]
inputs = {{ name = "world", items = [{items}] }}
[pipelines.hello.tasks.greet]
kind = "shell"
argv = ["echo", "hello {{{{ inputs.name }}}}"]
[pipelines.hello.tasks.fan]
kind = "sleep"
needs = ["greet"]
map = "{{{{ inputs.items }}}}"
[pipelines.hello.tasks.done]
kind = "shell"
needs = ["fan"]
argv = ["echo", "done"]
"""

_TIMING = """() => {
  const n = performance.getEntriesByType("navigation")[0];
  const r = performance.getEntriesByType("resource");
  return {
    response_end: n.responseEnd, dom_content_loaded: n.domContentLoadedEventEnd,
    load: n.loadEventEnd, transfer: n.transferSize + r.reduce((s, x) => s + x.transferSize, 0),
    decoded: n.decodedBodySize + r.reduce((s, x) => s + x.decodedBodySize, 0),
    resources: r.length,
  };
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def record_history(base: str, runs: int, events: int) -> str:
    """Runs and events for the pages to show; returns the id of the last run."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, headers=auth, timeout=30) as client:
        ids = [
            client.post("/api/v1/pipelines/hello/runs", json={"inputs": {}}).json()["run_id"]
            for _ in range(runs)
        ]
        for i in range(events):
            answer = client.post("/hooks/orders", json={"customer": f"c{i}", "total": i})
            ids.extend(answer.json()["runs"])
        for run_id in ids:
            while client.get(f"/api/v1/runs/{run_id}").json()["state"] not in (
                "succeeded",
                "failed",
            ):
                time.sleep(0.02)
    return ids[runs - 1]


def sizes(base: str, path: str, headers: dict[str, str]) -> dict[str, int]:
    with httpx.Client(base_url=base, headers=headers) as client:
        plain = client.get(path, headers={"Accept-Encoding": "identity"})
        packed = client.get(path, headers={"Accept-Encoding": "gzip"})
        plain.raise_for_status()
        # httpx decodes; the bytes on the wire are what Content-Length says
        sent = int(packed.headers.get("content-length", len(packed.content)))
        return {"decoded": len(plain.content), "sent": sent}


async def timings(
    base: str, pages: dict[str, str], loads: int, floor: set[str]
) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {
        name: {k: [] for k in ("cold", "dcl", "resp", "warm", "transfer", "decoded")}
        for name in pages
    }
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        # log in once, as a person does (the session cookie); every load starts from it
        login = await browser.new_context()
        answer = await login.request.post(f"{base}/api/v1/session", data={"token": TOKEN})
        state = await login.storage_state() if answer.ok else None
        await login.close()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for _ in range(loads):
            for name, path in pages.items():
                # the API's JSON takes the bearer token; pages the cookie (or the token, if
                # this API has no session endpoint)
                use_header = name in floor or state is None
                context = await browser.new_context(
                    storage_state=state, extra_http_headers=auth if use_header else None
                )
                page = await context.new_page()
                for kind in ("cold", "warm"):
                    if kind == "cold":
                        await page.goto(base + path, wait_until="load")
                    else:
                        await page.goto(base + path, wait_until="load")
                    await page.wait_for_function(
                        "performance.getEntriesByType('navigation')[0].loadEventEnd > 0"
                    )
                    t = await page.evaluate(_TIMING)
                    if kind == "cold":
                        out[name]["cold"].append(t["load"])
                        out[name]["dcl"].append(t["dom_content_loaded"])
                        out[name]["resp"].append(t["response_end"])
                        out[name]["transfer"].append(t["transfer"])
                        out[name]["decoded"].append(t["decoded"])
                    else:
                        out[name]["warm"].append(t["load"])
                await context.close()
        await browser.close()
    return out


def machine() -> str:
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    chromium = subprocess.run(
        [CHROMIUM, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"{platform.machine()}, {os.cpu_count()} cores (nproc), {mem_kb / 2**20:.0f} GiB RAM, "
        f"Python {platform.python_version()}, {chromium}, "
        f"{datetime.now(UTC).date().isoformat()}"
    )


def report(
    rows: list[tuple[str, str, dict[str, int], dict[str, list[float]]]], loads: int, args: str
) -> str:
    med = statistics.median
    about = (
        "The daemon in its own process on loopback, headless Chromium (Playwright) on the same "
        "cores. A first load is a fresh browser context (empty cache, logged in by its "
        "session cookie); a second visit takes CSS and JS from the cache. Times are Chromium's "
        f"navigation timing in ms from the start of navigation, median of {loads} loads; "
        "bytes are the page alone (decoded / gzip as sent) and everything a first load "
        "transfers (HTML + CSS + JS, resource timing)."
    )
    header = (
        "| what | page HTML decoded / sent | first load: all bytes transferred (decoded) "
        "| responseEnd | DOMContentLoaded | load | load, second visit (CSS+JS cached) |"
    )
    lines = [
        "## Web UI",
        "",
        f"Command: `.venv/bin/python -m bench.ui{' ' + args if args else ''}`",
        "",
        f"Machine: {machine()}.",
        "",
        about,
        "",
        header,
        "|---|---|---|---|---|---|---|",
    ]
    for name, _path, size, t in rows:
        lines.append(
            f"| {name} | {size['decoded']:,} B / {size['sent']:,} B "
            f"| {med(t['transfer']):,.0f} B ({med(t['decoded']):,.0f} B) "
            f"| {med(t['resp']):.1f} ms | {med(t['dcl']):.1f} ms | {med(t['cold']):.1f} ms "
            f"| {med(t['warm']):.1f} ms |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loads", type=int, default=15)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--items", type=int, default=20, help="mapped instances per run")
    parser.add_argument("--write", action="store_true", help="append to BENCHMARKS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = tmp / "config.toml"
        items = ", ".join(str(i) for i in range(args.items))
        config.write_text(CONFIG.format(port=port, items=items))
        daemon = subprocess.Popen(
            [sys.executable, "-m", "cued.daemon.cli", "--config", str(config), "run"], cwd=ROOT
        )
        try:
            wait_listening(port)
            run_id = record_history(base, args.runs, args.events)
            pages = {
                "overview `/ui/`": "/ui/",
                "runs list `/ui/runs`": "/ui/runs",
                f"run page `/ui/runs/{{id}}` ({args.items + 2} task instances)": (
                    f"/ui/runs/{run_id}"
                ),
                "floor: API JSON of that run `/api/v1/runs/{id}`": f"/api/v1/runs/{run_id}",
            }
            floor = {n for n in pages if n.startswith("floor")}
            auth = {"Authorization": f"Bearer {TOKEN}"}
            size = {n: sizes(base, p, auth) for n, p in pages.items()}
            t = asyncio.run(timings(base, pages, args.loads, floor))
        finally:
            daemon.terminate()
            daemon.wait(60)
    sys.stderr.write(json.dumps({"sizes": size, "timings": t}) + "\n")
    argv = " ".join(sys.argv[1:])
    text = report([(n, p, size[n], t[n]) for n, p in pages.items()], args.loads, argv)
    sys.stdout.write(text)
    if args.write:
        with (ROOT / "BENCHMARKS.md").open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
