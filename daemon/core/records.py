"""Records: dataclasses the type checker holds immutable, built at the cost of plain ones.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (its own
``__setattr__`` refuses), about nine times the cost of a plain store into a slot: a run's
row of 17 fields took 2.2 µs to build, against 0.25 µs unfrozen (``timeit``, this
project's machine). The rows, commands and events of a run are built several times per
run on the hot path, and took ~13 % of the event loop's time in a Kafka flood (py-spy;
BENCHMARKS.md, "Records"). They are :func:`record` classes: frozen to mypy (assigning a
field is a type error, which ``make check`` catches), slotted dataclasses at run time,
equal and hashable by their fields as frozen ones are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

__all__ = ["record"]

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[_T]) -> type[_T]:
    """``cls`` as a record (see the module's documentation)."""
    return dataclass(slots=True, unsafe_hash=True)(cls)
