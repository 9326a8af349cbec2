"""A value a database driver read, as one JSON can hold: one reading for the ``postgres``
source's rows and the ``sql`` task's results.

Numbers, text and booleans stay as they are (a float that is not finite becomes its text);
``Decimal`` is an integer when whole (and under 18 digits), else a float; times, dates
and times of day are ISO 8601 text, intervals seconds; UUIDs text; bytes base64 (the
caller is told, to say so in its output); arrays lists; anything else its ``str``.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import math
import uuid
from typing import Any

__all__ = ["db_value"]


def db_value(value: Any, binary: list[str], where: str) -> Any:
    """``value`` as JSON can hold it; appends ``where`` to ``binary`` if bytes were made
    base64. Never raises."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return str(value)
        if value == value.to_integral_value() and value.adjusted() < 18:
            return int(value)
        return float(value)
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        binary.append(where)
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, list | tuple):
        return [db_value(v, binary, where) for v in value]
    if isinstance(value, dict):
        return {str(k): db_value(v, binary, where) for k, v in value.items()}
    return str(value)
