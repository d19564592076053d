"""Notice when kopf peering pauses this replica (standby) or resumes it, and tell `metrics`.

kopf has no hook for it: its peering engine (`kopf._core.engines.peering`, the pinned kopf 1.45.2) only logs
"Pausing operations in favour of ..." / "Pausing all operators, including self" and "Resuming operations
after the pause". A logging filter on that logger reads those records (it never drops one); `main`'s startup
hook installs it. An integration test with two real replicas fails if kopf rewords them.
"""

from __future__ import annotations

import logging
from typing import Final

from kubegraft_operator import metrics

KOPF_PEERING_LOGGER: Final = "kopf._core.engines.peering"
PAUSING: Final = ("Pausing operations in favour of", "Pausing all operators, including self")
RESUMING: Final = "Resuming operations after the pause"


class PeeringStateFilter(logging.Filter):
    """Calls `metrics.standby()` / `metrics.active()` on kopf's pause / resume records; keeps every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith(PAUSING):
            metrics.standby()
        elif message.startswith(RESUMING):
            metrics.active()
        return True


def watch_kopf_peering() -> None:
    """Install the filter once (idempotent). INFO is kept on kopf's peering logger so `--quiet` cannot hide
    the pause from it."""
    logger = logging.getLogger(KOPF_PEERING_LOGGER)
    if not any(isinstance(f, PeeringStateFilter) for f in logger.filters):
        logger.addFilter(PeeringStateFilter())
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
