"""Task functions (for the ``python`` kind) that record what the runner did with them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import anyio


@dataclass
class Probe:
    """What the probe tasks of one test saw: calls in order, and the most in flight at once."""

    calls: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    by_group: Counter[str] = field(default_factory=Counter)
    max_by_group: Counter[str] = field(default_factory=Counter)
    barrier: int = 0
    arrived: int = 0
    all_arrived: anyio.Event = field(default_factory=anyio.Event)
    entered: anyio.Event = field(default_factory=anyio.Event)
    released: anyio.Event = field(default_factory=anyio.Event)
    """Calls made with ``until_released`` hold their slot until the test sets this."""


PROBE = Probe()


def reset(barrier: int = 0) -> Probe:
    global PROBE
    PROBE = Probe(barrier=barrier)
    return PROBE


async def record(
    name: str,
    hold_s: float = 0.0,
    group: str = "",
    fail: bool = False,
    until_released: bool = False,
) -> str:
    """Count a call and hold a slot for ``hold_s``; with a barrier set, hold until that many
    calls are in flight at once (which only happens if they really run concurrently); with
    ``until_released``, hold until the test sets ``released``."""
    p = PROBE
    p.calls.append(name)
    p.counts[name] += 1
    p.in_flight += 1
    p.entered.set()
    p.max_in_flight = max(p.max_in_flight, p.in_flight)
    if group:
        p.by_group[group] += 1
        p.max_by_group[group] = max(p.max_by_group[group], p.by_group[group])
    try:
        if p.barrier:
            p.arrived += 1
            if p.arrived >= p.barrier:
                p.all_arrived.set()
            await p.all_arrived.wait()
        if until_released:
            await p.released.wait()
        await anyio.sleep(hold_s)
    finally:
        p.in_flight -= 1
        if group:
            p.by_group[group] -= 1
    if fail:
        raise RuntimeError(f"{name} failed as asked")
    return name
