"""Alerts: tell people at once when a task fails for good, a run fails (or succeeds).

An alert is an outbox row. The runner commits it in the same transaction as the change it
reports (:mod:`~cued.daemon.runtime.run_alerts` builds the rows), so a crash cannot lose
one; the sender loop here (:meth:`Alerts.run`) delivers what is due and records each try
on the row:

```
runner commits [instance failed, outbox row]  ->  Alerts.wake()
Alerts.run: outbox_due(now) -> deliver each (bounded, with a timeout) -> submit the row
    sent         sent_at
    failed       attempts + 1, last_error, next_at = now + backoff (exponential, jitter)
    gave up      after max_attempts: next_at = never, and an error in the log
```

With several nodes on one PostgreSQL database, each alert is claimed by the node that
sends it (:meth:`~cued.daemon.store.Store.claim_outbox`): no two live nodes send one
alert; a gone node's unsent alerts are taken over (see :mod:`cued.daemon.store.pg_outbox`).

Delivery is at least once: a crash between a send and the commit of its ``sent_at`` sends
the alert again after the restart (or by the node that takes it over), with the same id (the ``Idempotency-Key`` header of a
webhook, an email's ``Message-ID``, a command's ``CUED_ALERT_ID``), so a receiver can drop
the repeat. A channel that fails or hangs holds up neither runs nor the other channels.

Channels, one ``[alerts.NAME]`` table each, by ``kind``: ``webhook`` (JSON, Slack, Teams,
or a body template), ``email`` (SMTP) and ``command`` (a program).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import aiosmtplib
import anyio
import httpx

from cued.daemon.config.alerting import (
    AlertConfig,
    CommandAlertConfig,
    EmailAlertConfig,
    WebhookAlertConfig,
)
from cued.daemon.config.environment import ProgramEnv, program_env
from cued.daemon.config.secrets import redact, remember_secret, resolve_secret
from cued.daemon.core import templates
from cued.daemon.core.backoff import backoff_s
from cued.daemon.core.ids import now
from cued.daemon.errors import AlertDeliveryError, CuedError
from cued.daemon.logs import get_logger
from cued.daemon.sdk.processes import run_program
from cued.daemon.store import GIVEN_UP_AT, OutboxRow

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from cued.daemon.store import Store

__all__ = [
    "Alerts",
    "message_id",
]

#: How much of a failure (a response body, stderr) ``last_error`` keeps.
_ERROR_CHARS = 500

# -- the outbox ------------------------------------------------------------------------


class Alerts:
    """The alert channels: outbox rows for the runner, and the loop that sends them.

    :param configs: the channels, by name (``[alerts.NAME]``)
    :param store: where the outbox is
    :param http: the client webhooks are sent with
    :param base_dir: the config's folder (for ``file:`` secrets, and where commands run)
    """

    #: Deliveries in flight at once; more wait for one of them to end.
    max_concurrent: int = 16

    def __init__(
        self,
        configs: Mapping[str, AlertConfig],
        store: Store,
        http: httpx.AsyncClient,
        base_dir: Path,
    ) -> None:
        self.store = store
        self._http = http
        self.configs: dict[str, AlertConfig] = {}
        self._channels: dict[str, _Channel] = {}
        self.configure(configs, base_dir)
        self._wake: anyio.Event | None = None
        self._in_flight: set[str] = set()
        self.log = get_logger(component="alerts")

    def configure(self, configs: Mapping[str, AlertConfig], base_dir: Path) -> None:
        """Use these channels from now on (at start, and at a reload): alerts raised
        from now go to them; one queued for a channel no longer configured is given up
        when it is due, one for a channel kept is sent as the channel now says."""
        channels = {
            name: (
                self._channels[name]
                if self.configs.get(name) == config
                else _channel(config, self._http, base_dir)
            )
            for name, config in configs.items()
        }
        for config in configs.values():
            _remember_secrets(config, base_dir)
        self.configs, self._channels = dict(configs), channels
        self._rules = frozenset(rule for config in configs.values() for rule in config.on)

    def wants(self, rule: str) -> bool:
        """Whether a configured channel takes alerts of ``rule``."""
        return rule in self._rules

    def rows(self, rule: str, key: str, payload: dict[str, Any]) -> list[OutboxRow]:
        """One outbox row per channel that wants an alert of ``rule`` about this pipeline.

        :param key: names the occurrence; the alert id is ``CHANNEL:KEY``, the same on
            every resend
        :param payload: what the runner knows (rule, run_id, pipeline, inputs, task, error,
            ...); the row's payload adds ``alert_id``, ``channel``, ``message`` (one line
            for people; a ``message`` given here moves to ``detail``) and ``created_at``
            (ISO 8601)
        """
        created = now()
        line = _message(rule, payload)
        rows = []
        for name, config in self.configs.items():
            if rule not in config.on:
                continue
            if config.pipelines is not None and payload.get("pipeline") not in config.pipelines:
                continue
            alert_id = f"{name}:{key}"
            full = {
                **payload,
                "rule": rule,
                "alert_id": alert_id,
                "channel": name,
                "message": line,
                "created_at": datetime.fromtimestamp(created, UTC).isoformat(),
            }
            if "message" in payload:  # the caller's own (an approval's question), kept whole
                full["detail"] = payload["message"]
            rows.append(OutboxRow(alert_id, name, rule, full, created, next_at=created))
        return rows

    def wake(self) -> None:
        """New rows are committed: look at the outbox now."""
        if self._wake is not None:
            self._wake.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Send alerts as they become due, until cancelled; first whatever is due already
        (alerts committed before a crash or a stop)."""
        async with anyio.create_task_group() as tg:
            self._wake = anyio.Event()
            task_status.started()
            while True:
                # a fresh event before reading the outbox: a wake() while reading is kept
                wake = self._wake = anyio.Event()
                room = self.max_concurrent - len(self._in_flight)
                if room > 0:
                    # what was in flight before the read may end during it: a row read before
                    # its delivery committed is stale, and must not be sent again
                    busy = set(self._in_flight)
                    due = await self.store.claim_outbox(now(), limit=room + len(busy))
                    busy |= self._in_flight
                    fresh = [r for r in due if r.alert_id not in busy]
                    for row in fresh[:room]:
                        self._in_flight.add(row.alert_id)
                        tg.start_soon(self._deliver, row, name=f"alert {row.alert_id}")
                next_at = (
                    await self._next_at() if len(self._in_flight) < self.max_concurrent else None
                )
                # a delivery that ends wakes us, so rows beyond the room left are not stuck
                delay = math.inf if next_at is None else max(0.0, next_at - now())
                with anyio.move_on_after(delay):
                    await wake.wait()

    async def _next_at(self) -> float | None:
        """When the earliest alert that is not being delivered is due (``None``: never)."""
        if not self._in_flight:
            next_at = await self.store.outbox_next_at()
        else:
            # rows in flight still show the next_at they were picked with: look past them
            upcoming = await self.store.outbox_due(GIVEN_UP_AT, limit=len(self._in_flight) + 1)
            next_at = next((r.next_at for r in upcoming if r.alert_id not in self._in_flight), None)
        return None if next_at is None or next_at >= GIVEN_UP_AT else next_at

    async def _deliver(self, row: OutboxRow) -> None:
        log = self.log.bind(alert_id=row.alert_id, channel=row.channel, rule=row.rule)
        attempt = row.attempts + 1
        config = self.configs.get(row.channel)
        error: str | None = None
        try:
            if config is None:
                error = f"no alert channel {row.channel!r} in the configuration any more"
            else:
                with anyio.fail_after(config.timeout):
                    await self._channels[row.channel].send(row)
        except TimeoutError:
            assert config is not None
            error = f"no answer within {config.timeout:g}s"
        except Exception as exc:  # noqa: BLE001 - a channel's failure is recorded, never raised
            # a command's stderr, a server's answer: may quote a secret, and is stored
            error = redact(_describe(exc))
        at = now()
        if error is None:
            update = replace(row, sent_at=at, attempts=attempt, last_error=None, next_at=at)
            log.info("alert_sent", attempt=attempt)
        elif config is None or attempt >= config.max_attempts:
            update = replace(row, attempts=attempt, last_error=error, next_at=GIVEN_UP_AT)
            log.error("alert_given_up", attempt=attempt, error=error)
        else:
            delay = backoff_s(
                attempt, first_s=config.backoff, max_s=config.backoff_max, rand=random.random()
            )
            update = replace(row, attempts=attempt, last_error=error, next_at=at + delay)
            log.warning("alert_failed", attempt=attempt, error=error, retry_in_s=round(delay, 3))
        try:
            await self.store.submit([update]).wait()
        finally:
            self._in_flight.discard(row.alert_id)
            self.wake()


def message_id(alert_id: str) -> str:
    """The ``Message-ID`` of an alert's email: the same on every resend. Characters an
    id may not hold (``:``, brackets) are written ``%XX``."""
    left = "".join(c if c in _ATEXT else "".join(f"%{b:02X}" for b in c.encode()) for c in alert_id)
    return f"<{left}@cued>"


_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&'*+-/=?^_`{|}~"
)


def _message(rule: str, alert: Mapping[str, Any]) -> str:
    """One line for people. A ``message`` the caller gave (an approval's question) is
    part of it."""
    run_id = alert.get("run_id")
    run = f"run {run_id} of pipeline {alert.get('pipeline')!r}"
    task = alert.get("task")
    subject = f"Task {task!r} of {run}" if task else f"The {run}"
    if rule == "task_failed":
        text = f"Task {task!r} failed for good (attempt {alert.get('attempt')}) in {run}"
    elif rule == "run_failed":
        text = f"The {run} failed"
    elif rule == "run_succeeded":
        text = f"The {run} succeeded"
    elif rule == "deadline_missed":
        text = f"{subject} missed its deadline"
    elif rule == "approval_waiting":
        text = f"{subject} waits for approval"
        if asked := alert.get("message"):
            text += f": {_one_line(asked)}"
        if task:
            text += f" (cued approve {run_id} {task})"
    else:
        text = f"{rule}: {run}"
    if error := alert.get("error"):
        text += f": {_one_line(error)}"
    return text


def _one_line(value: Any, limit: int = 200) -> str:
    line = " ".join(str(value).split())
    return line if len(line) <= limit else line[:limit] + "..."


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, AlertDeliveryError | CuedError | templates.TemplateProblem):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text(value: Any) -> str:
    """A rendered template as text: a native value (a whole ``{{ expr }}``) as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _context(row: OutboxRow) -> dict[str, Any]:
    return {"alert": row.payload}


# -- channels --------------------------------------------------------------------------


class _Channel(Protocol):
    async def send(self, row: OutboxRow) -> None:
        """Deliver one alert.

        :raises Exception: whatever went wrong (recorded on the row, and tried again)
        """


def _remember_secrets(config: AlertConfig, base_dir: Path) -> None:
    """Have a channel's secrets redacted from the start, not only once it first sent an
    alert: a task could print one before then."""
    if isinstance(config, WebhookAlertConfig):
        # a URL or a header given as itself is no secret (application/json is not)
        for value in (config.url, *config.headers.values()):
            remember_secret(value, base_dir, literal_is_secret=False)
    elif isinstance(config, EmailAlertConfig) and config.password is not None:
        remember_secret(config.password, base_dir)


def _channel(config: AlertConfig, http: httpx.AsyncClient, base_dir: Path) -> _Channel:
    if isinstance(config, WebhookAlertConfig):
        return _Webhook(config, http, base_dir)
    if isinstance(config, EmailAlertConfig):
        return _Email(config, base_dir)
    return _Command(config, base_dir)


class _Webhook:
    def __init__(self, config: WebhookAlertConfig, http: httpx.AsyncClient, base_dir: Path):
        self.config = config
        self.http = http
        self.base_dir = base_dir

    async def send(self, row: OutboxRow) -> None:
        config = self.config
        url = httpx.URL(resolve_secret(config.url, self.base_dir, literal_is_secret=False))
        headers = {
            "Content-Type": "application/json",
            **{
                k: resolve_secret(v, self.base_dir, literal_is_secret=False)
                for k, v in config.headers.items()
            },
            "Idempotency-Key": row.alert_id,
        }
        # no timeout of httpx's own: the sender's (``timeout``) bounds the whole delivery
        response = await self.http.post(url, content=self.body(row), headers=headers, timeout=None)
        if not response.is_success:
            # the host only: the URL of a Slack or Teams webhook is itself a secret
            raise AlertDeliveryError(
                f"the webhook at {url.host!r} answered {response.status_code}: "
                f"{response.text[:_ERROR_CHARS]}"
            )

    def body(self, row: OutboxRow) -> bytes:
        alert = row.payload
        if self.config.body is not None:
            rendered = templates.render(self.config.body, _context(row))
            if isinstance(rendered, str):
                try:
                    json.loads(rendered)
                except ValueError as exc:
                    raise AlertDeliveryError(
                        f"the body template did not render JSON: {exc}"
                    ) from exc
                return rendered.encode()
            return json.dumps(rendered).encode()
        if self.config.format == "slack":
            text = f"{alert['message']}\n(alert {row.alert_id})"
            return json.dumps({"text": _slack_escape(text)}).encode()
        if self.config.format == "teams":
            facts = [
                {"name": name, "value": str(alert[key])}
                for name, key in (
                    ("Pipeline", "pipeline"),
                    ("Run", "run_id"),
                    ("Task", "task"),
                    ("Attempt", "attempt"),
                    ("Alert id", "alert_id"),
                )
                if alert.get(key) is not None
            ]
            card = {
                "@type": "MessageCard",
                "@context": "https://schema.org/extensions",
                "summary": alert["message"][:150],
                "themeColor": "2EB886" if row.rule == "run_succeeded" else "D63333",
                "title": f"cued: {row.rule}",
                "text": alert["message"],
                "sections": [{"facts": facts}],
            }
            return json.dumps(card).encode()
        return json.dumps(alert).encode()


def _slack_escape(text: str) -> str:
    # Slack reads <...> as links and mentions: an error message's angle brackets are text
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Email:
    def __init__(self, config: EmailAlertConfig, base_dir: Path):
        self.config = config
        self.base_dir = base_dir

    def message(self, row: OutboxRow) -> EmailMessage:
        config = self.config
        ctx = _context(row)
        message = EmailMessage()
        message["From"] = config.from_
        message["To"] = ", ".join(config.to)
        # one line: a newline in a header would end it
        message["Subject"] = " ".join(_text(templates.render(config.subject, ctx)).split())
        message["Date"] = formatdate(row.created_at)
        message["Message-ID"] = message_id(row.alert_id)
        message["X-Cued-Alert-Id"] = row.alert_id
        message.set_content(_text(templates.render(config.body, ctx)))
        return message

    async def send(self, row: OutboxRow) -> None:
        config = self.config
        password = (
            resolve_secret(config.password, self.base_dir) if config.password is not None else None
        )
        await aiosmtplib.send(
            self.message(row),
            hostname=config.host,
            port=config.port,
            username=config.username,
            password=password,
            use_tls=config.tls,
            start_tls=config.starttls and not config.tls,
            timeout=None,  # the sender's ``timeout`` bounds the whole delivery
        )


class _Command:
    #: How much of stderr a failure quotes.
    stderr_tail_bytes: ClassVar[int] = 2048

    def __init__(self, config: CommandAlertConfig, base_dir: Path):
        self.config = config
        self.base_dir = base_dir

    async def send(self, row: OutboxRow) -> None:
        ctx = _context(row)
        argv = [_text(templates.render(arg, ctx)) for arg in self.config.argv]
        # not the daemon's environment: it holds the secrets that env: names
        wanted = ProgramEnv.read(self.config.env)
        env = program_env(wanted.names)
        env.update(CUED_ALERT_ID=row.alert_id, CUED_ALERT_JSON=json.dumps(row.payload))
        env.update(wanted.values)
        try:
            done = await run_program(
                argv,
                env=env,
                cwd=self.base_dir,
                tail_bytes=self.stderr_tail_bytes,
                keep_stdout=False,
            )
        except OSError as exc:
            raise AlertDeliveryError(f"program {argv[0]!r} cannot be run: {exc}") from exc
        code = done.exit_code
        if code != 0:
            tail = done.stderr.strip()[-_ERROR_CHARS:]
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            raise AlertDeliveryError(f"program {argv[0]!r} {how}" + (f": {tail}" if tail else ""))
