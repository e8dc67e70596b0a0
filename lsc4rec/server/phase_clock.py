"""Where a run's time went: seconds per phase (warm start, cloud, rounds, the devices' test, the report).

The ServerApp times each phase of :func:`lsc4rec.server.federated_run.run_federated` with one
:class:`PhaseClock`; the seconds go into the run's summary (``phase_seconds``) and one log line, so a user
sees which part of the budget each part of the system took without a profiler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PhaseClock"]

logger = logging.getLogger(__name__)


class PhaseClock:
    """Wall-clock seconds per named phase, in the order the phases first ran."""

    def __init__(self) -> None:
        """An empty clock."""
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the body as phase ``name`` (a phase that runs twice adds up)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def report(self) -> dict[str, float]:
        """Seconds per phase, rounded to a tenth, and log them as one line."""
        rounded = {name: round(seconds, 1) for name, seconds in self.seconds.items()}
        logger.info(
            "where the time went: %s",
            ", ".join(f"{name} {seconds:.0f} s" for name, seconds in rounded.items()),
        )
        return rounded
