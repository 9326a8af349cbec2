"""The ``[alerts.NAME]`` tables: one model per channel kind (webhook, email, command).

They live with the rest of the configuration, so loading a config imports no SMTP or HTTP
client; :mod:`cued.daemon.runtime.alerts` delivers what they describe.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cued.daemon.config.durations import Duration
from cued.daemon.config.environment import EnvSpec

__all__ = [
    "ALERT_KINDS",
    "RULES",
    "AlertConfig",
    "ChannelConfig",
    "CommandAlertConfig",
    "EmailAlertConfig",
    "Rule",
    "WebhookAlertConfig",
]

Rule = Literal["run_failed", "task_failed", "run_succeeded", "deadline_missed", "approval_waiting"]
RULES: tuple[str, ...] = get_args(Rule)

_DEFAULT_SUBJECT = "[cued] {{ alert.rule }}: {{ alert.pipeline }} {{ alert.run_id }}"
# Every rule's alert renders: what only some alerts have is tested for first
_DEFAULT_BODY = """\
{{ alert.message }}

Rule:      {{ alert.rule }}
Pipeline:  {{ alert.pipeline }}
Run:       {{ alert.run_id }}
{% if alert.task is defined %}Task:      {{ alert.task }}\
{% if alert.attempt is defined %} (attempt {{ alert.attempt }}){% endif %}
{% endif %}{% if alert.detail is defined and alert.detail %}Detail:    {{ alert.detail }}
{% endif %}{% if alert.error is defined and alert.error %}Error:
{{ alert.error }}

{% endif %}{% if alert.inputs is defined %}Inputs:    {{ alert.inputs | tojson }}
{% endif %}At:        {{ alert.created_at }}
Alert id:  {{ alert.alert_id }}
"""


class ChannelConfig(BaseModel):
    """Keys every ``[alerts.NAME]`` table has."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    on: tuple[Rule, ...] = ("run_failed", "task_failed")
    """The rules that raise an alert on this channel."""
    pipelines: tuple[str, ...] | None = None
    """Only alerts about these pipelines (default: all)."""
    max_attempts: int = Field(20, ge=1)
    """Tries before giving up on an alert (logged as an error)."""
    backoff: Duration = 1.0
    """Delay before the first retry; it doubles with each failure, with jitter."""
    backoff_max: Duration = 300.0
    """The longest delay between two tries."""
    timeout: Duration = Field(30.0, gt=0)
    """How long one delivery may take (a command is killed after it)."""

    template_keys: ClassVar[tuple[str, ...]] = ()
    """The keys that hold templates (rendered with ``alert``), for ``cued validate``."""


class WebhookAlertConfig(ChannelConfig):
    """``kind = "webhook"``: POST the alert to ``url``."""

    kind: Literal["webhook"]
    url: str
    """``http(s)://...``, or ``env:NAME`` / ``file:PATH`` for a URL that is a secret (Slack's)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Sent with every request; a value may be ``env:NAME`` or ``file:PATH``."""
    format: Literal["json", "slack", "teams"] = "json"
    body: str | None = None
    """A template rendering the JSON body, instead of ``format``."""

    @field_validator("url")
    @classmethod
    def _url_or_secret(cls, value: str) -> str:
        if value.startswith(("env:", "file:", "http://", "https://")):
            return value
        raise ValueError(f"expected an http(s) URL, env:NAME or file:PATH, got {value!r}")

    @model_validator(mode="after")
    def _body_or_format(self) -> WebhookAlertConfig:
        if self.body is not None and "format" in self.model_fields_set:
            raise ValueError("give either 'format' or 'body', not both")
        return self

    template_keys: ClassVar[tuple[str, ...]] = ("body",)


class EmailAlertConfig(ChannelConfig):
    """``kind = "email"``: send a mail through an SMTP server."""

    kind: Literal["email"]
    host: str
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True
    """Upgrade the connection with STARTTLS, and refuse a server that cannot."""
    tls: bool = False
    """Connect with TLS from the start (usually port 465), instead of STARTTLS."""
    username: str | None = None
    password: str | None = None
    """``env:NAME``, ``file:PATH``, or the password itself (keep that out of version control)."""
    from_: str = Field(alias="from")
    to: tuple[str, ...] = Field(min_length=1)
    subject: str = _DEFAULT_SUBJECT
    body: str = _DEFAULT_BODY

    @model_validator(mode="after")
    def _consistent(self) -> EmailAlertConfig:
        if self.tls and self.starttls and "starttls" in self.model_fields_set:
            raise ValueError("give either 'tls' or 'starttls', not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("give 'username' and 'password' together")
        return self

    template_keys: ClassVar[tuple[str, ...]] = ("subject", "body")


class CommandAlertConfig(ChannelConfig):
    """``kind = "command"``: run a program; it gets the alert as ``CUED_ALERT_JSON``."""

    kind: Literal["command"]
    argv: list[str] = Field(min_length=1)
    """The program and its arguments (templates), run with no shell, in the config's folder."""
    env: EnvSpec = Field(default_factory=dict)
    """The program's environment besides the base (PATH, HOME, LANG, ...): ``["NAME",
    "NAME=value"]`` (a name alone passes the daemon's variable through), or a table of
    values; used as written, not templates. Nothing else of the daemon's is passed on."""

    template_keys: ClassVar[tuple[str, ...]] = ("argv",)


AlertConfig = Annotated[
    WebhookAlertConfig | EmailAlertConfig | CommandAlertConfig, Field(discriminator="kind")
]
"""One ``[alerts.NAME]`` table; ``kind`` decides which keys it has."""

ALERT_KINDS: dict[str, type[ChannelConfig]] = {
    "webhook": WebhookAlertConfig,
    "email": EmailAlertConfig,
    "command": CommandAlertConfig,
}
