"""The fusion weight devices use: a fixed ``collab.alpha``, or (``auto``) the server's choice on the arrivals.

With time moving, every round the devices rank the interactions that arrive before seeing them, fusing the
cloud's list with their own ranking at every weight of ``collab.alpha_grid`` as well as at the current one.
Those arrivals are training interactions, never a validation or test item, so they are honest data to choose
the weight on: after each round the server averages each weight's NDCG@10 over the rounds so far and sends
the best weight with the next messages (the first round fuses at ``START``). The final test phase fuses at the
weight chosen after the last round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lsc4rec.messages import alpha_metric

__all__ = ["START", "FusionWeight"]

#: The weight of rounds before any arrival was seen (the middle of the grid's range).
START = 0.5


class FusionWeight:
    """``collab.alpha``: a number (kept) or ``auto`` (the best weight of ``grid`` on the arrivals so far)."""

    def __init__(self, setting: float | str, grid: Sequence[float]) -> None:
        """``setting`` is ``collab.alpha``; ``grid`` is ``collab.alpha_grid`` (used with ``auto``)."""
        self.auto = setting == "auto"
        if self.auto and not grid:
            raise ValueError("collab.alpha=auto needs a non-empty collab.alpha_grid")
        self.grid = tuple(float(a) for a in grid)
        self.fixed = START if self.auto else float(setting)
        self.sums = dict.fromkeys(self.grid, 0.0)
        self.rounds = 0

    @property
    def current(self) -> float:
        """The weight devices fuse with now (ties go to the smaller weight, the device's own ranking)."""
        if not self.auto or self.rounds == 0:
            return self.fixed
        return max(self.grid, key=lambda a: (self.sums[a], -a))

    def observe(self, client_metrics: Mapping[str, Any]) -> None:
        """Add one round's device-weighted serving metrics (rounds without them are skipped)."""
        if not self.auto or not all(alpha_metric(a) in client_metrics for a in self.grid):
            return
        for alpha in self.grid:
            self.sums[alpha] += float(client_metrics[alpha_metric(alpha)])
        self.rounds += 1

    def table(self) -> dict[str, float]:
        """Each weight's mean NDCG@10 over the rounds seen (empty for a fixed weight)."""
        if not self.auto or self.rounds == 0:
            return {}
        return {f"{a:g}": self.sums[a] / self.rounds for a in self.grid}

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to choose the same weight."""
        return {"sums": {f"{a:g}": v for a, v in self.sums.items()}, "rounds": self.rounds}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.sums = {a: float(state["sums"][f"{a:g}"]) for a in self.grid}
        self.rounds = int(state["rounds"])
