"""What a candidate generator returns and the interface every one of them offers (LLM, service client, ...).

The cloud LLM, the gRPC candidate service's client stub and any in-process stand-in all satisfy
:class:`CandidateSource`, so devices, the request policy and the experiments work with any of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["CandidateList", "CandidateSource"]


@dataclass(frozen=True)
class CandidateList:
    """Top-``n`` candidates for a batch of histories, best first.

    ``items [B, n]`` are 1-based item ids (0 = no candidate: the generator could not fill the slot, e.g. the
    catalogue minus the history has fewer than ``n`` items); ``scores [B, n]`` are the generator's sequence
    log-probabilities (``-inf`` at empty slots), non-increasing along each row.
    """

    items: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        if self.items.shape != self.scores.shape or self.items.ndim != 2:
            raise ValueError(
                f"items {self.items.shape} and scores {self.scores.shape} must be equal 2-D shapes [B, n]"
            )

    def __len__(self) -> int:
        return int(self.items.shape[0])


@runtime_checkable
class CandidateSource(Protocol):
    """Anything that recommends ``n`` candidate items for each history."""

    @property
    def num_items(self) -> int:
        """Catalogue size; valid item ids are 1..num_items."""
        ...

    @property
    def max_history(self) -> int:
        """Longest history accepted; longer ones are an error for a service, truncated by a model."""
        ...

    def recommend(self, histories: Sequence[Sequence[int]], n: int) -> CandidateList:
        """Top-``n`` items per history (never an item of that history, never a repeat), with scores."""
        ...
