"""The configuration: models, loading and checking (errors name the file and line).

The models live in :mod:`cued.daemon.config.models`; they are re-exported here because
every part of the daemon reads them.
"""

from cued.daemon.config.models import *
from cued.daemon.config.models import __all__ as __all__
