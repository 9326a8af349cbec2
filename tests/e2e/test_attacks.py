"""Attacks a review of the hardening (issue 8) tried on a real daemon, each stated as what
must hold:

- the API's own request bodies (a trigger's inputs) go through ``daemon/untrusted.py``: a
  lone surrogate or inputs nested deeper than pydantic serialises are answered 4xx or kept
  repaired, and ``GET /api/v1/runs`` stays readable for everyone;
- ``untrusted.json_value`` does not let ``1e999`` through as ``inf``;
- ``cued validate`` refuses a template that chooses a shell task's program (``argv[0]``),
  and warns of one in the script of ``sh -c`` or inside a here-document;
- a file swapped for a link after it was listed does not reach ``processed/`` as a valid
  event;
- with ``recursive = true``, a folder tree ~1,000 deep does not kill the daemon;
- in open mode, another local user cannot trigger runs (as the daemon's user) over
  loopback TCP.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
from pathlib import Path
from textwrap import dedent
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
import structlog

from cued.connectors.files import FilesConfig, FilesSource
from cued.daemon.config import parse_config
from cued.daemon.core import untrusted
from cued.daemon.errors import ConfigError
from cued.daemon.sdk.sources import SourceContext
from tests.support.daemon import Daemon, query, wait_for
from tests.support.fakes import NoRoutes, SwappingIntake
from tests.support.running import daemon_running

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cued.daemon.errors import ConfigProblem

NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")

# -- the API: a trigger's inputs ---------------------------------------------------------

API = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"
[pipelines.echo]
inputs = { name = "x" }
[pipelines.echo.tasks.say]
kind = "shell"
argv = ["true"]
"""


@pytest.mark.parametrize(
    "inputs",
    [
        pytest.param('{"name": "\\ud800"}', id="lone-surrogate"),
        pytest.param('{"name": ' + "[" * 900 + "]" * 900 + "}", id="nested-900-deep"),
    ],
)
async def test_a_trigger_with_hostile_inputs_is_no_5xx_and_leaves_the_runs_list_readable(
    tmp_path: Path, inputs: str
) -> None:
    config = parse_config(API, file=str(tmp_path / "config.toml"), base_dir=tmp_path)
    async with daemon_running(config) as info:
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            posted = await client.post(
                "/api/v1/pipelines/echo/runs",
                content=b'{"inputs": ' + inputs.encode() + b"}",
                headers={"content-type": "application/json"},
            )
            listed = await client.get("/api/v1/runs")
    # the run may be refused (4xx) or kept in a form that can be shown again; either
    # way the answer is no 5xx, and the list of runs stays readable for everyone
    assert (posted.status_code < 500, listed.status_code) == (True, 200), (
        posted.text,
        listed.text,
    )


def test_a_number_too_large_for_a_float_is_not_kept_as_infinity() -> None:
    """The module promises no NaN or Infinity: ``1e999`` parses as ``inf``, which is then
    stored as ``Infinity`` (not JSON) and shown by the API as ``null``."""
    parsed = untrusted.json_value(b'{"a": 1e999, "b": [-1e999]}')
    json.dumps(parsed.data, allow_nan=False)  # raises ValueError on inf


# -- cued validate: templates that choose code -------------------------------------------

PIPELINE = """\
[pipelines.p]
inputs = { x = "" }
[pipelines.p.tasks.t]
kind = "shell"
"""


def problems_of(task: str) -> tuple[list[ConfigProblem], list[ConfigProblem]]:
    """``(errors, warnings)`` of a config with one shell task."""
    try:
        config = parse_config(PIPELINE + dedent(task), file="config.toml")
    except ConfigError as exc:
        return list(exc.problems), list(exc.warnings)
    return [], list(config.warnings)


def test_validate_refuses_a_template_that_chooses_a_shell_tasks_program() -> None:
    """Event data choosing the program run is event data choosing code, as a templated
    python ``function`` is (which is refused)."""
    errors, _ = problems_of('argv = ["{{ inputs.x }}", "-c", "id"]\n')
    assert errors, "a template may choose the program a shell task runs"
    assert all(p.path.startswith("pipelines.p.tasks.t.argv") for p in errors)


@pytest.mark.parametrize("shell", ["sh", "/bin/sh", "bash"])
def test_validate_warns_of_a_template_in_the_script_of_sh_c(shell: str) -> None:
    """``argv = ["sh", "-c", "echo {{ x }}"]`` runs event data as shell code just as
    ``command = "echo {{ x }}"`` does, which is warned of."""
    _, warnings = problems_of(f'argv = ["{shell}", "-c", "echo {{{{ inputs.x }}}}"]\n')
    assert warnings, "no warning for a template in the script of sh -c"


def test_validate_warns_of_shell_quote_inside_a_here_document() -> None:
    """In an unquoted here-document quotes are text and ``$(...)`` runs: shell_quote does
    not protect there (``$(id)`` runs as the daemon's user)."""
    _, warnings = problems_of('command = "cat <<EOF\\n{{ inputs.x | shell_quote }}\\nEOF"\n')
    assert warnings, "no warning for shell_quote inside a here-document"


# -- the files source --------------------------------------------------------------------


async def test_a_file_swapped_for_a_link_after_it_was_listed_is_not_moved_to_processed(
    tmp_path: Path,
) -> None:
    """A local user who may write the folder replaces a listed file by a link to a file
    only the daemon may read (``rename`` is atomic) while its event commits: the link must
    not land in processed/ as the file of a valid event (its run would read the target)."""
    landing = tmp_path / "landing"
    landing.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("root only")
    (landing / "a.csv").write_text("harmless")

    def swap() -> None:
        os.symlink(secret, landing / ".link")
        os.rename(landing / ".link", landing / "a.csv")

    intake = SwappingIntake(swap)
    ctx = SourceContext(
        source="landing",
        intake=intake,
        log=structlog.get_logger(),
        routes=NoRoutes(),
        base_dir=tmp_path,
    )
    source = FilesSource(FilesConfig(path="landing", stable_for=0), ctx)
    async with anyio.create_task_group() as tg:
        await tg.start(source.run)
        with anyio.fail_after(20):
            await intake.acknowledged.wait()
        tg.cancel_scope.cancel()
    moved = landing / "processed" / "a.csv"
    (event,) = intake.events
    assert not (moved.is_symlink() and event.error is None), (
        "a link was moved into processed/ as the file of a valid event"
    )


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every local user may enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="cued-review-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=True)  # rmtree recurses too deep


RECURSIVE = """
[daemon]
state = "state.db"
[http]
listen = ""
[sources.landing]
kind = "files"
path = "landing"
recursive = true
stable_for = "0s"
rescan_every = "100ms"
[[triggers]]
source = "landing"
pipeline = "ingest"
[pipelines.ingest.tasks.read]
kind = "shell"
argv = ["true"]
"""


async def test_a_folder_tree_deeper_than_pythons_recursion_limit_does_not_kill_the_daemon(
    shared_dir: Path,
) -> None:
    """Linux allows ~2,000 levels of one-letter folders within PATH_MAX; the listing
    recurses once per level, and Python stops at ~1,000."""
    config = shared_dir / "config.toml"
    config.write_text(RECURSIVE)
    landing = shared_dir / "landing"
    landing.mkdir()
    deep = os.open(landing, os.O_RDONLY)
    for _ in range(1100):
        os.mkdir("d", dir_fd=deep)
        inner = os.open("d", os.O_RDONLY, dir_fd=deep)
        os.close(deep)
        deep = inner
    os.close(deep)
    daemon = Daemon(config, shared_dir / "state.db")
    await daemon.start()
    try:
        (landing / "after.csv").write_text("x")
        await wait_for(
            lambda: (
                (landing / "processed" / "after.csv").exists()
                or (daemon.process is not None and daemon.process.poll() is not None)
            )
        )
        alive = daemon.process is not None and daemon.process.poll() is None
    finally:
        daemon.stop()
    assert alive, daemon.log.read_text()[-2000:]
    assert (landing / "processed" / "after.csv").exists()


# -- open mode: every local user -----------------------------------------------------------


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_in_open_mode_another_local_user_cannot_start_runs_as_the_daemons_user(
    shared_dir: Path,
) -> None:
    """The control socket lets in only the daemon's user, root and its control group; the
    open API on loopback TCP lets any local user trigger (and cancel, retry) runs, which
    run as the daemon's user: the same takeover by another door."""
    port = free_port()
    config = shared_dir / "config.toml"
    config.write_text(API.replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
    config.chmod(0o644)
    state = shared_dir / "state.db"
    daemon = Daemon(config, state)
    await daemon.start()
    try:
        # the HTTP server listens a moment after the control socket answers
        await wait_for(lambda: listening(port))
        done = await anyio.run_process(
            [
                *NOBODY,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-d",
                "{}",
                f"http://127.0.0.1:{port}/api/v1/pipelines/echo/runs",
            ],
            check=False,
        )
        runs = int(query(state, "SELECT count(*) FROM runs")[0][0])
    finally:
        assert daemon.stop() == 0
    assert done.returncode == 0, done.stderr
    assert runs == 0, f"user nobody started a run (HTTP {done.stdout.decode()})"
