"""The ``python`` task kind: call a Python function by its import path.

``function = "steps:summarize"`` finds ``steps.py`` beside the config file: the daemon
puts the config's folder first on the import path (as Python puts a script's folder
first for ``python script.py``), so a pipeline's own code needs no install.

What ``cued validate`` can tell of a function without running anything: when its module
is a file beside the config, the file is read (not imported) and must define the name
(:meth:`PythonParams.config_problems`). ``cued validate --strict`` imports the module
and checks the function and its ``args`` (:meth:`PythonParams.environment_problems`).

What the function prints (``sys.stdout``, ``sys.stderr``) and logs (``logging``, INFO and
up) while it runs goes to its attempt's live log. Attempts run concurrently, so the
streams and a root logging handler are routed by a context variable set for the call
(a worker thread inherits it): each attempt gets its own lines, and what is written
outside any attempt goes where it went before.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib
import inspect
import json
import logging
import sys
import threading
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field

from cued.daemon.sdk import ParamProblem, PermanentTaskError, has_template

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from pathlib import Path

    from cued.daemon.sdk import TaskContext

__all__ = ["PythonParams", "PythonTask"]

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
# ``package.module:function``, the entry-point syntax, which also allows ``:Class.method``.
_FUNCTION_PATTERN = rf"^{_IDENTIFIER}(\.{_IDENTIFIER})*:{_IDENTIFIER}(\.{_IDENTIFIER})*$"


class PythonParams(BaseModel):
    """Parameters of a ``python`` task.

    :param function: the function as ``package.module:function``
    :param args: keyword arguments to call it with
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    function: str = Field(pattern=_FUNCTION_PATTERN)
    args: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def template_problems(cls, params: Mapping[str, Any]) -> Iterator[ParamProblem]:
        """A template in ``function``: refused, since event data could then call any
        function of any module (``os:system``)."""
        if has_template(params.get("function")):
            yield ParamProblem(
                ("function",),
                "must be written out, not a template: event data could call any function "
                "(os:system); pass what varies in args",
            )

    @classmethod
    def config_problems(cls, params: Mapping[str, Any], base_dir: Path) -> Iterator[ParamProblem]:
        """A function whose module is a file beside the config but does not define it.

        The file is parsed, not imported (validating runs no code). A module that is not
        beside the config (an installed one) is left to ``validate --strict``.
        """
        function = params.get("function")
        if not isinstance(function, str) or has_template(function) or ":" not in function:
            return
        module, _, qualname = function.partition(":")
        parts = module.split(".")
        if not ((base_dir / f"{parts[0]}.py").is_file() or (base_dir / parts[0]).is_dir()):
            return
        stem = base_dir.joinpath(*parts)
        path = (
            stem.with_suffix(".py") if stem.with_suffix(".py").is_file() else stem / "__init__.py"
        )
        if not path.is_file():
            yield ParamProblem(
                ("function",), f"no module {module!r} beside the config (no {str(path)!r})"
            )
            return
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError) as exc:
            yield ParamProblem(("function",), f"module {module!r} does not parse: {exc}")
            return
        names = _top_level_names(tree)
        name = qualname.split(".", 1)[0]
        if names is not None and name not in names:
            close = difflib.get_close_matches(name, sorted(names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            yield ParamProblem(
                ("function",), f"module {module!r} ({path.name}) defines no {name!r}{hint}"
            )

    @classmethod
    def environment_problems(
        cls, params: Mapping[str, Any], base_dir: Path
    ) -> Iterator[ParamProblem]:
        """What importing the function shows (``validate --strict``): a module that does
        not import, a name it lacks, ``args`` the function does not take."""
        function = params.get("function")
        if not isinstance(function, str) or has_template(function):
            return
        try:
            target = _load(function)
        except PermanentTaskError as exc:
            yield ParamProblem(("function",), str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - the module's own code failed on import
            yield ParamProblem(
                ("function",),
                f"importing {function.partition(':')[0]!r} failed: {type(exc).__name__}: {exc}",
            )
            return
        args = params.get("args")
        names = set(args) if isinstance(args, dict) else set()
        if target.signature is not None:
            try:
                target.signature.bind_partial(**dict.fromkeys(names))
            except TypeError as exc:
                yield ParamProblem(("args",), f"{function!r} does not take these args: {exc}")


class _Capture:
    """One attempt's prints and log records, as lines of its live log."""

    def __init__(self, ctx: TaskContext) -> None:
        self._ctx = ctx
        self._partial: dict[str, str] = {}
        self._lock = threading.Lock()  # prints may come from several threads

    def write(self, stream: str, text: str) -> None:
        with self._lock:
            *lines, rest = (self._partial.pop(stream, "") + text).split("\n")
            if rest:
                self._partial[stream] = rest
        for line in lines:
            self._ctx.log_line(stream, line)

    def end(self) -> None:
        with self._lock:
            partial, self._partial = self._partial, {}
        for stream, rest in partial.items():
            self._ctx.log_line(stream, rest)


_capture: ContextVar[_Capture | None] = ContextVar("cued_python_capture", default=None)


class _Routed:
    """``sys.stdout`` or ``sys.stderr``: an attempt's writes go to its live log, any other
    to the stream it replaced."""

    def __init__(self, name: str, original: Any) -> None:
        self._name = name
        self._original = original

    def write(self, text: str) -> int:
        capture = _capture.get()
        if capture is None:
            return int(self._original.write(text))
        capture.write(self._name, text)
        return len(text)

    def flush(self) -> None:
        if _capture.get() is None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


class _Records(logging.Handler):
    """A root handler: an attempt's log records go to its live log; outside attempts,
    warnings and up go where Python would send them with no handler (stderr)."""

    def emit(self, record: logging.LogRecord) -> None:
        capture = _capture.get()
        if capture is not None:
            try:
                capture.write("log", self.format(record) + "\n")
            except Exception:  # noqa: BLE001 - logging must never fail the function
                self.handleError(record)
        elif (
            logging.lastResort is not None
            and record.levelno >= logging.lastResort.level
            and logging.root.handlers == [self]
        ):
            logging.lastResort.handle(record)


_RECORDS = _Records()
_RECORDS.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))


def _route_output() -> None:
    """Route the streams and log records through :data:`_capture` (again, if someone
    replaced a stream meanwhile)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, _Routed):
            setattr(sys, name, _Routed(name, stream))
    root = logging.getLogger()
    if _RECORDS not in root.handlers:
        root.addHandler(_RECORDS)
        # INFO records reach the handler; left at Python's default, only warnings would
        if root.level == logging.WARNING:
            root.setLevel(logging.INFO)


@dataclass(frozen=True)
class _Target:
    """A function imported once, with what ``execute`` needs to know to call it."""

    function: Callable[..., Any]
    is_async: bool
    wants_ctx: bool
    signature: inspect.Signature | None


class PythonTask:
    """Call a function; succeed with its return value, which must be JSON-serialisable.

    A coroutine function is awaited on the event loop. Any other function runs in a worker
    thread, so a blocking function never stalls the daemon. A function with a parameter
    named ``ctx`` is also given the attempt's
    :class:`~cued.daemon.sdk.kinds.TaskContext`.
    """

    name: ClassVar[str] = "python"
    Params: ClassVar[type[BaseModel]] = PythonParams

    def __init__(self) -> None:
        self._targets: dict[str, _Target] = {}

    async def execute(self, params: PythonParams, ctx: TaskContext) -> Any:
        """Import ``params.function`` (once) and call it with ``params.args``.

        When the attempt is cancelled, a coroutine function is cancelled with it, but a
        function in a worker thread cannot be stopped: the attempt ends at once and the
        thread runs on to completion, its result discarded.

        :param params: the validated parameters
        :param ctx: the attempt's context
        :return: the function's return value
        :raises PermanentTaskError: if the function cannot be imported, does not accept
            ``args``, or returns a value that is not JSON-serialisable
        """
        target = self._targets.get(params.function)
        if target is None:
            # Importing runs the module's top-level code, which may block: keep it off
            # the event loop too.
            target = await anyio.to_thread.run_sync(_load, params.function)
            self._targets[params.function] = target

        kwargs = dict(params.args)
        if target.wants_ctx:
            if "ctx" in kwargs:
                raise PermanentTaskError(
                    f"{params.function!r} is given the task context as 'ctx', so 'ctx' "
                    f"cannot be one of its args"
                )
            kwargs["ctx"] = ctx
        if target.signature is not None:
            try:
                target.signature.bind(**kwargs)
            except TypeError as exc:
                raise PermanentTaskError(
                    f"{params.function!r} cannot be called with args {sorted(params.args)!r}: {exc}"
                ) from exc

        _route_output()
        capture = _Capture(ctx)
        token = _capture.set(capture)
        try:
            result = await _call(target, kwargs)
        finally:
            _capture.reset(token)
            capture.end()

        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PermanentTaskError(
                f"{params.function!r} returned a value that is not JSON-serialisable "
                f"({type(result).__name__}): {exc}"
            ) from exc
        return result


def _top_level_names(tree: ast.Module) -> set[str] | None:
    """The names a module binds at its top level, or ``None`` when it may bind others
    that cannot be read off (``import *``, a module ``__getattr__``, ``globals()``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            return None
        if isinstance(node, ast.Name) and node.id == "globals":
            return None
    for node in tree.body:
        for sub in [node, *_nested_statements(node)]:
            if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(sub.name)
            elif isinstance(sub, ast.Import | ast.ImportFrom):
                names.update((a.asname or a.name).split(".", 1)[0] for a in sub.names)
            elif isinstance(sub, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                for target in targets:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return None if "__getattr__" in names else names


def _nested_statements(node: ast.stmt) -> list[ast.stmt]:
    """Statements under an ``if``/``try``/``with`` at the top level: what they bind is
    bound at the top level too (``try: import x except ImportError: ...``)."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return []
    found: list[ast.stmt] = []
    for field in ("body", "orelse", "finalbody", "handlers"):
        for child in getattr(node, field, []):
            if isinstance(child, ast.ExceptHandler):
                for sub in child.body:
                    found += [sub, *_nested_statements(sub)]
            elif isinstance(child, ast.stmt):
                found += [child, *_nested_statements(child)]
    return found


async def _call(target: _Target, kwargs: dict[str, Any]) -> Any:
    if target.is_async:
        return await target.function(**kwargs)
    # Abandoned on cancellation, so the engine's timeout holds even though the thread
    # cannot be interrupted. The thread runs in a copy of this context: its prints and
    # records still reach this attempt's capture.
    result = await anyio.to_thread.run_sync(
        functools.partial(target.function, **kwargs), abandon_on_cancel=True
    )
    if inspect.isawaitable(result):
        # A sync callable that returns a coroutine (a partial of an async def, a class
        # with an async __call__): run it here, on the loop.
        result = await result
    return result


def _load(path: str) -> _Target:
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as exc:
        missing = isinstance(exc, ModuleNotFoundError) and module_name.startswith(exc.name or "?")
        where = " (neither beside the config file nor installed)" if missing else ""
        raise PermanentTaskError(
            f"Cannot import module {module_name!r} for function {qualname!r}: {exc}{where}"
        ) from exc

    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise PermanentTaskError(
                f"Module {module_name!r} has no attribute {qualname!r}"
            ) from exc
    if not callable(obj):
        raise PermanentTaskError(
            f"{qualname!r} in module {module_name!r} is a {type(obj).__name__}, not a function"
        )

    try:
        signature: inspect.Signature | None = inspect.signature(obj)
    except (TypeError, ValueError):
        signature = None  # Some builtins have none; call them without checking.
    wants_ctx = False
    if signature is not None:
        parameter = signature.parameters.get("ctx")
        wants_ctx = parameter is not None and parameter.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        )
    return _Target(
        function=obj,
        is_async=inspect.iscoroutinefunction(obj),
        wants_ctx=wants_ctx,
        signature=signature,
    )
