"""The ``cued`` command: a thin face over :mod:`cued.daemon.ops`, as the API and the UI are.

What changes state goes to the running daemon over its control socket (the API); with no
daemon on the state file, the CLI opens a runner of its own (the assembly's) and calls the
same :mod:`cued.daemon.ops.commands`. Reads go to the state file through
:class:`cued.daemon.ops.queries.Queries` (``cued.daemon.assembly.open_reads``), knowing
only where it is (:mod:`cued.daemon.cli.reads`).

Errors are one clear line on stderr, never a traceback: exit status 2 for an invalid
configuration or usage, 1 for anything else that went wrong.
"""

from cued.daemon.cli.main import main

__all__ = ["main"]
