"""What another daemon sends on the database's channels is parsed as hostile: a signal or a
live notice of any text never raises, and yields only well-formed signals and messages;
what this daemon shares is cut into notices that fit, and reads back as it was."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.runtime.signals import parse_signal
from cued.daemon.store import ApprovalRow, EventRow, InstanceRow, LogLineRow, RunRow
from cued.daemon.store.pg_notify import MAX_NOTICE_BYTES
from cued.daemon.web.live import _messages, _notices_of, shared_messages

_json = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_texts = st.text() | _json.map(json.dumps)
_kinds = st.sampled_from(["cancel", "gate", "pause", "waits", "reset", "run", "nope"])


@given(st.one_of(_texts, st.lists(st.one_of(_kinds, _json)).map(json.dumps)))
def test_a_signal_of_any_text_is_a_known_kind_with_its_names_or_none(text):
    found = parse_signal(text)
    if found is not None:
        kind, names = found
        assert (kind, len(names)) in {("cancel", 1), ("gate", 2), ("pause", 1), ("waits", 1)}
        assert all(isinstance(n, str) and n for n in names)


def test_signals_as_sent_are_read_back():
    assert parse_signal('["cancel", "r1"]') == ("cancel", ("r1",))
    assert parse_signal('["gate", "r1", "approve"]') == ("gate", ("r1", "approve"))
    assert parse_signal('["pause", "p"]') == ("pause", ("p",))
    assert parse_signal('["waits", "node-a"]') == ("waits", ("node-a",))
    assert parse_signal('["waits"]') is None
    assert parse_signal('["gate", "r1"]') is None
    assert parse_signal('["cancel", ""]') is None
    assert parse_signal('["cancel", 7]') is None


@given(st.one_of(_texts, st.lists(st.tuples(_kinds, _json).map(list)).map(json.dumps)))
def test_a_live_notice_of_any_text_yields_only_messages_as_the_stream_documents_them(text):
    found = shared_messages(text)
    if found is not None:
        for kind, data in found:
            assert kind in {"run", "task", "event", "approval", "decision", "log"}
            assert isinstance(data, dict)
            json.dumps(data)  # as the stream sends it


def rows(n: int, error: str = "") -> list[object]:
    found: list[object] = []
    for i in range(n):
        run = f"r{i:05d}"
        found += [
            RunRow(run, "p", "running", {"secret": "not shared"}, 1.0, 2.0, error=error or None),
            InstanceRow(run, "t", "t", None, "running", 1, None, 2.0),
            EventRow(f"e{i}", "src", 1.0, "matched", {"d": 1}, {}, (run,)),
            ApprovalRow(run, "g", 1, "ok?", ("alice",), 1, "fail", None, 1.0, None, "waiting"),
            LogLineRow(run, "t", 1, 7, 2.0, "stdout", "hello"),
        ]
    return found


def test_what_a_daemon_shares_fits_in_notices_and_reads_back_as_it_was():
    messages = list(_messages(rows(400)))  # type: ignore[arg-type]
    notices = list(_notices_of(messages))
    assert len(notices) > 1
    assert all(len(n.encode()) <= MAX_NOTICE_BYTES for n in notices)
    read = [m for n in notices for m in shared_messages(n) or []]
    assert read == [(kind, json.loads(json.dumps(data))) for kind, data in messages]
    assert all("inputs" not in data for kind, data in read if kind == "run")


def test_a_message_too_big_for_a_notice_asks_the_readers_to_reload():
    messages = list(_messages(rows(1, error="x" * 10_000)))  # type: ignore[arg-type]
    notices = list(_notices_of(messages))
    assert any(shared_messages(n) is None for n in notices)
    assert all(len(n.encode()) <= MAX_NOTICE_BYTES for n in notices)
