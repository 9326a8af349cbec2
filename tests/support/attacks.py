"""A config for the attacks on the API: one pipeline whose task does nothing."""

from __future__ import annotations

__all__ = ["API"]


API = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"
[pipelines.echo]
inputs = { name = "x" }
[pipelines.echo.tasks.say]
kind = "shell"
argv = ["true"]
"""
