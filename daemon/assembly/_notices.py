"""What a session tells systemd (and ``cued status``) beyond its state: the progress the
watchdog checks (:func:`_progress`) and each reload (:class:`_ReloadNotices`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cued.daemon.ops.status import Reload
from cued.daemon.service.watchdog import Progress, ServiceNotices

if TYPE_CHECKING:
    from cued.daemon.runtime.intake import DaemonIntake
    from cued.daemon.runtime.reload import ReloadOutcome
    from cued.daemon.runtime.supervision import Supervision
    from cued.daemon.store import Store


def _progress(store: Store, intake: DaemonIntake, supervision: Supervision) -> Progress:
    return Progress(
        writer_stalled_s=store.writer_stalled_s(),
        intake_stalled_s=intake.stalled_s(),
        ended_sources=tuple(supervision.ended_sources()),
    )


class _ReloadNotices:
    """Tells systemd (``RELOADING=1``, then ``READY=1``) and ``cued status`` of each
    reload."""

    def __init__(self, notices: ServiceNotices, supervision: Supervision) -> None:
        self._notices = notices
        self._supervision = supervision

    def reload_began(self) -> None:
        self._notices.reloading()

    def reload_ended(self, outcome: ReloadOutcome) -> None:
        error = "; ".join(outcome.problems) or None
        self._supervision.reloaded(
            Reload(outcome.ended_at, "applied" if outcome.applied else "refused", error),
            outcome.version,
        )
        self._notices.ready()
