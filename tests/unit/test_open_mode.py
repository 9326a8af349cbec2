"""Open mode, no ``[auth.users]``: the API and UI take no token, so they listen on loopback
only and answer only requests addressed to it. What counts as loopback is decided by
parsing, checked here over arbitrary text, with the listen address a config may give and
the kernel's table of TCP connections that names the user of a client."""

from __future__ import annotations

import ipaddress
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.core.loopback import (
    TcpSocket,
    is_loopback_host,
    is_loopback_listen,
    parse_tcp_table,
    tcp_owner,
)
from cued.daemon.errors import ConfigError
from tests.support.open_mode import loopback_v4, ports, suffixes

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
