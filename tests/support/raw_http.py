"""HTTP/1.1 on a bare socket: requests made byte by byte, for what httpx will not send
(header values of any bytes) and for bodies streamed while watching for an early answer.
"""

from __future__ import annotations

import itertools
import json
import os
import selectors
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = ["RawResponse", "free_port", "head_only", "read_back", "request", "send_streaming"]

TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[bytes, bytes]
    """Names in lower case; the last of a repeated header."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def is_json_error(self) -> bool:
        """Whether the body is the daemon's error body ``{"error": {"code", "message"}}``."""
        if not self.headers.get(b"content-type", b"").startswith(b"application/json"):
            return False
        error = self.json().get("error")
        return isinstance(error, dict) and {"code", "message"} <= set(error)


#: The ports :func:`free_port` hands out: below the kernel's ephemeral range (32768-60999),
#: from which every outgoing connection takes its local port (a port the kernel picked
#: for a test could be some connection's before the daemon listens on it), and a slice
#: of them for each pytest-xdist worker, taken in turn (a worker runs one test at a time).
_PORTS = range(20_000, 32_000)


def _ports_of_this_worker() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    size = len(_PORTS) // workers
    first = _PORTS.start + int(worker) * size
    return itertools.cycle(range(first, first + size))


_next_port = _ports_of_this_worker()


def free_port() -> int:
    """A loopback port nothing listens on now, that no other test and no outgoing
    connection is handed meanwhile (for a daemon started in another process)."""
    while True:
        port = next(_next_port)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # something listens there (or it has just been let go)
        return port


def _head(method: str, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def request(
    port: int,
    method: str,
    target: bytes | str,
    *,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes = b"",
) -> RawResponse:
    """Send one request with ``Content-Length`` (unless ``body`` is empty and the method
    a GET) and read the whole answer."""
    target = target.encode() if isinstance(target, str) else target
    headers = list(headers)
    if body or method != "GET":
        headers.append((b"Content-Length", str(len(body)).encode()))
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(_head(method, target, headers) + body)
        return _read(sock)


def head_only(
    port: int, method: str, target: str, headers: Iterable[tuple[bytes, bytes]]
) -> RawResponse:
    """Send the head of a request (its body never follows) and read the answer: for an
    answer that must not wait for the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(_head(method, target.encode(), headers))
        return _read(sock)


def read_back(port: int, event_id: str, *, source: str, token: bytes | None = None) -> Any:
    """The event ``event_id`` as the API shows it, once every place that shows events has
    shown it with ``200``: the API's event and list of the source's events, the UI's list
    and event page.

    :param token: the bearer token to read with (none if the daemon has no users)
    """
    headers = [(b"Authorization", b"Bearer " + token)] if token else []
    quoted = quote(event_id, safe="")
    one = request(port, "GET", f"/api/v1/events/{quoted}", headers=headers)
    assert one.status == 200, one
    for target in (f"/api/v1/events?source={quote(source)}", f"/ui/events?source={quote(source)}"):
        answer = request(port, "GET", target, headers=headers)
        assert answer.status == 200, (target, answer)
    page = request(port, "GET", f"/ui/events/{quoted}", headers=headers)
    assert page.status == 200, page
    event = one.json()
    assert event["event_id"] == event_id
    return event


def send_streaming(
    port: int,
    method: str,
    target: str,
    *,
    headers: Iterable[tuple[bytes, bytes]],
    chunks: Iterable[bytes],
    chunked: bool,
) -> tuple[RawResponse | None, int]:
    """Send the head, then ``chunks`` one by one (as a chunked body, or as they are if the
    head declares a length), and stop as soon as an answer arrives.

    :returns: the answer (``None`` if none came before the body was sent and the server
        closed), and how many body bytes were handed to the socket before it came
    """
    headers = list(headers)
    if chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(_head(method, target.encode(), headers))
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            for chunk in chunks:
                if selector.select(timeout=0):  # answered already: send no more
                    return _read(sock), sent
                framed = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
                try:
                    sock.sendall(framed)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(chunk)
            else:
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
        try:
            return _read(sock), sent
        except ConnectionResetError:
            return None, sent


def _read(sock: socket.socket) -> RawResponse:
    data = b""
    while b"\r\n\r\n" not in data:
        got = sock.recv(65536)
        if not got:
            raise ConnectionError(f"the connection closed before an answer: {data!r}")
        data += got
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get(b"content-length")
    if length is not None:
        while len(rest) < int(length):
            got = sock.recv(65536)
            if not got:
                break
            rest += got
        return RawResponse(status, headers, rest[: int(length)])
    while got := sock.recv(65536):  # until the server closes (we asked it to)
        rest += got
    if headers.get(b"transfer-encoding") == b"chunked":
        rest = _unchunk(rest)
    return RawResponse(status, headers, rest)


def _unchunk(data: bytes) -> bytes:
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body, data = body + data[:size], data[size + 2 :]
    return body
