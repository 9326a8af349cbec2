"""A broker message's body as event data: one reading for every source of messages
(Kafka, NATS, ...), so that the same bytes are the same data whichever broker brought them.

* ``None`` (a tombstone, no body) is ``null`` with encoding ``"none"``;
* JSON is the parsed value (``"json"``);
* a body that opens an object or an array (``{`` or ``[`` after whitespace) but is not
  JSON cued can keep (it does not parse, nests deeper than 64 levels, holds ``NaN``) is
  its text with an error: the source records it as an ``invalid`` event;
* any other UTF-8 is text (``"text"``), and bytes that are not UTF-8 are base64
  (``"base64"``).

Like everything in :mod:`cued.daemon.core.untrusted`, it cannot fail.
"""

from __future__ import annotations

from typing import Any

from cued.daemon.core.untrusted import json_value, looks_like_json, text_or_base64

__all__ = ["message_value"]


def message_value(value: bytes | None) -> tuple[Any, str, str | None]:
    """A message body as ``(data, encoding, error)``: see the module's documentation."""
    if value is None:
        return None, "none", None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return text_or_base64(value)[0], "base64", None
    if not text.strip():  # json_value reads an empty body as null; a message is text
        return text, "text", None
    parsed = json_value(value)
    if parsed.error is None:
        return parsed.data, "json", None
    if looks_like_json(value):
        return parsed.data, "text", parsed.error
    return text, "text", None
