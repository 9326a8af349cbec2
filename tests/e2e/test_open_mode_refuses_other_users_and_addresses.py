"""Open mode against other processes: another OS user (``curl`` as ``nobody``) is refused
and told to use tokens unless it is in the control group, and ``cued validate`` refuses a
listen address other than loopback."""

from __future__ import annotations

import json

import anyio
import pytest

from tests.support.daemon import cued
from tests.support.open_mode import OPEN
from tests.support.running import daemon_running

# -- the listen address ------------------------------------------------------------------


@pytest.mark.parametrize(
    "listen",
    ["0.0.0.0:8080", "[::]:8080", "192.168.1.10:8080", "example.com:8080", "127.0.0.1.nip.io:80"],
)
def test_with_no_users_a_listen_address_other_than_loopback_is_refused(tmp_path, listen):
    config = tmp_path / "config.toml"
    config.write_text(f'[daemon]\nstate = "state.db"\n\n[http]\nlisten = "{listen}"\n')
    done = cued(config, "validate")
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == (
        f"{config}:5: http.listen: {listen!r} is not a loopback address, and with no "
        "[auth.users] the API and UI take no token: listen on 127.0.0.1, [::1] or "
        "localhost, or add [auth.users.NAME] with tokens"
    )


# -- another OS user ---------------------------------------------------------------------

NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")


async def curl(run_as: tuple[str, ...], url: str, *args: str) -> tuple[int, str]:
    done = await anyio.run_process(
        [*run_as, "curl", "-s", "-w", "\n%{http_code}", *args, url], check=True
    )
    body, _, status = done.stdout.decode().rpartition("\n")
    return int(status), body


async def test_with_no_users_another_os_user_is_refused_and_told_to_use_tokens(make_config):
    async with daemon_running(make_config(OPEN)) as info:
        assert info.http_address is not None
        base = "http://{}:{}".format(*info.http_address)
        trigger = await curl(NOBODY, f"{base}/api/v1/pipelines/hello/runs", "-X", "POST")
        listed = await curl(NOBODY, f"{base}/api/v1/runs")
        page = await curl(NOBODY, f"{base}/ui/runs")
        own = await curl((), f"{base}/api/v1/session")
        runs = await info.runner.store.list_runs(limit=10)
    assert runs == []
    assert trigger[0] == listed[0] == page[0] == 403
    error = json.loads(trigger[1])["error"]
    assert error["code"] == "local_user"
    assert "OS user 'nobody'" in error["message"]
    assert "[auth.users]" in error["message"]
    assert "OS user &#39;nobody&#39;" in page[1] or "OS user 'nobody'" in page[1]
    assert own[0] == 200
    assert json.loads(own[1])["name"] == "root"


async def test_with_no_users_the_control_group_may_use_the_api(make_config):
    config = make_config(OPEN.replace("[daemon]\n", '[daemon]\ncontrol_group = "nogroup"\n'))
    async with daemon_running(config) as info:
        assert info.http_address is not None
        base = "http://{}:{}".format(*info.http_address)
        me = await curl(NOBODY, f"{base}/api/v1/session")
    assert me[0] == 200
    assert json.loads(me[1]) == {
        "name": "nobody",
        "roles": ["operator", "viewer"],
        "groups": [],
        "via": "open",
    }
