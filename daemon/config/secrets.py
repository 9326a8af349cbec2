"""Secrets in the configuration: ``env:NAME`` (from the environment), ``file:PATH``
(relative to the config's folder), or the value itself; and their redaction.

Every secret the daemon resolves is remembered, so that what the daemon stores and shows
(task outputs and errors, log lines) can have it replaced with :data:`REDACTED`: a task
that prints a token by mistake does not hand it to every reader of the API.

Redaction is a safety net, not a boundary: it finds the value as it is (and as ``repr``
and JSON escape it), not encoded (base64, URL-quoted) or cut in pieces; and values
shorter than :data:`MIN_REDACTED_CHARS` are left alone, since replacing ``"ab"``
everywhere would garble every output while hiding nothing.
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from cued.daemon.errors import CuedError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "MIN_REDACTED_CHARS",
    "REDACTED",
    "SecretRegistry",
    "known",
    "redact",
    "redact_text",
    "remember",
    "remember_secret",
    "resolve_secret",
]

#: What a secret's value is replaced with.
REDACTED = "[redacted]"

#: Secrets shorter than this are not redacted.
MIN_REDACTED_CHARS = 6

_T = TypeVar("_T")


class SecretRegistry:
    """Secret values known so far, and :meth:`redact` that hides them.

    Adding is rare (at start, and when a task first reads its key); redacting is on every
    task's result, so it starts with a plain ``in`` test per value, which is fast, and
    only rewrites a string that holds one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: frozenset[str] = frozenset()
        # the forms searched for: each value, and it as ``repr`` and JSON escape it, so
        # that an error quoting a text with ``!r`` is covered too; longest first, so
        # that the alternation takes a whole value rather than a shorter one inside it
        self._forms: tuple[str, ...] = ()
        self._pattern = re.compile("(?!)")  # matches nothing

    def remember(self, value: str) -> bool:
        """Redact ``value`` from now on; False if it is too short to be (or is made of
        :data:`REDACTED` itself, which redacting could never remove)."""
        if len(value) < MIN_REDACTED_CHARS or _within_marker(value):
            return False
        with self._lock:
            if value in self._values:
                return True
            values = self._values | {value}
            forms = {form for v in values for form in _forms(v)}
            ordered = tuple(sorted(forms, key=lambda f: (-len(f), f)))
            pattern = re.compile("|".join(map(re.escape, ordered)))
            # the pattern first: a redaction that sees the new forms must have it
            self._pattern = pattern
            self._forms, self._values = ordered, values
        return True

    def __bool__(self) -> bool:
        return bool(self._values)

    def redact(self, value: _T) -> _T:
        """``value`` with every known secret in its strings replaced with
        :data:`REDACTED`; dicts (keys too), lists and tuples are walked, and a value
        holding no secret is returned as it is."""
        forms = self._forms
        # looked through first, so that a large output with no secret in it (the usual
        # case) is neither copied nor rebuilt
        if not forms or not self._holds(value, forms):
            return value
        return self._walk(value, forms)  # type: ignore[no-any-return]

    def redact_text(self, text: str) -> str:
        """``text`` with every known secret replaced with :data:`REDACTED`."""
        forms = self._forms
        if not forms or not any(form in text for form in forms):
            return text
        return self._rewrite(text, forms)

    def _holds(self, value: Any, forms: tuple[str, ...]) -> bool:
        if isinstance(value, str):
            return any(form in value for form in forms)
        if isinstance(value, dict):
            return any(self._holds(k, forms) or self._holds(v, forms) for k, v in value.items())
        if isinstance(value, list | tuple):
            return any(self._holds(v, forms) for v in value)
        return False

    def _walk(self, value: Any, forms: tuple[str, ...]) -> Any:
        if isinstance(value, str):
            if any(form in value for form in forms):
                return self._rewrite(value, forms)
            return value
        if isinstance(value, dict):
            return {self._walk(k, forms): self._walk(v, forms) for k, v in value.items()}
        if isinstance(value, list):
            return [self._walk(v, forms) for v in value]
        if isinstance(value, tuple):
            return tuple(self._walk(v, forms) for v in value)
        return value

    def _rewrite(self, text: str, forms: tuple[str, ...]) -> str:
        pattern = self._pattern
        # Again until none is left: a replacement may join with what follows it into
        # another value (a secret "ted]xyz" after one that became "[redacted]"). This
        # ends, since every match takes at least one character that was not a marker
        # (a value made of marker characters alone is never remembered).
        while True:
            text = pattern.sub(REDACTED, text)
            if not any(form in text for form in forms):
                return text


def _forms(value: str) -> set[str]:
    forms = {
        value,
        repr(value)[1:-1],
        # repr as it is inside a longer text that holds both kinds of quote
        repr(value + '"')[1:-2],
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }
    return {f for f in forms if len(f) >= MIN_REDACTED_CHARS}


def _within_marker(value: str) -> bool:
    return value in REDACTED * (len(value) // len(REDACTED) + 2)


_known = SecretRegistry()


def known() -> bool:
    """Whether any secret is remembered (else nothing needs redacting)."""
    return bool(_known)


def remember(value: str) -> bool:
    """Redact ``value`` from now on (see :meth:`SecretRegistry.remember`)."""
    return _known.remember(value)


def redact(value: _T) -> _T:
    """``value`` with every secret the daemon resolved replaced with :data:`REDACTED`
    (see :meth:`SecretRegistry.redact`)."""
    return _known.redact(value)


def redact_text(text: str) -> str:
    """``text`` with every secret the daemon resolved replaced with :data:`REDACTED`."""
    return _known.redact_text(text)


def resolve_secret(
    value: str, base_dir: Path, *, what: str = "a secret", literal_is_secret: bool = True
) -> str:
    """The secret behind ``value``, remembered for redaction.

    :param what: what it is for, named in errors (``"a webhook secret"``)
    :param literal_is_secret: whether a value given as itself (not ``env:``/``file:``)
        is a secret too; not for a header, say, where a literal ``application/json`` is
        no secret and must not be redacted everywhere
    :raises CuedError: if the variable is unset or the file unreadable
    """
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise CuedError(f"environment variable {name!r} (for {what}) is not set")
        resolved = os.environ[name]
    elif value.startswith("file:"):
        path = base_dir / value[5:]
        try:
            resolved = path.read_text().strip()
        except OSError as exc:
            raise CuedError(
                f"cannot read the file {str(path)!r} (for {what}): {exc.strerror}"
            ) from exc
    elif literal_is_secret:
        resolved = value
    else:
        return value
    remember(resolved)
    return resolved


def remember_secret(value: str, base_dir: Path, *, literal_is_secret: bool = True) -> None:
    """Resolve ``value`` now only to remember it for redaction, ignoring a failure: for
    secrets used later (an alert channel's), which a task might print before then. The
    failure is reported where the secret is used."""
    try:
        resolve_secret(value, base_dir, literal_is_secret=literal_is_secret)
    except CuedError:
        pass
