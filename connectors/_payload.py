"""What the message-broker sources share beyond the reading of a message's bytes (that is
the sdk's ``message_value``, one reading for every broker): header-like pairs as text, a
delivery's fingerprint, how to name a message that the broker may hand over again
without an id of its own, and how to tell that a batch held such redeliveries.

:class:`RedeliveryIds` names messages of brokers whose deliveries carry no id that a
redelivery repeats (MQTT, AMQP): see its documentation.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from cued.daemon.sdk import decimal, text_or_base64

if TYPE_CHECKING:
    from collections.abc import Iterable

    from cued.daemon.sdk import Intake, Receipt, SourceContext

__all__ = ["RedeliveryIds", "digest", "log_redelivered", "text_map"]


def text_map(
    pairs: Iterable[tuple[str | bytes, Any]], prefix: str
) -> tuple[dict[str, str], list[str]]:
    """Header-like pairs as ``name -> text``, and which of them were given as base64
    (``prefix.name``) because their bytes are not UTF-8. Values that are neither text
    nor bytes (AMQP headers may be numbers) are kept as their ``str``."""
    out: dict[str, str] = {}
    binary: list[str] = []
    for raw_name, raw in pairs:
        name, name_b64 = (
            text_or_base64(raw_name) if isinstance(raw_name, bytes) else (raw_name, False)
        )
        if isinstance(raw, bytes):
            value, b64 = text_or_base64(raw)
        else:
            value, b64 = (raw if isinstance(raw, str) else str(raw)), False
        out[name] = value
        if b64 or name_b64:
            binary.append(f"{prefix}.{name}")
    return out, binary


def digest(*parts: bytes | str | float | None) -> str:
    """A short fingerprint of a delivery's content (12 hex digits of SHA-256)."""
    h = hashlib.sha256()
    for part in parts:
        raw = part if isinstance(part, bytes) else repr(part).encode("utf-8", "replace")
        h.update(len(raw).to_bytes(8, "big"))
        h.update(raw)
    return h.hexdigest()[:12]


def log_redelivered(ctx: SourceContext, prefix: str, receipts: list[Receipt]) -> None:
    """Log ``{prefix}_redelivered`` with how many of a batch's events intake already had:
    recorded before a crash or a lost connection, acknowledged only now."""
    if duplicates := sum(r.status == "duplicate" for r in receipts):
        ctx.log.info(f"{prefix}_redelivered", duplicates=duplicates)


class RedeliveryIds:
    """Event ids for a broker whose deliveries carry no id a redelivery repeats.

    MQTT and AMQP redeliver a message that was not acknowledged (after a crash, or a lost
    connection) and flag it as such (MQTT's DUP, AMQP's ``redelivered``), but give it no
    id of its own. Each message taken gets the next number of a sequence kept as the
    source's cursor (committed with the events): ``SOURCE:SEQ:DIGEST``, with a digest of
    the delivery's content. A *flagged* delivery may have been recorded before its
    acknowledgement was lost: the broker holds at most ``window`` unacknowledged messages
    (MQTT's receive maximum, AMQP's prefetch), and acknowledgements go in order, so if it
    was, it is among the last ``window`` numbers, under its digest; intake is asked which
    of those ids it knows, and the delivery takes that id (and is then a duplicate,
    starting nothing). A flagged delivery found nowhere is new.

    A recognised redelivery keeps its old number while new messages take new ones, and
    its acknowledgement may be lost again (another crash): then it comes back from
    further than ``window`` numbers away. So the lowest number recognised is kept as a
    *floor* (in the cursor, ``NEXT:FLOOR``), and looked down to, until ``window`` new
    messages have been taken after it in one run of the source: the broker, holding at
    most ``window`` unacknowledged, has then had its acknowledgement.

    What this cannot tell apart: a flagged delivery never recorded, whose content equals
    a message recorded (and acknowledged) within the numbers looked at, is taken for it
    (see the README for each source).
    """

    def __init__(self, source: str, intake: Intake, window: int) -> None:
        self._source = source
        self._intake = intake
        self._window = window
        self._next = 0
        self._floor: int | None = None
        self._floor_until = 0

    async def load(self) -> None:
        """Go on from the sequence number recorded last (0 for a new source)."""
        cursor = await self._intake.cursor(self._source)
        head, _, floor = (cursor or "").partition(":")
        self._next = decimal(head) or 0
        self._floor = decimal(floor) if floor else None
        if self._floor is not None and self._floor >= self._next:
            self._floor = None  # not from a cursor this class wrote
        self._floor_until = self._next + self._window

    @property
    def cursor(self) -> str:
        """The cursor to record with the events named so far."""
        return str(self._next) if self._floor is None else f"{self._next}:{self._floor}"

    async def assign(self, deliveries: list[tuple[str, bool]]) -> list[str]:
        """Ids for ``(digest, flagged)`` deliveries, in order."""
        earlier: dict[str, str] = {}
        if any(flagged for _, flagged in deliveries):
            low = max(0, self._next - self._window)
            if self._floor is not None:
                low = min(low, self._floor)
            candidates = [
                f"{self._source}:{seq}:{d}"
                for d, flagged in deliveries
                if flagged
                for seq in range(low, self._next)
            ]
            for known in await self._intake.known(candidates):
                earlier.setdefault(known.rsplit(":", 1)[1], known)  # one per digest
        ids: list[str] = []
        for d, flagged in deliveries:
            if flagged and (found := earlier.pop(d, None)) is not None:
                ids.append(found)
                seq = decimal(found.split(":")[-2]) or 0
                if self._floor is None or seq < self._floor:
                    self._floor = seq
                self._floor_until = self._next + self._window
            else:
                ids.append(f"{self._source}:{self._next}:{d}")
                self._next += 1
        if self._floor is not None and self._next >= self._floor_until:
            self._floor = None  # its acknowledgement has reached the broker
        return ids
