"""Pipelines written in Python: decorators in a module that the config names.

```python
# pipelines.py, named in config.toml: [daemon] python_modules = ["pipelines.py"]
from cued.daemon.dsl import pipeline

etl = pipeline("etl", inputs={"day": "today"}, max_active_runs=8)

@etl.task(retries=3, timeout="30s")
async def extract(day: str) -> dict:        # a parameter named after an input gets it
    ...

@etl.task(needs=[extract], pool="db")
def load(extract: dict) -> None:            # ... and one named after a needed task, its output
    ...

@etl.task(map=extract)                      # one instance per item of extract's output
async def each(item: str) -> str: ...
```

Each decorated function becomes a task of kind ``python``, so it is checked, scheduled,
retried and recorded exactly like one written in TOML: the decorators only write config.
Sync functions run in a worker thread, async ones on the event loop.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

__all__ = ["Pipeline", "load_modules", "pipeline"]

F = TypeVar("F", bound="Callable[..., Any]")

_PIPELINES: dict[str, Pipeline] = {}


class Pipeline:
    """A pipeline being defined in Python; see the module docstring."""

    def __init__(self, name: str, *, inputs: dict[str, Any] | None = None, **options: Any) -> None:
        self.name = name
        self.inputs = dict(inputs or {})
        self.options = options
        self.tasks: dict[str, dict[str, Any]] = {}

    def task(
        self,
        fn: F | None = None,
        *,
        name: str | None = None,
        needs: Sequence[Callable[..., Any] | str] = (),
        map: Callable[..., Any] | str | None = None,
        **options: Any,
    ) -> Any:
        """Make ``fn`` a task of this pipeline; ``options`` are the task keys of the config
        (``retries``, ``timeout``, ``pool``, ``trigger_rule``, ...)."""

        def register(fn: F) -> F:
            task_name = name or fn.__name__
            need_names = [n if isinstance(n, str) else _task_name(n) for n in needs]
            if map is not None and not isinstance(map, str) and _task_name(map) not in need_names:
                need_names.append(_task_name(map))  # mapping over a task's output needs it
            args: dict[str, str] = {}
            for param in inspect.signature(fn).parameters:
                if param == "ctx":
                    continue  # the python kind passes the task context itself
                if param == "item" and map is not None:
                    args[param] = "{{ item }}"
                elif param in need_names:
                    args[param] = f"{{{{ tasks.{param}.output }}}}"
                elif param in self.inputs:
                    args[param] = f"{{{{ inputs.{param} }}}}"
            spec: dict[str, Any] = {
                "kind": "python",
                "function": f"{fn.__module__}:{fn.__qualname__}",
                "args": args,
                **options,
            }
            if need_names:
                spec["needs"] = need_names
            if map is not None:
                spec["map"] = (
                    map if isinstance(map, str) else f"{{{{ tasks.{_task_name(map)}.output }}}}"
                )
            self.tasks[task_name] = spec
            fn.__cued_task__ = task_name  # type: ignore[attr-defined]
            return fn

        return register(fn) if fn is not None else register

    def as_config(self) -> dict[str, Any]:
        return {**self.options, "inputs": self.inputs, "tasks": self.tasks}


def pipeline(name: str, *, inputs: dict[str, Any] | None = None, **options: Any) -> Pipeline:
    """Define a pipeline named ``name``; ``options`` are the pipeline keys of the config."""
    p = _PIPELINES[name] = Pipeline(name, inputs=inputs, **options)
    return p


def _task_name(fn: Callable[..., Any]) -> str:
    task_name = getattr(fn, "__cued_task__", None)
    if task_name is None:
        raise ValueError(
            f"{fn.__qualname__!r} is not a task: decorate it with @pipeline.task first"
        )
    return str(task_name)


def load_modules(modules: Sequence[str], base_dir: Path) -> dict[str, dict[str, Any]]:
    """Import the modules (``pkg.mod``, or ``file.py`` relative to the config's folder) and
    return the pipelines they define, as config tables.

    :raises ImportError: naming the module that cannot be imported and why
    """
    found: dict[str, dict[str, Any]] = {}
    for module in modules:
        name = module
        if module.endswith(".py"):
            path = (base_dir / module).resolve()
            if not path.is_file():
                raise ImportError(f"python module file {str(path)!r} does not exist")
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))
            name = path.stem
        before = set(_PIPELINES)
        try:
            imported = importlib.import_module(name)
        except Exception as exc:
            raise ImportError(
                f"cannot import python module {module!r}: {type(exc).__name__}: {exc}"
            ) from exc
        for pname, p in _PIPELINES.items():
            if pname not in before or any(
                t["function"].startswith(imported.__name__ + ":") for t in p.tasks.values()
            ):
                found[pname] = p.as_config()
    return found
