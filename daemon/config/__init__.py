"""The configuration: models, loading and checking (errors name the file and line).

The models live in :mod:`cued.daemon.config.models`; they are re-exported here because
every part of the daemon reads them. They are imported on first use, not with the
package: pydantic and the models cost ~0.2 s, and a part that needs only a module beside
them (``cued runs`` reads the ``[daemon]`` table alone, :mod:`.state`) does without.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cued.daemon.config.models import *

__all__ = [
    "BatchConfig",
    "CancelOnConfig",
    "Config",
    "DaemonConfig",
    "DebounceConfig",
    "HttpConfig",
    "PipelineConfig",
    "RetentionConfig",
    "SourceConfig",
    "TaskConfig",
    "TelemetryConfig",
    "ThrottleConfig",
    "TriggerConfig",
    "load_config",
    "parse_config",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from cued.daemon.config import models

    return getattr(models, name)
