"""The daemon's web UI at ``/ui/``: server-rendered pages, live through the API's event
stream, every action a call of the API (see :mod:`cued.daemon.web.ui.pages`)."""

from __future__ import annotations

from cued.daemon.web.ui.pages import with_ui as with_ui

__all__ = ["with_ui"]
