"""Open mode, no ``[auth.users]``: the API and UI take no token, so they listen on loopback
only and answer only requests addressed to it. What counts as loopback is decided by
parsing, checked here over arbitrary header values, and over real HTTP against the
daemon."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cued.daemon.core.loopback import (
    TcpSocket,
    is_loopback_host,
    is_loopback_listen,
    parse_tcp_table,
    tcp_owner,
)
from cued.daemon.errors import ConfigError
from cued.daemon.web.peers import tcp_client_uid
from tests.support.daemon import cued
from tests.support.running import daemon_running

loopback_v4 = st.ip_addresses(network="127.0.0.0/8").map(str)
ports = st.one_of(st.just(""), st.integers(0, 65535).map(lambda p: f":{p}"))
# what may follow a host to make another name of it: a dot or dash, then name characters
suffixes = st.from_regex(r"[.\-][a-z0-9.\-]{1,20}", fullmatch=True)
non_loopback = st.ip_addresses().filter(lambda a: not a.is_loopback)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("localhost", True, id="localhost"),
        pytest.param("LOCALHOST:8080", True, id="any-case"),
        pytest.param("localhost:", True, id="empty-port"),
        pytest.param("127.0.0.1", True, id="v4"),
        pytest.param("127.255.0.9:80", True, id="v4-net"),
        pytest.param("[::1]", True, id="v6"),
        pytest.param("[::1]:8080", True, id="v6-port"),
        pytest.param("[0:0:0:0:0:0:0:1]:1", True, id="v6-long"),
        pytest.param("", False, id="empty"),
        pytest.param("localhost.", False, id="trailing-dot"),
        pytest.param("127.0.0.1.evil.com", False, id="rebinding-v4-prefix"),
        pytest.param("localhost.evil.com", False, id="rebinding-name-prefix"),
        pytest.param("evil.com", False, id="other-name"),
        pytest.param("::1", False, id="bare-v6"),
        pytest.param("[::1", False, id="unclosed-bracket"),
        pytest.param("[::1]x", False, id="junk-after-bracket"),
        pytest.param("[127.0.0.1]", False, id="v4-in-brackets"),
        pytest.param("127.0.0.1:80:80", False, id="two-ports"),
        pytest.param("127.0.0.1:http", False, id="named-port"),
        pytest.param("127.0.0.1:123456", False, id="long-port"),
        pytest.param("127.1", False, id="short-v4"),
        pytest.param("2130706433", False, id="integer-v4"),
        pytest.param(" localhost", False, id="space"),
        pytest.param("localho\u017ft", False, id="non-ascii"),  # long s: upper-cases to "S"
        pytest.param("0.0.0.0", False, id="any-v4"),
        pytest.param("[::]", False, id="any-v6"),
    ],
)
def test_loopback_hosts(host, expected):
    assert is_loopback_host(host) is expected


@given(st.text())
def test_any_text_is_answered_without_an_error(host):
    assert is_loopback_host(host) in (True, False)


@given(loopback_v4, ports)
def test_every_loopback_v4_address_with_any_port_is_loopback(address, port):
    assert is_loopback_host(address + port)


@given(st.one_of(loopback_v4, st.just("localhost"), st.just("[::1]")), suffixes, ports)
def test_a_loopback_host_followed_by_more_name_is_not(host, suffix, port):
    assert not is_loopback_host(host + suffix + port)


@given(st.from_regex(r"[a-z0-9\-]{1,20}\.", fullmatch=True), ports)
def test_a_name_ending_in_localhost_is_not(prefix, port):
    assert not is_loopback_host(prefix + "localhost" + port)


@given(non_loopback, ports)
def test_other_addresses_are_not_loopback(address, port):
    text = f"[{address}]" if address.version == 6 else str(address)
    assert not is_loopback_host(text + port)
    assert not is_loopback_listen(text + (port or ":80"))


@given(st.text())
def test_accepted_hosts_parse_as_loopback(host):
    if is_loopback_host(host):
        name = host[1 : host.index("]")] if host.startswith("[") else host.partition(":")[0]
        assert name.lower() == "localhost" or ipaddress.ip_address(name).is_loopback


# -- over real HTTP ----------------------------------------------------------------------

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


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:8080", "127.1.2.3:80", "[::1]:8080", "localhost:8080", ":8080", ""]
)
def test_with_no_users_a_loopback_listen_address_is_accepted(make_config, listen):
    assert make_config(f'[http]\nlisten = "{listen}"\n').http.listen == listen


def test_with_users_any_listen_address_is_accepted(make_config):
    config = make_config('[http]\nlisten = "0.0.0.0:8080"\n[auth.users.ada]\ntoken = "t"\n')
    assert config.http.listen == "0.0.0.0:8080"


def test_the_listen_problem_is_reported_with_the_others(make_config):
    with pytest.raises(ConfigError) as caught:
        make_config('[http]\nlisten = "0.0.0.0:1"\n[daemon]\nstat = "x"\n')
    assert [(p.line, p.path) for p in caught.value.problems] == [
        (4, "daemon.stat"),
        (2, "http.listen"),
    ]


# -- who opened the connection -----------------------------------------------------------

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 101 1
   2: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 102 1
   3: 0100007F:D432 0100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3
"""
V4_MAPPED = "0000000000000000FFFF00000100007F"  # ::ffff:127.0.0.1
V6_LOOPBACK = "00000000000000000000000001000000"  # ::1
REST = "01 00000000:00000000 00:00000000 00000000"
TCP6 = (
    "  sl  local_address                         remote_address                        st\n"
    f"   0: {V4_MAPPED}:D433 {V4_MAPPED}:1F90 {REST} 65534 0 200 1\n"
    f"   1: {V6_LOOPBACK}:D434 {V6_LOOPBACK}:1F90 {REST} 33 0 201 1\n"
)


@pytest.mark.parametrize(
    ("table", "client", "expected"),
    [
        pytest.param(TCP, ("127.0.0.1", 54321), 1000, id="v4-client-row-not-the-servers"),
        pytest.param(TCP, ("127.0.0.1", 54322), None, id="time-wait-shows-uid-0-is-no-owner"),
        pytest.param(TCP, ("127.0.0.1", 54323), None, id="no-such-connection"),
        pytest.param(TCP6, ("::ffff:127.0.0.1", 54323), 65534, id="v4-mapped-in-tcp6"),
        pytest.param(TCP6, ("127.0.0.1", 54323), 65534, id="v4-matches-v4-mapped"),
        pytest.param(TCP6, ("::1", 54324), 33, id="v6"),
        pytest.param(TCP6, ("not an address", 54324), None, id="bad-client-address"),
    ],
)
def test_the_owner_of_a_connection_is_the_uid_of_the_clients_row(table, client, expected):
    server = ("::1", 8080) if client[0] == "::1" else ("127.0.0.1", 8080)
    if sys.byteorder != "little":
        pytest.fail("these tables are a little-endian machine's")
    assert tcp_owner(parse_tcp_table(table), client, server) == expected


def test_the_header_and_malformed_lines_of_a_table_are_left_out():
    table = TCP + "   4: 0100007F:XYZW 0100007F:1F90 01 0 0 0 1000 0 5 1\n   5: short\n"
    assert [row.inode for row in parse_tcp_table(table)] == [100, 101, 102, 0]


def row_text(row: TcpSocket) -> str:
    def endpoint(address, port):
        packed = address.packed
        words = (int.from_bytes(packed[i : i + 4], sys.byteorder) for i in range(0, len(packed), 4))
        return "".join(f"{word:08X}" for word in words) + f":{port:04X}"

    return (
        f"   0: {endpoint(*row.local)} {endpoint(*row.remote)} 01 00000000:00000000 "
        f"00:00000000 00000000 {row.uid:5d} 0 {row.inode} 1 0000000000000000 100 0 0 10 0"
    )


addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
tcp_sockets = st.builds(
    lambda family, lp, rp, uid, inode: TcpSocket((family[0], lp), (family[1], rp), uid, inode),
    st.one_of(
        st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)),
        st.tuples(st.ip_addresses(v=6), st.ip_addresses(v=6)),
    ),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
)


@given(st.lists(tcp_sockets, max_size=5))
def test_rows_as_the_kernel_writes_them_parse_back(rows):
    text = "  sl  local_address rem_address   st ... uid  timeout inode\n"
    assert parse_tcp_table(text + "\n".join(row_text(row) for row in rows)) == rows


@given(st.text(max_size=400), addresses.map(str), st.integers(0, 65535))
def test_any_text_parses_without_an_error(text, host, port):
    rows = parse_tcp_table(text)
    assert all(0 <= row.local[1] <= 65535 and row.uid >= 0 for row in rows)
    owner = tcp_owner(rows, (host, port), ("127.0.0.1", 8080))
    assert owner is None or owner >= 0


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
