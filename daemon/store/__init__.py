"""Durable state: the rows and the Store Protocol, and the stores behind it (SQLite, and
PostgreSQL).

The rows and the Protocol (:mod:`cued.daemon.store.rows`) are re-exported here: the rest
of the daemon knows the Protocol, only the assembly knows which store it opened.
"""

from cued.daemon.store.rows import *
from cued.daemon.store.rows import __all__ as __all__
