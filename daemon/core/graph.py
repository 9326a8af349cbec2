"""Pure functions over task dependency graphs: ``{task: (tasks it needs, ...)}``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["ancestors", "descendants", "find_cycle", "topological_order"]


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle as ``[a, b, a]`` (each needs the next), or ``None`` if the graph is acyclic."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(deps, white)
    for start in deps:
        if colour[start] != white:
            continue
        # iterative DFS: a 1,000-task chain must not hit the recursion limit
        path: list[str] = [start]
        stack = [iter(deps[start])]
        colour[start] = grey
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                colour[path.pop()] = black
                continue
            if colour.get(nxt, black) == grey:
                return [*path[path.index(nxt) :], nxt]
            if colour.get(nxt) == white:
                colour[nxt] = grey
                path.append(nxt)
                stack.append(iter(deps[nxt]))
    return None


def ancestors(deps: Mapping[str, Sequence[str]], task: str) -> set[str]:
    """Every task that ``task`` needs, directly or through others."""
    seen: set[str] = set()
    todo = list(deps.get(task, ()))
    while todo:
        t = todo.pop()
        if t not in seen:
            seen.add(t)
            todo.extend(deps.get(t, ()))
    return seen


def descendants(deps: Mapping[str, Sequence[str]], tasks: set[str]) -> set[str]:
    """Every task downstream of any of ``tasks`` (not including them)."""
    children: dict[str, list[str]] = {}
    for t, needs in deps.items():
        for n in needs:
            children.setdefault(n, []).append(t)
    seen: set[str] = set()
    todo = [c for t in tasks for c in children.get(t, ())]
    while todo:
        t = todo.pop()
        if t not in seen:
            seen.add(t)
            todo.extend(children.get(t, ()))
    return seen


def topological_order(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Tasks in an order where each comes after what it needs (ties by declaration order)."""
    order: list[str] = []
    done: set[str] = set()
    remaining = list(deps)
    while remaining:
        ready = [t for t in remaining if all(n in done for n in deps[t])]
        if not ready:
            raise ValueError("graph has a cycle")
        order.extend(ready)
        done.update(ready)
        remaining = [t for t in remaining if t not in done]
    return order
