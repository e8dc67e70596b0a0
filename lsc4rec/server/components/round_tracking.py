"""Every round's row logged to the run's trackers (TensorBoard, MLflow, W&B) as the round ends.

The ServerApp owns the run's :class:`~lsc4rec.tracking.RunTracker` (it logs the warm start's epochs before
the rounds and the final table after them); this component logs the rounds in between, live, so a watching
``tensorboard --logdir outputs`` sees each round as it completes.
"""

from __future__ import annotations

from collections.abc import Sequence

from lsc4rec.server.components.loop_hooks import LoopExtension, LoopState
from lsc4rec.tracking import RunTracker

__all__ = ["RoundTracking"]


class RoundTracking(LoopExtension):
    """Log each round's row of ``metrics.json`` (train metrics and bytes, the nodes' and the server's
    evaluation, seconds, every component's section) under ``round/`` at step = the round."""

    name = "tracking"

    def __init__(self, tracker: RunTracker) -> None:
        """``tracker``: the run's tracker (opened and finished by the ServerApp, not by this component)."""
        self.tracker = tracker

    def round_end(self, server_round: int, state: LoopState, extensions: Sequence[LoopExtension]) -> None:
        """Log the round's row, now final (every extension's section is in it)."""
        self.tracker.log_round(state.history[-1])
