"""Drawing a run for the web UI, on the server: the task graph as SVG, the attempts as a
Gantt timeline of HTML bars.

Pure functions from rows to markup: no store, no request. The graph is laid out in
layers: a task's column is its dependency depth (the longest chain of ``needs`` above it),
its row its place in the pipeline's dependency order within that column; edges are curves
from the right side of what a task needs to its left side. Colours come from the CSS
classes ``s-<state>`` of the one stylesheet.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from markupsafe import Markup, escape

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from cued.daemon.store import AttemptRow, InstanceRow

__all__ = ["Bar", "GanttRow", "TaskBox", "gantt", "layers", "summarise", "task_graph"]

# a mapped task shows the state that most needs attention among its instances
_ATTENTION = (
    "running",
    "up_for_retry",
    "waiting",
    "queued",
    "failed",
    "upstream_failed",
    "cancelled",
    "pending",
    "succeeded",
)

_NODE_W, _NODE_H = 164, 44
_COL_W, _ROW_H = _NODE_W + 56, _NODE_H + 18
_PAD = 8
_NAME_CHARS = 20


@dataclass(frozen=True)
class TaskBox:
    """What the graph shows of one task: its state, and for a mapped task the number of
    its instances in each state."""

    name: str
    state: str
    counts: tuple[tuple[str, int], ...] = ()
    mapped: bool = False

    @property
    def caption(self) -> str:
        if not self.mapped:
            return self.state.replace("_", " ")
        total = sum(n for _, n in self.counts)
        done = dict(self.counts).get("succeeded", 0)
        return f"{done}/{total} succeeded"


def summarise(
    order: Sequence[str], mapped: Iterable[str], instances: Iterable[InstanceRow]
) -> dict[str, TaskBox]:
    """One box per task of ``order``: tasks without instances yet are ``pending``.

    :param mapped: the tasks that have ``map`` (their instances are ``name[i]``)
    """
    by_task: dict[str, Counter[str]] = {}
    for inst in instances:
        by_task.setdefault(inst.task, Counter())[inst.state] += 1
    mapped = set(mapped)
    boxes = {}
    for name in order:
        counts = by_task.get(name, Counter())
        state = next((s for s in _ATTENTION if counts.get(s)), "pending")
        if counts and set(counts) == {"succeeded"}:
            state = "succeeded"
        boxes[name] = TaskBox(
            name, state, tuple(sorted(counts.items())), mapped=name in mapped and bool(counts)
        )
    return boxes


def layers(order: Sequence[str], needs: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Tasks in columns by dependency depth; ``order`` must list each task after its needs."""
    depth: dict[str, int] = {}
    for name in order:
        depth[name] = 1 + max((depth[n] for n in needs.get(name, ())), default=-1)
    columns: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name in order:
        columns[depth[name]].append(name)
    return columns


def task_graph(
    order: Sequence[str],
    needs: Mapping[str, Sequence[str]],
    boxes: Mapping[str, TaskBox],
    *,
    link: str = "#t-",
) -> Markup:
    """The pipeline's tasks as an SVG graph, nodes coloured by state, each a link to
    ``link + name`` (the task's attempts on the page)."""
    columns = layers(order, needs)
    where: dict[str, tuple[int, int]] = {}
    for c, column in enumerate(columns):
        for r, name in enumerate(column):
            where[name] = (_PAD + c * _COL_W, _PAD + r * _ROW_H)
    width = _PAD * 2 + max(len(columns) * _COL_W - (_COL_W - _NODE_W), 0)
    rows = max((len(c) for c in columns), default=0)
    height = _PAD * 2 + max(rows * _ROW_H - (_ROW_H - _NODE_H), 0)
    head = (
        f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="task graph">'
        '<defs><marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0L8,4L0,8z"/></marker></defs>'
    )
    out = [head]
    for name in order:
        x2, y2 = where[name]
        y2 += _NODE_H // 2
        for need in needs.get(name, ()):
            x1, y1 = where[need]
            x1, y1 = x1 + _NODE_W, y1 + _NODE_H // 2
            bend = (x2 - x1) // 2
            out.append(
                f'<path class="edge" d="M{x1},{y1}C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}" '
                'marker-end="url(#arrow)"/>'
            )
    for name in order:
        box = boxes.get(name) or TaskBox(name, "pending")
        x, y = where[name]
        label = name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 1] + "\u2026"
        if box.mapped:  # one instance per item: how many items
            label += f" \u00d7{sum(n for _, n in box.counts)}"
        counts = ", ".join(f"{n} {s}" for s, n in box.counts)
        out.append(
            f'<a href="{escape(link + name)}"><g class="node s-{escape(box.state)}" '
            f'data-task="{escape(name)}" data-state="{escape(box.state)}">'
            f"<title>{escape(name)}: {escape(counts or box.state)}</title>"
            f'<rect x="{x}" y="{y}" width="{_NODE_W}" height="{_NODE_H}" rx="6"/>'
            f'<text x="{x + 10}" y="{y + 18}" class="name">{escape(label)}</text>'
            f'<text x="{x + 10}" y="{y + 35}" class="caption">{escape(box.caption)}</text></g></a>'
        )
    out.append("</svg>")
    return Markup("".join(out))


@dataclass(frozen=True)
class Bar:
    """One attempt on the timeline, in percent of the run's time span."""

    attempt: int
    state: str
    left: float
    width: float
    duration_s: float


@dataclass(frozen=True)
class GanttRow:
    key: str
    bars: tuple[Bar, ...]


def gantt(
    attempts: Iterable[AttemptRow], start: float, end: float, *, now: float
) -> tuple[list[GanttRow], float]:
    """Attempts as bars, one row per task instance (in the order they first started),
    scaled to ``start``..``end`` (widened to hold every attempt); an attempt still running
    ends ``now``. Returns the rows and the span in seconds."""
    rows: dict[str, list[AttemptRow]] = {}
    for a in sorted(attempts, key=lambda a: (a.started_at, a.key, a.attempt)):
        rows.setdefault(a.key, []).append(a)
    ends = [a.ended_at if a.ended_at is not None else now for r in rows.values() for a in r]
    firsts = [a.started_at for r in rows.values() for a in r]
    start = min([start, *firsts])
    end = max([end, *ends])
    span = max(end - start, 1e-3)
    out = []
    for key, tries in rows.items():
        bars = []
        for a in tries:
            ended = a.ended_at if a.ended_at is not None else now
            left = (a.started_at - start) / span * 100
            bars.append(
                Bar(
                    a.attempt,
                    a.state,
                    round(left, 2),
                    round(min(max((ended - a.started_at) / span * 100, 0.4), 100 - left), 2),
                    max(ended - a.started_at, 0.0),
                )
            )
        out.append(GanttRow(key, tuple(bars)))
    return out, span
