"""What plugin authors import: the one module of the daemon that ``connectors/`` (event
sources) and ``plugins/`` (task kinds) may use, and an outside plugin should too.

``from cued.daemon.sdk import Event, SourceContext, TaskContext, TaskError, ...``:

* the interfaces: an event source (:class:`Source`, given a :class:`SourceContext`, hands
  :class:`Event` values to :class:`Intake`) and a task kind (:class:`TaskKind`, run with
  a :class:`TaskContext`);
* the errors they raise: :class:`ConnectorError` from a source, :class:`TaskError` (or
  :class:`PermanentTaskError` when retrying cannot help) from a task;
* what makes outside bytes safe data (:func:`json_value`, :func:`bounded_id`,
  :func:`os_name`, :func:`message_value` for a broker message's body, :func:`db_value` for a
  database's, ...), cannot fail
  and is the only way in for a source;
* config helpers: :data:`Duration` for ``"30s"``-style keys, :func:`resolve_secret` for
  ``env:``/``file:`` values, :func:`mark_secret` to redact a value from logs and outputs;
* templates (:func:`has_template`, for a ``Params.template_problems``) and conditions
  in the trigger's ``when`` language (:func:`condition_holds`, a ``sql`` task's
  ``expect``; :func:`condition_template` to check one with :func:`parse_template`);
* programs a task runs: their environment (:func:`program_env`) and :func:`run_program`,
  which kills the program's whole process group when the task is cancelled;
* traces (when the daemon has them, see ``[telemetry]``): the attempt's span
  (:func:`current_span`, to set attributes on), a span for each call a task makes
  (:func:`outgoing_span`), the ``traceparent`` to send on (:func:`current_traceparent`)
  and the one to read from a caller (:func:`parse_traceparent`, for a source's ``meta``);
* :func:`backoff_s` for retries inside an attempt, :func:`describe_error` to name a
  library's exception in an error, :func:`new_id` and :func:`now`, and
  :func:`error_response`, the daemon's one JSON refusal body, for a source serving HTTP.

Import-linter checks (``make check``) that connectors and plugins import nothing else of
the daemon; this module, not its submodules, is the one they name.
"""

from __future__ import annotations

from cued.daemon.config.durations import Duration
from cued.daemon.config.environment import EnvSpec, ProgramEnv, program_env
from cued.daemon.config.secrets import remember as mark_secret
from cued.daemon.config.secrets import resolve_secret
from cued.daemon.core.backoff import backoff_s
from cued.daemon.core.dbvalues import db_value
from cued.daemon.core.durations import as_moment
from cued.daemon.core.ids import new_id, now
from cued.daemon.core.messages import message_value
from cued.daemon.core.templates import SHELL_QUOTE_FILTERS, TemplateProblem, has_template
from cued.daemon.core.templates import parse as parse_template
from cued.daemon.core.templates import when_expression as condition_template
from cued.daemon.core.templates import when_holds as condition_holds
from cued.daemon.core.tracecontext import parse_traceparent
from cued.daemon.core.untrusted import (
    Parsed,
    bounded_id,
    decimal,
    header_text,
    json_value,
    looks_like_json,
    os_name,
    text_or_base64,
)
from cued.daemon.core.untrusted import form as form_value
from cued.daemon.core.untrusted import text as decode_text
from cued.daemon.errors import (
    ConnectorError,
    CuedError,
    DataCheckFailed,
    PermanentTaskError,
    StoreError,
    TaskError,
    TaskTimeout,
)
from cued.daemon.sdk.describe import describe_error
from cued.daemon.sdk.http_errors import error_response
from cued.daemon.sdk.kinds import (
    AwaitingDecision,
    AwaitingEvent,
    AwaitingRun,
    AwaitingTime,
    LineWriter,
    Meter,
    ParamProblem,
    Spending,
    TaskContext,
    TaskKind,
)
from cued.daemon.sdk.processes import ProgramExit, run_program
from cued.daemon.sdk.sources import (
    Backfills,
    Event,
    Intake,
    Receipt,
    Source,
    SourceContext,
    WebRoutes,
)
from cued.daemon.sdk.tracing import Span, current_span, current_traceparent, outgoing_span

__all__ = [
    "SHELL_QUOTE_FILTERS",
    "AwaitingDecision",
    "AwaitingEvent",
    "AwaitingRun",
    "AwaitingTime",
    "Backfills",
    "ConnectorError",
    "CuedError",
    "DataCheckFailed",
    "Duration",
    "EnvSpec",
    "Event",
    "Intake",
    "LineWriter",
    "Meter",
    "ParamProblem",
    "Parsed",
    "PermanentTaskError",
    "ProgramEnv",
    "ProgramExit",
    "Receipt",
    "Source",
    "SourceContext",
    "Span",
    "Spending",
    "StoreError",
    "TaskContext",
    "TaskError",
    "TaskKind",
    "TaskTimeout",
    "TemplateProblem",
    "WebRoutes",
    "as_moment",
    "backoff_s",
    "bounded_id",
    "condition_holds",
    "condition_template",
    "current_span",
    "current_traceparent",
    "db_value",
    "decimal",
    "decode_text",
    "describe_error",
    "error_response",
    "form_value",
    "has_template",
    "header_text",
    "json_value",
    "looks_like_json",
    "mark_secret",
    "message_value",
    "new_id",
    "now",
    "os_name",
    "outgoing_span",
    "parse_template",
    "parse_traceparent",
    "program_env",
    "resolve_secret",
    "run_program",
    "text_or_base64",
]
