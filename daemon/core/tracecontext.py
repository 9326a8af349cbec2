"""W3C trace context: the ``traceparent`` a caller sends, read safely.

A webhook's header or a Kafka message's header says which trace the event belongs to
(``00-<trace id>-<parent id>-<flags>``, https://www.w3.org/TR/trace-context/). It comes
from outside, so it is parsed here, where nothing can fail: a value that is not a valid
``traceparent`` is no trace context at all (the event starts a trace of its own), never
an error and never an invalid event.
"""

from __future__ import annotations

import re

__all__ = ["parse_traceparent", "traceparent_header"]

# version 00 is exactly this; a later version may append fields after a "-", and its
# first four fields are still these (the spec's rule for a version it does not know)
_TRACEPARENT = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[\x21-\x7e]*)?", re.ASCII
)
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_MAX_CHARS = 512  # longer is not a header anyone meant: no regex over megabytes


def parse_traceparent(value: str | bytes | None) -> str | None:
    """``value`` as a version-00 ``traceparent`` (lower-case, its own fields only), or
    ``None`` if it is not a valid one; never raises.

    :param value: a header's value, as text or bytes (a Kafka header)
    """
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str) or len(value) > _MAX_CHARS:
        return None
    found = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if found is None:
        return None
    version, trace_id, span_id, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return traceparent_header(int(trace_id, 16), int(span_id, 16), int(flags, 16))


def traceparent_header(trace_id: int, span_id: int, flags: int) -> str:
    """The version-00 ``traceparent`` of a span: its trace, its id and its flags."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags & 0xFF:02x}"
