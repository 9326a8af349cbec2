"""The configuration file, as pydantic models, with errors that say file, line and key.

``load_config`` checks the whole file and reports every problem at once: TOML syntax,
unknown keys (with a suggestion), bad values and durations, unknown task kinds (listing the
known ones), task parameters checked by each kind's own model, ``needs`` that name no task,
cycles (printed ``a -> b -> a``), unknown pools, and templates that refer to nothing.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from . import graph, templates
from .durations import Duration
from .errors import ConfigError, ConfigProblem
from .registry import task_kinds
from .tomlpos import KeyLines

__all__ = ["Config", "DaemonConfig", "PipelineConfig", "TaskConfig", "load_config", "parse_config"]

TriggerRule = Literal["all_success", "all_done"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DaemonConfig(_Model):
    """The ``[daemon]`` table."""

    state: str = "cued.db"
    """SQLite file, relative to the config file's folder."""
    max_running_tasks: int = Field(256, ge=1)
    pools: dict[str, int] = Field(default_factory=dict)
    backlog_high_water: int = Field(10_000, ge=1)
    """Runs waiting to start at which sources are asked to pause."""
    backlog_low_water: int = Field(5_000, ge=0)
    """Runs waiting to start below which paused sources resume."""
    shutdown_grace: Duration = 30.0
    """At SIGTERM, how long running tasks may take to finish before they are cancelled."""
    synchronous: Literal["full", "normal"] = "full"
    """SQLite's ``synchronous`` setting: ``full`` keeps every commit through a power loss;
    ``normal`` keeps them through a crash of the process but a power loss may lose the
    last ones."""
    python_modules: list[str] = Field(default_factory=list)
    """Modules (importable, or ``.py`` files relative to the config) that define pipelines
    with the Python API."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class TaskConfig(BaseModel):
    """One task of a pipeline: the common keys below, and the kind's own parameters."""

    # Keys that are not common ones are the kind's parameters; each kind's pydantic model
    # checks them (and rejects typos), see ``_check_params``.
    model_config = ConfigDict(frozen=True, extra="allow")

    kind: str
    needs: tuple[str, ...] = ()
    retries: int = Field(0, ge=0)
    retry_backoff: Duration = 1.0
    retry_backoff_max: Duration = 300.0
    timeout: Duration | None = None
    pool: str | None = None
    trigger_rule: TriggerRule = "all_success"
    map: str | None = None
    produces: tuple[str, ...] = ()

    @property
    def params(self) -> dict[str, Any]:
        """The kind's parameters, unrendered."""
        return dict(self.model_extra or {})


class PipelineConfig(_Model):
    """One ``[pipelines.NAME]`` table."""

    max_active_runs: int = Field(16, ge=1)
    inputs: dict[str, Any] = Field(default_factory=dict)
    tasks: dict[str, TaskConfig]


class Config(_Model):
    """A whole configuration file."""

    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    pipelines: dict[str, PipelineConfig] = Field(default_factory=dict)
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def base_dir(self) -> Path:
        """The config file's folder: relative paths in it are relative to this."""
        return self._base_dir

    @property
    def state_path(self) -> Path:
        return self._base_dir / self.daemon.state


_TOP_KEYS = ("daemon", "pipelines")
_TASK_KEYS = tuple(TaskConfig.model_fields)


def load_config(path: str | Path) -> Config:
    """Read and check a configuration file.

    :raises ConfigError: listing every problem, each with file, line and key path
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), None, "", f"cannot read: {exc.strerror}")]) from exc
    return parse_config(text, file=str(path), base_dir=path.resolve().parent)


def parse_config(text: str, *, file: str = "<config>", base_dir: Path | None = None) -> Config:
    """Check configuration text; see :func:`load_config`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(
            [ConfigProblem(file, int(m.group(1)) if m else None, "", f"invalid TOML: {exc}")]
        ) from exc
    base_dir = base_dir or Path.cwd()
    checker = _Checker(file, KeyLines(text))
    if modules := (raw.get("daemon") or {}).get("python_modules"):
        from .dsl import load_modules  # the Python API, only when a config asks for it

        try:
            raw.setdefault("pipelines", {}).update(load_modules(modules, base_dir))
        except (ImportError, ValueError) as exc:
            checker.add(("daemon", "python_modules"), str(exc))
    config = checker.check(raw)
    config._base_dir = base_dir
    return config


class _Checker:
    def __init__(self, file: str, lines: KeyLines) -> None:
        self.file = file
        self.lines = lines
        self.problems: list[ConfigProblem] = []

    def add(self, path: tuple[str | int, ...], message: str) -> None:
        self.problems.append(
            ConfigProblem(self.file, self.lines.line_of(path), ".".join(map(str, path)), message)
        )

    def validate(
        self, model: type[BaseModel], data: Any, at: tuple[str | int, ...], *, known: tuple[str, ...] = ()
    ) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                if templates.has_template(err.get("input")):
                    continue  # checked again, rendered, before each attempt
                self.add((*at, *err["loc"]), _message(err, known or tuple(model.model_fields)))
            return None

    def check(self, raw: dict[str, Any]) -> Config:
        for key in raw:
            if key not in _TOP_KEYS:
                self.add((key,), _unknown(key, _TOP_KEYS))
        daemon = self.validate(DaemonConfig, raw.get("daemon", {}), ("daemon",)) or DaemonConfig()
        if daemon.backlog_low_water >= daemon.backlog_high_water:
            self.add(("daemon", "backlog_low_water"), "must be below backlog_high_water")
        pipelines = raw.get("pipelines", {})
        if not isinstance(pipelines, dict):
            self.add(("pipelines",), "must be a table of pipelines, [pipelines.NAME]")
            pipelines = {}
        for name, pipeline in pipelines.items():
            self.check_pipeline(name, pipeline, daemon)
        if self.problems:
            raise ConfigError(self.problems)
        return Config.model_validate(raw)

    def check_pipeline(self, name: str, raw: Any, daemon: DaemonConfig) -> None:
        at: tuple[str | int, ...] = ("pipelines", name)
        if not isinstance(raw, dict):
            self.add(at, "must be a table")
            return
        head = {k: v for k, v in raw.items() if k != "tasks"}
        self.validate(PipelineConfig, {**head, "tasks": {}}, at)
        tasks_raw = raw.get("tasks")
        if not isinstance(tasks_raw, dict) or not tasks_raw:
            self.add((*at, "tasks"), "a pipeline needs at least one task, [pipelines.NAME.tasks.TASK]")
            return
        tasks: dict[str, TaskConfig] = {}
        for task_name, task_raw in tasks_raw.items():
            task_at = (*at, "tasks", task_name)
            common = {k: v for k, v in task_raw.items() if k in _TASK_KEYS} if isinstance(task_raw, dict) else task_raw
            task = self.validate(TaskConfig, common, task_at)
            if task is None:
                continue
            tasks[task_name] = task = TaskConfig.model_validate(task_raw)
            self.check_kind(task, task_at)
            if task.pool is not None and task.pool not in daemon.pools:
                known = ", ".join(sorted(daemon.pools)) or "none are declared in [daemon] pools"
                self.add((*task_at, "pool"), f"unknown pool {task.pool!r} (known: {known})")
        for task_name, task in tasks.items():
            for need in task.needs:
                if need == task_name:
                    self.add((*at, "tasks", task_name, "needs"), "a task cannot need itself")
                elif need not in tasks_raw:
                    self.add((*at, "tasks", task_name, "needs"), _unknown(need, tuple(tasks_raw), "task"))
        deps = {t: tuple(n for n in c.needs if n in tasks and n != t) for t, c in tasks.items()}
        if cycle := graph.find_cycle(deps):
            self.add((*at, "tasks", cycle[0], "needs"), "cycle: " + " -> ".join(cycle))
            return
        inputs: dict[str, Any] = raw["inputs"] if isinstance(raw.get("inputs"), dict) else {}
        for task_name, task in tasks.items():
            self.check_templates(task_name, task, at, inputs, graph.ancestors(deps, task_name))

    def check_kind(self, task: TaskConfig, at: tuple[str | int, ...]) -> None:
        kinds = task_kinds()
        if task.kind not in kinds:
            self.add((*at, "kind"), f"unknown task kind {task.kind!r} (known: {', '.join(sorted(kinds))})")
            return
        params_model = kinds[task.kind].Params
        self.validate(params_model, task.params, at, known=(*_TASK_KEYS, *params_model.model_fields))

    def check_templates(
        self,
        task_name: str,
        task: TaskConfig,
        at: tuple[str | int, ...],
        inputs: dict[str, Any],
        upstream: set[str],
    ) -> None:
        fields: list[tuple[str, Any]] = list(task.params.items())
        if task.map is not None:
            fields.append(("map", task.map))
        for key, value in fields:
            where = (*at, "tasks", task_name, key)
            try:
                refs = templates.references(value)
            except templates.TemplateProblem as exc:
                self.add(where, str(exc))
                continue
            for ref in refs:
                problem = _reference_problem(ref, key, task, inputs, upstream)
                if problem:
                    self.add(where, problem)


def _reference_problem(
    ref: templates.Reference, key: str, task: TaskConfig, inputs: dict[str, Any], upstream: set[str]
) -> str | None:
    if ref.root == "inputs":
        if ref.name is not None and ref.name not in inputs:
            declared = ", ".join(sorted(inputs)) or "none"
            return f"template refers to input {ref.name!r}, which the pipeline does not declare (declared: {declared})"
    elif ref.root == "tasks":
        if ref.name is not None and ref.name not in upstream:
            return f"template refers to task {ref.name!r}, which is not upstream of this task (add it to needs)"
    elif ref.root == "item":
        if task.map is None or key == "map":
            return "template refers to 'item', which exists only in a task with map"
    elif ref.root == "run":
        if ref.name not in (None, "id", "pipeline"):
            return f"template refers to run.{ref.name}, which does not exist (run.id, run.pipeline do)"
    else:
        return f"template refers to {ref.root!r}, which does not exist (use inputs, tasks, item or run)"
    return None


def _unknown(name: str, known: tuple[str, ...], what: str = "key") -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
    return f"unknown {what} {name!r}{hint}"


def _message(err: Any, known: tuple[str, ...]) -> str:
    if err["type"] == "extra_forbidden":
        return _unknown(str(err["loc"][-1]), known)
    if err["type"] == "missing":
        return "required key is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{msg} (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) and "got" not in msg else msg
