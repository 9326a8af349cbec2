"""Which fields of an event a trigger's expressions read, and whether an event has them:
pure functions, for ``cued triggers test`` to catch a misspelt field.

``event.data.order.total`` and ``event.data['order']['total']`` both read the path
``("order", "total")`` of ``event.data``; a path whose parts are not constants
(``event.data[inputs.key]``) is read only up to the first part that is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jinja2 import nodes

from cued.daemon.core.templates import has_template, parse, when_expression
from cued.daemon.core.untrusted import decimal

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["data_paths", "has_path", "when_data_paths"]


def when_data_paths(when: str) -> list[tuple[str, ...]]:
    """The paths of ``event.data`` a ``when`` condition reads, in order, each once.

    :raises TemplateProblem: if it does not parse
    """
    return data_paths(when_expression(when))


def data_paths(value: Any) -> list[tuple[str, ...]]:
    """The paths of ``event.data`` the templates inside ``value`` read, each once, longest
    only (``event.data.a.b`` reads ``("a", "b")``, not also ``("a",)``).

    :raises TemplateProblem: if a template does not parse
    """
    found: dict[tuple[str, ...], None] = {}
    for text in _strings(value):
        if not has_template(text):
            continue
        tree = parse(text)
        # ``event.data.get('x')`` calls a method: ``get`` is not a field
        methods = {id(call.node) for call in tree.find_all(nodes.Call)}
        inner: set[int] = set()
        # outermost first: find_all walks parents before children
        for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
            if id(node) in inner:
                continue
            chain = _chain(node, inner)
            if chain is not None and id(node) in methods:
                chain = chain[:-1]
            if chain is not None and len(chain) > 2 and chain[:2] == ("event", "data"):
                found.setdefault(chain[2:])
    return list(found)


def has_path(data: Any, path: tuple[str, ...]) -> bool:
    """Whether ``data`` has ``path``: each part a key of the dict before it (a list's
    items by their index)."""
    for part in path:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and (index := decimal(part)) is not None and index < len(data):
            data = data[index]
        else:
            return False
    return True


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _chain(node: nodes.Node, inner: set[int]) -> tuple[str, ...] | None:
    """``event.data.a['b']`` as ``("event", "data", "a", "b")``, marking the lookups inside
    it as seen; ``None`` if it does not start at a name. A part that is not a constant
    ends the path before it."""
    parts: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem):
            arg = node.arg
            if isinstance(arg, nodes.Const) and isinstance(arg.value, str | int):
                parts.append(str(arg.value))
            else:
                parts.clear()  # a computed key: what is read past it is unknown
            node = node.node
        elif isinstance(node, nodes.Name):
            parts.append(node.name)
            return tuple(reversed(parts))
        else:
            return None
        inner.add(id(node))
