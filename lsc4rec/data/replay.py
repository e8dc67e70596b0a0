"""Time moving through a federated run: each user's most recent training interactions arrive round by round.

With ``federated.replay_interactions = H`` the last ``H`` interactions of every user's training part (at most
all but the first) have not happened yet when the run starts. They arrive in order, spread evenly over the
rounds: round ``r`` (1-based) trains on what its devices hold when it starts, ``known(n, r)`` items of a
training part of ``n``, and then *serves* the interactions that arrive during it, positions
``known(n, r) .. known(n, r + 1) - 1``, each predicted before it is seen and absorbed after (prequential).
After the last round every training interaction has arrived; the validation and test items (leave-one-out)
never enter training. With ``closing_round`` (``federated.replay_closing_round``) the arrivals are spread over
the first ``rounds - 1`` rounds and the last round serves none: its devices train on everything that arrived,
so the final model has seen the whole training part (as a device trains overnight on the day's
interactions). The cloud sees each interaction ``collab.cloud_lag`` interactions later than the device
(:mod:`lsc4rec.data.staleness`), so what it knew when the run started is ``known(n, 1) - lag`` items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Replay"]


@dataclass(frozen=True)
class Replay:
    """The arrival schedule of ``interactions`` recent interactions per user over ``rounds`` rounds.

    ``closing_round``: the last round serves no arrivals and trains on all of them (needs ``rounds >= 2``).
    """

    interactions: int
    rounds: int
    closing_round: bool = False

    def __post_init__(self) -> None:
        if self.interactions < 0:
            raise ValueError(f"federated.replay_interactions must be >= 0, got {self.interactions}")
        if self.rounds < 1:
            raise ValueError(f"federated.rounds must be >= 1, got {self.rounds}")
        if self.closing_round and self.enabled and self.rounds < 2:
            raise ValueError(
                "federated.replay_closing_round needs federated.rounds >= 2 (one round to serve the "
                f"arrivals, the last to train on them), got rounds={self.rounds}; for a run of one round set "
                "federated.replay_closing_round=false"
            )

    @property
    def arrival_rounds(self) -> int:
        """How many rounds serve arrivals: all of them, or all but the closing round."""
        return self.rounds - 1 if self.closing_round and self.enabled else self.rounds

    @property
    def enabled(self) -> bool:
        """Whether time moves at all (``interactions > 0``)."""
        return self.interactions > 0

    def replayed(self, length: int) -> int:
        """How many of a training part of ``length`` items arrive during the run (the first never does)."""
        return min(self.interactions, max(length - 1, 0))

    def known(self, length: int, server_round: int) -> int:
        """Items of a training part of ``length`` a device holds when round ``server_round`` starts.

        ``server_round = rounds + 1`` is the end of the run (the whole training part).
        """
        if not 1 <= server_round <= self.rounds + 1:
            raise ValueError(f"round {server_round} is outside 1..{self.rounds + 1}")
        replayed = self.replayed(length)
        passed = min(server_round - 1, self.arrival_rounds)
        return length - replayed + (replayed * passed) // self.arrival_rounds

    def arrivals(self, length: int, server_round: int) -> range:
        """Positions of the training part that arrive during round ``server_round``."""
        return range(self.known(length, server_round), self.known(length, server_round + 1))

    def known_sequences(self, sequences: Sequence[Sequence[int]], server_round: int) -> list[list[int]]:
        """Each sequence cut to what its device holds when ``server_round`` starts."""
        return [list(seq[: self.known(len(seq), server_round)]) for seq in sequences]

    def cloud_sequences(
        self, sequences: Sequence[Sequence[int]], server_round: int, lag: int
    ) -> list[list[int]]:
        """What the cloud holds of each sequence when ``server_round`` starts: ``lag`` interactions fewer."""
        return [list(seq[: max(self.known(len(seq), server_round) - lag, 0)]) for seq in sequences]
