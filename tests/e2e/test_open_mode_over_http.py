"""Open mode, no ``[auth.users]``, over real HTTP: the daemon answers only requests
addressed to loopback, refuses another OS user unless it is in the control group, and
``cued validate`` refuses a listen address other than loopback. Who opened a connection
is read from the kernel's table of a real one."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cued.daemon.core.loopback import is_loopback_host, tcp_client_uid
from tests.support.daemon import cued
from tests.support.hosts import loopback_v4, ports, suffixes
from tests.support.running import daemon_running

OPEN = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"
[pipelines.hello.tasks.greet]
kind = "shell"
argv = ["echo", "hello"]
"""


# header values as a client may send them: any bytes but those that end a header line
header_values = st.one_of(
    st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b),
    st.tuples(
        st.sampled_from(["127.0.0.1", "localhost", "[::1]", "evil.com"]), suffixes, ports
    ).map(lambda t: "".join(t).encode()),
    st.tuples(loopback_v4, ports).map(lambda t: "".join(t).encode()),
)


def status_for(address: tuple[str, int], path: str, host: bytes) -> int:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(
            b"GET "
            + path.encode()
            + b" HTTP/1.1\r\nHost: "
            + host
            + b"\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while b"\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def check_hosts(address: tuple[str, int]) -> None:
    @settings(
        max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(host=header_values, path=st.sampled_from(["/api/v1/runs", "/ui/"]))
    def check(host: bytes, path: str) -> None:
        status = status_for(address, path, host)
        assert status < 500
        if status == 400:
            return  # the HTTP parser refused the header itself (control characters)
        # as the server reads it: surrounding spaces and tabs are not part of the value
        value = host.strip(b" \t").decode("latin-1")
        assert status == (200 if is_loopback_host(value) else 403), (value, status)

    check()


async def test_the_open_api_answers_exactly_the_loopback_hosts_over_http(make_config):
    async with daemon_running(make_config(OPEN)) as info:
        assert info.http_address is not None
        await anyio.to_thread.run_sync(check_hosts, info.http_address)


async def test_with_no_users_only_requests_addressed_to_loopback_are_answered(make_config):
    hosts = {
        "127.0.0.1.evil.com": 403,
        "localhost.evil.com": 403,
        "evil.com": 403,
        "127.0.0.1.evil.com:8080": 403,
        "[::1].evil.com": 403,
        "127.0.0.1:8080": 200,
        "localhost": 200,
        "LocalHost:8080": 200,
        "[::1]:8080": 200,
        "127.0.0.2": 200,
    }
    config = make_config(OPEN)
    async with daemon_running(config) as info:
        assert info.http_address is not None
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
            got = {
                (path, value): (await client.get(path, headers={"host": value})).status_code
                for value in hosts
                for path in ("/api/v1/runs", "/ui/", "/ui/runs")
            }
            ui_refusal = await client.get("/ui/", headers={"host": "127.0.0.1.evil.com"})
            rebound = await client.post(
                "/api/v1/pipelines/hello/runs", headers={"host": "127.0.0.1.evil.com:8080"}
            )
        runs = await info.runner.store.list_runs(limit=10)
    assert got == {
        (path, value): status
        for value, status in hosts.items()
        for path in ("/api/v1/runs", "/ui/", "/ui/runs")
    }
    assert "answer only requests addressed to localhost, 127.0.0.1 or [::1]" in ui_refusal.text
    assert rebound.status_code == 403
    assert rebound.json()["error"] == {
        "code": "host",
        "message": "with no [auth.users], the API and UI answer only requests addressed to "
        "localhost, 127.0.0.1 or [::1], not to '127.0.0.1.evil.com:8080'",
    }
    assert runs == []


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


@pytest.mark.parametrize(
    ("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
def test_the_owner_of_a_real_loopback_connection_is_this_process_user(family, host):
    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen()
        with socket.create_connection(server.getsockname()[:2]) as client:
            accepted, peer = server.accept()
            with accepted:
                owner = tcp_client_uid(peer[:2], accepted.getsockname()[:2])
                gone = tcp_client_uid(peer[:2], ("127.0.0.2", 1))
                blind = tcp_client_uid(
                    peer[:2], accepted.getsockname()[:2], proc_net=Path("/nonexistent")
                )
                _ = client
    assert owner == os.geteuid()
    assert gone is None
    assert blind is None


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


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz", "/api/v1/openapi.json"])
async def test_with_no_users_health_metrics_and_the_api_document_need_a_loopback_host(
    make_config, path
):
    async with daemon_running(make_config(OPEN)) as info:
        assert info.http_address is not None
        host, port = info.http_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
            local = await client.get(path, headers={"host": f"localhost:{port}"})
            rebound = await client.get(path, headers={"host": "evil.example"})
    assert local.status_code == 200
    assert rebound.status_code == 403
    assert rebound.json()["error"]["code"] == "host"
