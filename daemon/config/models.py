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
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from cued.daemon.config.alerting import ALERT_KINDS, AlertConfig
from cued.daemon.config.durations import Duration
from cued.daemon.config.environment import EnvName
from cued.daemon.config.nodes import NodeName
from cued.daemon.config.registry import source_kinds, task_kinds
from cued.daemon.config.secrets import remember, resolve_secret
from cued.daemon.config.state import (
    DEFAULT_LOG_LEVEL,
    DEFAULT_STATE,
    DEFAULT_SYNCHRONOUS,
    LogLevel,
    Synchronous,
    check_database_url,
    check_state,
    database_password,
    is_database_url,
    shown_url,
)

#: ``[daemon] state``: a SQLite file's path, a ``postgresql://`` URL, or ``env:NAME`` /
#: ``file:PATH`` holding such a URL.
StateSetting = Annotated[str, AfterValidator(check_state)]
from cued.daemon.config.tomlpos import KeyLines
from cued.daemon.core import graph, templates
from cued.daemon.core.assets import asset_of
from cued.daemon.core.loopback import is_loopback_listen
from cued.daemon.core.priorities import DEFAULT_PRIORITY, priority_of
from cued.daemon.core.waits import EVENT_FIELDS
from cued.daemon.errors import ConfigError, ConfigProblem, CuedError

__all__ = [
    "BatchConfig",
    "CancelOnConfig",
    "Config",
    "DaemonConfig",
    "DebounceConfig",
    "HttpConfig",
    "PipelineConfig",
    "RetentionConfig",
    "SourceConfig",
    "TaskConfig",
    "TelemetryConfig",
    "ThrottleConfig",
    "TriggerConfig",
    "load_config",
    "parse_config",
]

TriggerRule = Literal["all_success", "all_done"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DaemonConfig(_Model):
    """The ``[daemon]`` table."""

    state: StateSetting = DEFAULT_STATE
    """Where the state lives: a SQLite file (relative to the config file's folder), or a
    PostgreSQL database, ``postgresql://USER@HOST/DATABASE`` (or ``env:NAME`` /
    ``file:PATH`` holding that URL); see :mod:`cued.daemon.config.state`."""
    max_running_tasks: int = Field(256, ge=1)
    pools: dict[str, int] = Field(default_factory=dict)
    backlog_high_water: int = Field(10_000, ge=1)
    """Runs waiting to start at which sources are asked to pause."""
    backlog_low_water: int = Field(5_000, ge=0)
    """Runs waiting to start below which paused sources resume."""
    backlog_window: int = Field(1_000, ge=1)
    """New runs of a pipeline waiting to start that are kept in memory, ready; those
    behind them wait in the state only (their ids in memory) until their turn nears."""
    shutdown_grace: Duration = 30.0
    """At SIGTERM, how long running tasks may take to finish before they are cancelled."""
    synchronous: Synchronous = DEFAULT_SYNCHRONOUS
    """SQLite's ``synchronous`` setting (PostgreSQL's durability is the server's own):
    ``full`` keeps every commit through a power loss;
    ``normal`` keeps them through a crash of the process but a power loss may lose the
    last ones."""
    python_modules: list[str] = Field(default_factory=list)
    """Modules (importable, or ``.py`` files relative to the config) that define pipelines
    with the Python API."""
    log_level: LogLevel = DEFAULT_LOG_LEVEL
    task_env: list[EnvName] = Field(default_factory=list)
    """Variables of the daemon's environment that every program a task starts gets,
    besides the base (PATH, HOME, LANG, ...): nothing else of it is passed on."""
    task_log_lines: int = Field(10_000, ge=1)
    """Lines of live log (output, log records, requests) an attempt keeps: its latest;
    older ones are dropped, and a marker line says how many."""
    task_log_bytes: int = Field(1024 * 1024, ge=1)
    """Bytes of live log an attempt keeps at most (its latest lines)."""
    task_log_flush: Duration = Field(0.5, gt=0)
    """How often the live log lines written meanwhile are stored (in one batch)."""
    node: NodeName | None = None
    """This daemon's name among the nodes sharing a PostgreSQL state (``cued nodes``);
    by default the host's name and a short random suffix, new at each start."""
    lease: Duration = Field(5.0, ge=0.5)
    """How long a node's runs stay its own without a renewal of its lease (renewed every
    third of it): a node dead for this long has its runs adopted by the others."""
    control_group: str | None = None
    """An OS group whose members may use the control socket (the CLI), as the daemon's own
    user and root may; the socket's folder and the socket get this group. One group: a
    file has one."""


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
    deadline: Duration | None = None
    """An SLA: still unfinished this long after the run was created raises
    ``deadline_missed``, once."""

    @property
    def params(self) -> dict[str, Any]:
        """The kind's parameters, unrendered."""
        return dict(self.model_extra or {})


class CancelOnConfig(_Model):
    """One entry of a pipeline's ``cancel_on``: an event of ``source`` for which ``when``
    holds cancels the pipeline's unfinished runs for which ``match`` holds."""

    source: str
    when: str | None = None
    """Over ``event``; none: every event of the source."""
    match: str | None = None
    """Over ``event`` and ``run`` (``run.inputs``, ``run.id``); none: every unfinished run."""


class PipelineConfig(_Model):
    """One ``[pipelines.NAME]`` table."""

    max_active_runs: int = Field(16, ge=1)
    inputs: dict[str, Any] = Field(default_factory=dict)
    deadline: Duration | None = None
    """An SLA: a run still unfinished this long after it was created raises
    ``deadline_missed``, once."""
    when_paused: Literal["queue", "skip"] = "queue"
    """While the pipeline is paused (``cued pause``), its new runs are recorded and wait
    until it is resumed (``queue``), or are recorded as ``skipped`` and never start
    (``skip``)."""
    cancel_on: tuple[CancelOnConfig, ...] = ()
    """Events that cancel the pipeline's unfinished runs (see :class:`CancelOnConfig`)."""
    tasks: dict[str, TaskConfig]


class HttpConfig(_Model):
    """The ``[http]`` table: the daemon's HTTP server (webhooks, and the API)."""

    listen: str = "127.0.0.1:8080"
    """``host:port``; an empty string turns the server off. With no ``[auth.users]``, a
    loopback address only (127.0.0.1, [::1], localhost)."""
    max_body_bytes: int = Field(1024 * 1024, ge=1)
    """The largest request body the API and UI take (and the control socket): a larger
    one is answered ``413`` before it is read or its token checked. A webhook's own
    ``max_body_bytes`` applies to its path."""


class SourceConfig(BaseModel):
    """One ``[sources.NAME]`` table: ``kind``, and the source kind's own keys."""

    model_config = ConfigDict(frozen=True, extra="allow")

    kind: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _check_priority(value: int | str) -> int | str:
    """A priority as written: a number from 0 to 9, or a template that renders one."""
    if isinstance(value, str) and templates.has_template(value):
        return value  # rendered on each event, and checked then
    return priority_of(value)


class ConcurrencyConfig(_Model):
    """A trigger's ``concurrency`` table: runs of one key active at once."""

    limit: int = Field(ge=1)
    """Active runs per key (started, not yet ended or parked); more wait for their key."""


class DebounceConfig(_Model):
    """A trigger's ``debounce``: one run per burst of a key, ``period`` after its last
    event (trailing edge)."""

    period: Duration = Field(gt=0)
    keep: Literal["first", "last", "all"] = "last"
    """Whose data the run's inputs see: the burst's first event, its last, or all of them
    (``event.batch``)."""


class ThrottleConfig(_Model):
    """A trigger's ``throttle``: at most ``limit`` runs per ``period`` of a key."""

    limit: int = Field(ge=1)
    period: Duration = Field(gt=0)
    excess: Literal["delay", "drop"] = "delay"
    """What becomes of a run past the limit: held until a slot is free (in order), or
    dropped (recorded on its event)."""


class BatchConfig(_Model):
    """A trigger's ``batch``: one run per ``size`` events of a key, or ``timeout`` after
    the first event of a batch, whichever comes first."""

    size: int | None = Field(None, ge=1)
    timeout: Duration | None = Field(None, gt=0)


class TriggerConfig(_Model):
    """One ``[[triggers]]`` entry: events of ``source`` that satisfy ``when`` start
    ``pipeline`` with ``inputs``."""

    source: str
    """A source's name, or ``asset:NAME`` for runs that produce the asset ``NAME``."""
    pipeline: str
    name: str | None = None
    """Names the trigger in events and dedupe keys (default ``SOURCE->PIPELINE``)."""
    when: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    dedupe: str | None = None
    """A business key: an event whose key started a run within ``dedupe_window`` starts
    nothing."""
    dedupe_window: Duration = 86400.0
    key: str | None = None
    """A template: what flow control (debounce, throttle, concurrency) counts by; without it, one key for the whole trigger."""
    concurrency: ConcurrencyConfig | None = None
    """How many runs of one key may be active at once (those over it wait, cold)."""
    priority: Annotated[int | str, AfterValidator(_check_priority)] = DEFAULT_PRIORITY
    """Who starts first when runs wait for a slot: 0 to 9, or a template over the event
    that renders one (``{{ 9 if event.data.vip else 5 }}``)."""
    debounce: DebounceConfig | None = None
    """One run per quiet ``period`` of a key (the window restarts at each event)."""
    throttle: ThrottleConfig | None = None
    """At most ``limit`` runs per ``period`` of a key."""
    batch: BatchConfig | None = None
    """One run per ``size`` events of a key, or per ``timeout`` from its first."""

    @property
    def flow_controlled(self) -> bool:
        """Whether events may be held (debounce, throttle or batch) rather than start a
        run at once."""
        return self.debounce is not None or self.throttle is not None or self.batch is not None

    @property
    def sees_batch(self) -> bool:
        """Whether the trigger's runs see ``event.batch`` (a batch, or debounce ``keep =
        "all"``)."""
        return self.batch is not None or (self.debounce is not None and self.debounce.keep == "all")

    @property
    def ref(self) -> str:
        """What names the trigger: its ``name``, or ``SOURCE->PIPELINE``."""
        return self.name or f"{self.source}->{self.pipeline}"


class UserConfig(_Model):
    """One ``[auth.users.NAME]`` table: an API user."""

    token: str
    """``env:NAME``, ``file:PATH`` or the token itself (keep that out of version control)."""
    roles: tuple[Literal["viewer", "operator", "approver"], ...] = ("viewer",)
    groups: list[str] = Field(default_factory=list)
    """For approval gates whose approvers name ``group:NAME``."""


_DAY_S = 86400.0


class RetentionConfig(_Model):
    """The ``[retention]`` table: how long what is finished is kept. An age of ``0`` keeps
    it for ever (deleting things the moment they finish would be of no use to anyone).
    Dedupe keys need no age: each goes once past its trigger's ``dedupe_window``."""

    runs: Duration = 30 * _DAY_S
    """Finished runs (succeeded, failed, cancelled, skipped), by when they ended, with their task
    instances, attempts, approval gates and decisions. Runs not finished, or waiting at
    an approval gate, are kept whatever their age."""
    events: Duration = 30 * _DAY_S
    """Events, by when they were received (a run they started keeps their id)."""
    alerts: Duration = 7 * _DAY_S
    """Alerts sent, or given up on, by when they were raised."""
    prune_every: Duration = Field(300.0, gt=0)
    """How often the daemon prunes (and once when it starts)."""


class TelemetryConfig(_Model):
    """The ``[telemetry]`` table: traces (OpenTelemetry, ``pip install cued[otel]``) sent
    over OTLP/HTTP. Without the table the daemon makes no spans; with it and without the
    extra installed, it warns once and runs on without them."""

    enabled: bool = True
    """``false`` keeps the table but makes no spans."""
    otlp_endpoint: str | None = Field(None, pattern=r"^https?://[^\s]+$")
    """The collector's OTLP/HTTP address, ``http://127.0.0.1:4318`` (spans go to its
    ``/v1/traces``); unset, the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` variable, else ``http://localhost:4318``."""
    service_name: str = Field("cued", min_length=1)
    """The ``service.name`` of the spans."""
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    """The share of new traces kept; a trace a caller started follows the caller's
    choice (its ``traceparent``'s sampled flag)."""


class AuthConfig(_Model):
    """The ``[auth]`` table."""

    users: dict[str, UserConfig] = Field(default_factory=dict)

    def groups_of(self, user: str) -> frozenset[str]:
        """The groups ``user`` belongs to (none if there is no such user): who may decide
        an approval gate whose approvers name ``group:NAME``."""
        found = self.users.get(user)
        return frozenset(found.groups) if found else frozenset()


class Config(_Model):
    """A whole configuration file."""

    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    pipelines: dict[str, PipelineConfig] = Field(default_factory=dict)
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    triggers: list[TriggerConfig] = Field(default_factory=list)
    alerts: dict[str, AlertConfig] = Field(default_factory=dict)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    telemetry: TelemetryConfig | None = None
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _warnings: tuple[ConfigProblem, ...] = PrivateAttr(default=())
    _text: str | None = PrivateAttr(default=None)
    _file: Path | None = PrivateAttr(default=None)

    @property
    def base_dir(self) -> Path:
        """The config file's folder: relative paths in it are relative to this."""
        return self._base_dir

    @property
    def warnings(self) -> tuple[ConfigProblem, ...]:
        """What the check found that does not make the configuration invalid (a shell
        command whose template is not quoted, say)."""
        return self._warnings

    @property
    def text(self) -> str | None:
        """The text it was read from (``None`` if it was built in code): kept as a
        config version, and compared at a reload."""
        return self._text

    @property
    def file(self) -> Path | None:
        """The file it was read from (``None`` if it was not read from one): a reload
        reads it again."""
        return self._file

    @property
    def state_in_database(self) -> bool:
        """Whether the state is in a PostgreSQL database (else in a SQLite file)."""
        state = self.daemon.state
        return is_database_url(state) or state.startswith(("env:", "file:"))

    @property
    def state_path(self) -> Path:
        """The state file; with the state in a database, the name that the daemon's local
        files take, beside the config: its control socket (``postgresql.d/control.sock``)
        and its lock (``postgresql.lock``)."""
        if self.state_in_database:
            return self._base_dir / "postgresql"
        return self._base_dir / self.daemon.state

    @property
    def state_shown(self) -> str:
        """Where the state lives, as messages show it (a database's URL without its
        password, or the ``env:NAME`` it comes from)."""
        if self.state_in_database:
            return shown_url(self.daemon.state)
        return str(self.state_path)

    def state_location(self) -> str:
        """Where the store is: the state file's path, or the database's URL (``env:`` and
        ``file:`` resolved; its password remembered for redaction).

        :raises CuedError: if the variable is unset, the file unreadable, or what they
            hold is no ``postgresql://`` URL
        """
        if not self.state_in_database:
            return str(self.state_path)
        # a URL written out is no secret but its password (the log names the database)
        url = resolve_secret(
            self.daemon.state, self._base_dir, what="[daemon] state", literal_is_secret=False
        )
        if (password := database_password(url)) is not None:
            remember(password)
        if not is_database_url(url):
            raise CuedError(f"[daemon] state {self.daemon.state!r} must hold a postgresql:// URL")
        if (problem := check_database_url(url)) is not None:
            raise CuedError(f"[daemon] state {self.daemon.state!r} {problem}")
        return url


def _keys(model: type[BaseModel]) -> tuple[str, ...]:
    """The keys a table for ``model`` may hold: a field's alias where it has one (the http
    kind's ``json`` is stored as ``json_body``), since models are validated by alias."""
    return tuple(field.alias or name for name, field in model.model_fields.items())


_TOP_KEYS = (
    "daemon",
    "http",
    "auth",
    "pipelines",
    "sources",
    "triggers",
    "alerts",
    "retention",
    "telemetry",
)
_TASK_KEYS = _keys(TaskConfig)


def load_config(path: str | Path) -> Config:
    """Read and check a configuration file.

    :raises ConfigError: listing every problem, each with file, line and key path
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(str(path), None, "", f"cannot read: {exc.strerror}")]
        ) from exc
    config = parse_config(text, file=str(path), base_dir=path.resolve().parent)
    config._file = path.absolute()
    return config


def parse_config(text: str, *, file: str = "<config>", base_dir: Path | None = None) -> Config:
    """Check configuration text; see :func:`load_config`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib says "(at line L, column C)", or "(at end of document)" when the text
        # stops inside something left open, which is the last line
        m = re.search(r"line (\d+)", str(exc))
        line = int(m.group(1)) if m else max(1, len(text.splitlines()))
        raise ConfigError([ConfigProblem(file, line, "", f"invalid TOML: {exc}")]) from exc
    base_dir = base_dir or Path.cwd()
    checker = _Checker(file, KeyLines(text), base_dir)
    daemon = raw.get("daemon")
    if isinstance(daemon, dict) and (modules := daemon.get("python_modules")):
        from cued.daemon.dsl import load_modules  # the Python API, only when a config asks for it

        try:
            raw.setdefault("pipelines", {}).update(load_modules(modules, base_dir))
        except (ImportError, ValueError) as exc:
            checker.add(("daemon", "python_modules"), str(exc))
    config = checker.check(raw)
    config._base_dir = base_dir
    config._warnings = tuple(checker.warnings)
    config._text = text
    return config


class _Checker:
    def __init__(self, file: str, lines: KeyLines, base_dir: Path) -> None:
        self.file = file
        self.lines = lines
        self.base_dir = base_dir
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    def add(self, path: tuple[str | int, ...], message: str, *, warning: bool = False) -> None:
        problem = ConfigProblem(
            self.file, self.lines.line_of(path), ".".join(map(str, path)), message, warning
        )
        (self.warnings if warning else self.problems).append(problem)

    def validate(
        self,
        model: type[BaseModel],
        data: Any,
        at: tuple[str | int, ...],
        *,
        known: tuple[str, ...] = (),
        rendered: bool = False,
    ) -> Any:
        """``data`` as a ``model``, or ``None`` after adding a problem for each error.

        :param known: the keys to suggest for an unknown one; by default the model's
        :param rendered: ``data`` is rendered before each attempt and checked again then,
            so a template may stand where a value of another type is expected
        """
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                # A template's value is checked when it is rendered; an unknown key is
                # wrong whatever its value holds.
                if (
                    rendered
                    and err["type"] != "extra_forbidden"
                    and templates.has_template(err.get("input"))
                ):
                    continue
                # ``loc`` names fields by alias, as written, since models validate by alias
                self.add((*at, *err["loc"]), _message(err, known or _keys(model)))
            return None

    def check(self, raw: dict[str, Any]) -> Config:
        for key in raw:
            if key not in _TOP_KEYS:
                self.add((key,), _unknown(key, _TOP_KEYS))
        daemon_raw = raw.get("daemon", {})
        daemon = self.validate(DaemonConfig, daemon_raw, ("daemon",))
        if daemon is not None and daemon.backlog_low_water >= daemon.backlog_high_water:
            self.add(("daemon", "backlog_low_water"), "must be below backlog_high_water")
        # The pool names as written, so that a mistake elsewhere in [daemon] (or in a pool's
        # size) does not make every task's pool look unknown as well
        pools_raw = daemon_raw.get("pools") if isinstance(daemon_raw, dict) else None
        pools = set(pools_raw) if isinstance(pools_raw, dict) else set()
        pipelines = raw.get("pipelines", {})
        if not isinstance(pipelines, dict):
            self.add(("pipelines",), "must be a table of pipelines, [pipelines.NAME]")
            pipelines = {}
        sources = raw.get("sources", {})
        for name, pipeline in pipelines.items():
            self.check_pipeline(name, pipeline, pools)
            self.check_waits(name, pipeline, sources if isinstance(sources, dict) else {})
        self.check_calls(pipelines)
        self.validate(RetentionConfig, raw.get("retention", {}), ("retention",))
        if "telemetry" in raw:
            self.validate(TelemetryConfig, raw["telemetry"], ("telemetry",))
        http = self.validate(HttpConfig, raw.get("http", {}), ("http",))
        auth = self.validate(AuthConfig, raw.get("auth", {}), ("auth",))
        if (
            http is not None
            and auth is not None
            and not auth.users  # no token needed: the API must be this machine's only
            and http.listen
            and not is_loopback_listen(http.listen)
        ):
            self.add(
                ("http", "listen"),
                f"{http.listen!r} is not a loopback address, and with no [auth.users] the "
                "API and UI take no token: listen on 127.0.0.1, [::1] or localhost, or "
                "add [auth.users.NAME] with tokens",
            )
        if not isinstance(sources, dict):
            self.add(("sources",), "must be a table of sources, [sources.NAME]")
            sources = {}
        for name, source in sources.items():
            self.check_source(name, source)
        triggers = raw.get("triggers", [])
        if not isinstance(triggers, list):
            self.add(("triggers",), "must be an array of tables, [[triggers]]")
            triggers = []
        for index, trigger in enumerate(triggers):
            self.check_trigger(index, trigger, sources, pipelines)
        alerts = raw.get("alerts", {})
        if not isinstance(alerts, dict):
            self.add(("alerts",), "must be a table of alert channels, [alerts.NAME]")
            alerts = {}
        for name, alert in alerts.items():
            self.check_alert(name, alert, pipelines)
        if self.problems:
            raise ConfigError(self.problems, self.warnings)
        return Config.model_validate(raw)

    def check_calls(self, pipelines: dict[str, Any]) -> None:
        """Tasks of kind ``pipeline``: the pipeline each runs exists and declares the
        inputs it is given, and no pipelines run each other in a cycle."""
        calls: dict[str, list[str]] = {}
        where: dict[tuple[str, str], tuple[str | int, ...]] = {}
        for name, raw in pipelines.items():
            tasks = raw.get("tasks") if isinstance(raw, dict) else None
            for task_name, task in (tasks if isinstance(tasks, dict) else {}).items():
                if not isinstance(task, dict) or task.get("kind") != "pipeline":
                    continue
                at = ("pipelines", name, "tasks", task_name)
                child = task.get("pipeline")
                if not isinstance(child, str):
                    continue  # the kind's parameters say what is wrong
                child_raw = pipelines.get(child)
                if not isinstance(child_raw, dict):
                    self.add((*at, "pipeline"), _unknown(child, tuple(pipelines), "pipeline"))
                    continue
                calls.setdefault(name, []).append(child)
                where.setdefault((name, child), (*at, "pipeline"))
                declared = child_raw.get("inputs")
                known = declared if isinstance(declared, dict) else {}
                inputs = task.get("inputs")
                for key in inputs if isinstance(inputs, dict) else {}:
                    if key not in known:
                        names = ", ".join(sorted(known)) or "none"
                        self.add(
                            (*at, "inputs", key),
                            f"pipeline {child!r} has no input {key!r} (declared: {names})",
                        )
        if cycle := graph.find_cycle(calls):
            self.add(
                where[cycle[0], cycle[1]],
                "pipelines run each other in a cycle: " + " -> ".join(cycle),
            )

    def check_pipeline(self, name: str, raw: Any, pools: set[str]) -> None:
        at: tuple[str | int, ...] = ("pipelines", name)
        if not isinstance(raw, dict):
            self.add(at, "must be a table")
            return
        head = {k: v for k, v in raw.items() if k != "tasks"}
        self.validate(PipelineConfig, {**head, "tasks": {}}, at)
        tasks_raw = raw.get("tasks")
        if not isinstance(tasks_raw, dict) or not tasks_raw:
            self.add(
                (*at, "tasks"), "a pipeline needs at least one task, [pipelines.NAME.tasks.TASK]"
            )
            return
        tasks: dict[str, _TaskKeys] = {}
        for task_name, task_raw in tasks_raw.items():
            task_at = (*at, "tasks", task_name)
            if not isinstance(task_raw, dict):
                self.validate(TaskConfig, task_raw, task_at)  # says what a task must be
                continue
            self.validate(
                TaskConfig, {k: v for k, v in task_raw.items() if k in _TASK_KEYS}, task_at
            )
            # Whether or not a common key was wrong, check the rest of the task, and the
            # pipeline around it, as written: all problems at once, and none made up.
            tasks[task_name] = task = _TaskKeys.read(task_raw)
            if task.kind is not None:
                self.check_kind(task, task_at)
            if task.pool is not None and task.pool not in pools:
                known = ", ".join(sorted(pools)) or "none are declared in [daemon] pools"
                self.add((*task_at, "pool"), f"unknown pool {task.pool!r} (known: {known})")
        for task_name, task in tasks.items():
            for need in task.needs or ():
                if need == task_name:
                    self.add((*at, "tasks", task_name, "needs"), "a task cannot need itself")
                elif need not in tasks_raw:
                    self.add(
                        (*at, "tasks", task_name, "needs"), _unknown(need, tuple(tasks_raw), "task")
                    )
        deps = {
            t: tuple(n for n in c.needs or () if n in tasks_raw and n != t)
            for t, c in tasks.items()
        }
        if cycle := graph.find_cycle(deps):
            self.add((*at, "tasks", cycle[0], "needs"), "cycle: " + " -> ".join(cycle))
        # A task whose needs could not be read hides what is upstream of it and of the tasks
        # below it; their references to tasks go unchecked rather than wrongly reported.
        unread = {t for t, c in tasks.items() if c.needs is None}
        inputs: dict[str, Any] = raw["inputs"] if isinstance(raw.get("inputs"), dict) else {}
        for task_name, task in tasks.items():
            upstream = graph.ancestors(deps, task_name)  # copes with cycles
            known_upstream = None if unread & {task_name, *upstream} else upstream
            self.check_templates(task_name, task, at, inputs, known_upstream)

    def check_waits(self, name: str, raw: Any, sources: dict[str, Any]) -> None:
        """A ``wait_event`` task's ``source`` is a configured source and its ``match``
        compiles and reads only what a wait has (its kind's model checks the rest); so
        are a ``cancel_on``'s (the pipeline's model checks its keys)."""
        cancels = raw.get("cancel_on") if isinstance(raw, dict) else None
        for index, cancel in enumerate(cancels if isinstance(cancels, list) else []):
            at_c: tuple[str | int, ...] = ("pipelines", name, "cancel_on", index)
            if not isinstance(cancel, dict):
                continue
            source = cancel.get("source")
            if isinstance(source, str) and source not in sources:
                self.add((*at_c, "source"), _unknown(source, tuple(sources), "source"))
            for key, roots in (("when", ("event",)), ("match", ("event", "run"))):
                if isinstance(text := cancel.get(key), str):
                    self.check_expression((*at_c, key), text, roots)
        tasks = raw.get("tasks") if isinstance(raw, dict) else None
        inputs = raw.get("inputs") if isinstance(raw, dict) else None
        inputs = inputs if isinstance(inputs, dict) else {}
        for task_name, task in (tasks if isinstance(tasks, dict) else {}).items():
            if not isinstance(task, dict) or task.get("kind") != "wait_event":
                continue
            at: tuple[str | int, ...] = ("pipelines", name, "tasks", task_name)
            source = task.get("source")
            if isinstance(source, str) and source not in sources:
                self.add((*at, "source"), _unknown(source, tuple(sources), "source"))
            if isinstance(match := task.get("match"), str):
                self.check_expression(
                    (*at, "match"),
                    match,
                    ("event", "inputs", "tasks", "run", "item"),
                    inputs,
                    mapped="map" in task,
                )

    def check_expression(
        self,
        at: tuple[str | int, ...],
        text: str,
        roots: tuple[str, ...],
        inputs: dict[str, Any] | None = None,
        *,
        mapped: bool = False,
    ) -> None:
        """An expression (a ``match``, a ``when``) compiles and reads only ``roots``.

        :param inputs: the pipeline's declared inputs, where ``inputs`` is among ``roots``
        """
        if templates.has_template(text):
            self.add(at, "is an expression, not a template: leave out {{ }}")
            return
        try:
            refs = templates.references(templates.when_expression(text))
        except templates.TemplateProblem as exc:
            self.add(at, str(exc))
            return
        for ref in refs:
            problem = None
            if ref.root not in roots:
                problem = (
                    f"refers to {ref.root!r}, which does not exist here (use {', '.join(roots)})"
                )
            elif ref.root == "event":
                if ref.name not in (None, *EVENT_FIELDS):
                    known = ", ".join(f"event.{f}" for f in EVENT_FIELDS)
                    problem = f"refers to event.{ref.name}, which does not exist ({known} do)"
            elif ref.root == "run" and "inputs" not in roots:  # a cancel_on's run
                if ref.name not in (None, "id", "pipeline", "inputs"):
                    problem = (
                        f"refers to run.{ref.name}, which does not exist "
                        "(run.id, run.pipeline, run.inputs do)"
                    )
            else:
                problem = _reference_problem(ref, str(at[-1]), mapped, inputs or {}, None)
            if problem:
                self.add(at, problem)

    def check_source(self, name: str, raw: Any) -> None:
        at: tuple[str | int, ...] = ("sources", name)
        source = self.validate(SourceConfig, raw, at)
        if source is None:
            return
        kinds = source_kinds()
        if source.kind not in kinds:
            known = ", ".join(sorted(kinds))
            self.add((*at, "kind"), f"unknown source kind {source.kind!r} (known: {known})")
            return
        model = kinds[source.kind].Config
        self.validate(model, source.params, at, known=("kind", *_keys(model)))

    def check_trigger(
        self, index: int, raw: Any, sources: dict[str, Any], pipelines: dict[str, Any]
    ) -> None:
        at: tuple[str | int, ...] = ("triggers", index)
        trigger = self.validate(TriggerConfig, raw, at)
        if trigger is None:
            return
        if (asset := asset_of(trigger.source)) is not None:
            produced = {
                a
                for p in pipelines.values()
                if isinstance(p, dict)
                for t in (p.get("tasks") or {}).values()
                if isinstance(t, dict)
                for a in t.get("produces", ())
                if isinstance(a, str)
            }
            if asset not in produced:
                known = ", ".join(sorted(produced)) or "none"
                self.add((*at, "source"), f"no task produces asset {asset!r} (produced: {known})")
        elif trigger.source not in sources:
            self.add((*at, "source"), _unknown(trigger.source, tuple(sources), "source"))
        pipeline = pipelines.get(trigger.pipeline)
        if not isinstance(pipeline, dict):
            self.add((*at, "pipeline"), _unknown(trigger.pipeline, tuple(pipelines), "pipeline"))
        else:
            inputs = pipeline.get("inputs")
            declared: dict[str, Any] = inputs if isinstance(inputs, dict) else {}
            for key in trigger.inputs:
                if key not in declared:
                    names = ", ".join(sorted(declared)) or "none"
                    self.add(
                        (*at, "inputs", key),
                        f"pipeline {trigger.pipeline!r} has no input {key!r} (declared: {names})",
                    )
        self.check_flow(trigger, at)
        checked: list[tuple[tuple[str | int, ...], Any]] = [((*at, "inputs"), trigger.inputs)]
        if trigger.when is not None:
            checked.append(((*at, "when"), templates.when_expression(trigger.when)))
        if trigger.dedupe is not None:
            checked.append(((*at, "dedupe"), trigger.dedupe))
        if trigger.key is not None:
            checked.append(((*at, "key"), trigger.key))
        if isinstance(trigger.priority, str):
            checked.append(((*at, "priority"), trigger.priority))
        fields = ("id", "source", "data", "meta", "received_at")
        for where, value in checked:
            try:
                refs = templates.references(value)
            except templates.TemplateProblem as exc:
                self.add(where, str(exc))
                continue
            for ref in refs:
                if ref.root != "event":
                    self.add(
                        where, f"refers to {ref.root!r}, which does not exist here (use event)"
                    )
                elif ref.name == "batch" and where[-1] == "inputs" and trigger.sees_batch:
                    continue
                elif ref.name == "batch":
                    self.add(
                        where,
                        "refers to event.batch, which only the inputs of a trigger with "
                        "batch, or debounce keep = 'all', have",
                    )
                elif ref.name not in (None, *fields):
                    self.add(
                        where,
                        f"refers to event.{ref.name}, which does not exist "
                        "(event.id, event.source, event.data, event.meta, event.received_at do)",
                    )

    def check_flow(self, trigger: TriggerConfig, at: tuple[str | int, ...]) -> None:
        """What the models of debounce, throttle and batch cannot check alone."""
        if trigger.batch is not None:
            if trigger.batch.size is None and trigger.batch.timeout is None:
                self.add((*at, "batch"), "a batch needs a size, a timeout or both")
            if trigger.dedupe is not None:
                self.add(
                    (*at, "dedupe"),
                    "a batch trigger cannot have a dedupe key: a run is started by many "
                    "events (dedupe the events' source instead)",
                )
            if trigger.debounce is not None:
                self.add(
                    (*at, "debounce"),
                    "a trigger has debounce or batch, not both (debounce keep = 'all' "
                    "gives the run every event of a burst)",
                )

    def check_alert(self, name: str, raw: Any, pipelines: dict[str, Any]) -> None:
        at: tuple[str | int, ...] = ("alerts", name)
        if not isinstance(raw, dict):
            self.add(at, "must be a table")
            return
        kind = raw.get("kind")
        if not isinstance(kind, str) or kind not in ALERT_KINDS:
            known = ", ".join(sorted(ALERT_KINDS))
            problem = "required key is missing" if kind is None else f"unknown alert kind {kind!r}"
            self.add((*at, "kind"), f"{problem} (known: {known})")
            return
        model = ALERT_KINDS[kind]
        self.validate(model, raw, at)
        # as written, so that a mistake in one key does not hide those in the others
        named = raw.get("pipelines")
        for pipeline in named if isinstance(named, list) else ():
            if isinstance(pipeline, str) and pipeline not in pipelines:
                self.add((*at, "pipelines"), _unknown(pipeline, tuple(pipelines), "pipeline"))
        for key in model.template_keys:
            value = raw.get(key)
            # each element of a list on its own: one that does not parse hides no other
            for index, text in enumerate(value if isinstance(value, list) else [value]):
                where = (*at, key, index) if isinstance(value, list) else (*at, key)
                try:
                    refs = templates.references(text)
                except templates.TemplateProblem as exc:
                    self.add(where, str(exc))
                    continue
                for ref in refs:
                    if ref.root != "alert":
                        self.add(where, f"refers to {ref.root!r}, which does not exist (use alert)")

    def check_kind(self, task: _TaskKeys, at: tuple[str | int, ...]) -> None:
        kinds = task_kinds()
        if task.kind is None or task.kind not in kinds:
            self.add(
                (*at, "kind"),
                f"unknown task kind {task.kind!r} (known: {', '.join(sorted(kinds))})",
            )
            return
        params_model = kinds[task.kind].Params
        known = (*_TASK_KEYS, *_keys(params_model))
        self.validate(params_model, task.params, at, known=known, rendered=True)
        # what the rendered values cannot show: where a template may not be at all
        if (template_problems := getattr(params_model, "template_problems", None)) is not None:
            for problem in template_problems(task.params):
                self.add((*at, *problem.key), problem.message, warning=problem.warning)
        # what the config's own files show (a python function its module lacks), read
        # without running them
        if (config_problems := getattr(params_model, "config_problems", None)) is not None:
            for problem in config_problems(task.params, self.base_dir):
                self.add((*at, *problem.key), problem.message, warning=problem.warning)

    def check_templates(
        self,
        task_name: str,
        task: _TaskKeys,
        at: tuple[str | int, ...],
        inputs: dict[str, Any],
        upstream: set[str] | None,
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
                problem = _reference_problem(ref, key, task.map is not None, inputs, upstream)
                if problem:
                    self.add(where, problem)


@dataclass(frozen=True)
class _TaskKeys:
    """What the checks of a pipeline need of one task, read from its table as written, so
    that they can go on when a common key is wrong (the task's validation reports that)."""

    kind: str | None
    """``None`` if not a string."""
    needs: tuple[str, ...] | None
    """The names among ``needs``; ``None`` if it is not a list, so what the task needs is
    not known."""
    pool: str | None
    """``None`` if not a string."""
    map: Any
    """As written; templates are checked in whatever it holds."""
    params: dict[str, Any]
    """The kind's parameters: the keys that are not common ones."""

    @classmethod
    def read(cls, raw: dict[str, Any]) -> _TaskKeys:
        kind, needs, pool = raw.get("kind"), raw.get("needs", ()), raw.get("pool")
        return cls(
            kind=kind if isinstance(kind, str) else None,
            needs=tuple(n for n in needs if isinstance(n, str))
            if isinstance(needs, list | tuple)
            else None,
            pool=pool if isinstance(pool, str) else None,
            map=raw.get("map"),
            params={k: v for k, v in raw.items() if k not in _TASK_KEYS},
        )


def _reference_problem(
    ref: templates.Reference,
    key: str,
    mapped: bool,
    inputs: dict[str, Any],
    upstream: set[str] | None,
) -> str | None:
    """What is wrong with a reference in the template at ``key``, if anything.

    :param mapped: the task has ``map``
    :param upstream: the tasks the task needs, directly or not; ``None`` if not known
    """
    if ref.root == "inputs":
        if ref.name is not None and ref.name not in inputs:
            declared = ", ".join(sorted(inputs)) or "none"
            return f"template refers to input {ref.name!r}, which the pipeline does not declare (declared: {declared})"
    elif ref.root == "tasks":
        if ref.name is not None and upstream is not None and ref.name not in upstream:
            return f"template refers to task {ref.name!r}, which is not upstream of this task (add it to needs)"
    elif ref.root == "item":
        if not mapped or key == "map":
            return "template refers to 'item', which exists only in a task with map"
    elif ref.root == "run":
        if ref.name not in (None, "id", "pipeline"):
            return (
                f"template refers to run.{ref.name}, which does not exist (run.id, run.pipeline do)"
            )
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
    return (
        f"{msg} (got {err['input']!r})"
        if "input" in err and not isinstance(err["input"], dict) and "got" not in msg
        else msg
    )
