"""The daemon: wires store, runner and servers into one task group, and stops gracefully.

```
async with tracing, store, http client, task group:
    runner.serve        resumes unfinished runs, then runs what is submitted
    control API         on a Unix socket beside the state file (the CLI's way in; who may
                        use it: daemon/web/control.py), and
    HTTP front          on [http] listen: webhooks (and the same API)
    sources             each in the task group, handing events to intake
    alerts              sends the alert outbox (webhook, email, command), retrying
    retention           prunes what [retention] lets go, every prune_every
    signals             SIGTERM/SIGINT: sources stop, running tasks may finish for
                        `shutdown_grace`, the rest is cancelled (and runs again on restart);
                        SIGHUP: reload the configuration file (daemon/runtime/reload.py)
    systemd             READY=1 once all of the above is up, STATUS=, watchdog pings while
                        the daemon makes progress, RELOADING=1 then READY=1 around a
                        reload, STOPPING=1 at SIGTERM; HTTP on the sockets it passes
                        (daemon/service/)
```

With the state in PostgreSQL, all of the above but the servers, the signals and systemd
is one *session* on the database: a session that loses it (or its node's lease) is torn
down, the servers answer 503 meanwhile, and a new session starts once the database
answers (daemon/runtime/reconnect.py).

Where each part is:

```
_daemon.py    run_daemon: the process (the state's lock, the signals, the loop of
              sessions, reconnecting in place)
_faces.py     the servers (control socket, HTTP front) that outlive a session
_systemd.py   what systemd gave the process
_session.py   one session: the daemon on its store, from opening it until it stops or
              loses it (the API, the UI, the sources and the notices on its parts)
_parts.py     the parts a session opens (store, node, runner, intake, alerts), and
              open_runner/open_intake for a command when no daemon runs
_state.py     the state's lock and store; open_state, copy_state_between
_sources.py   the configured sources, with their routes on the web front
_peers.py     the other daemons on the same database, through their notices
_notices.py   what a session tells systemd and `cued status` (progress, reloads)
_info.py      DaemonInfo, what a started daemon tells whoever started it
```
"""

from __future__ import annotations

from cued.daemon.assembly._daemon import run_daemon
from cued.daemon.assembly._info import DaemonInfo
from cued.daemon.assembly._parts import open_intake, open_runner
from cued.daemon.assembly._state import copy_state_between, open_state
from cued.daemon.web.control_path import control_socket_path

__all__ = [
    "DaemonInfo",
    "control_socket_path",
    "copy_state_between",
    "open_intake",
    "open_runner",
    "open_state",
    "run_daemon",
]
