"""A popularity candidate source: the simplest real next-item model, for baselines, drills and benchmarks.

Ranks items by how often they occur in the training sequences, excluding each history's own items. Cheap
enough to serve thousands of requests a second on one core, so the candidate service can be exercised
(load, faults) without training an LLM first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lsc4rec.models.llm.candidates import CandidateList

__all__ = ["PopularitySource"]


class PopularitySource:
    """Candidate source ranking items by training-set popularity, excluding each history's items.

    Scores are add-one smoothed log-probabilities ``log((count + 1) / (total + num_items))``, so the ranking
    is a real (if simple) next-item model and items never seen in training still get a finite score.
    """

    def __init__(self, train_sequences: Sequence[Sequence[int]], num_items: int, max_history: int) -> None:
        """Count item occurrences in ``train_sequences`` (1-based ids up to ``num_items``)."""
        flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in train_sequences if len(s)])
        counts = np.bincount(flat, minlength=num_items + 1)[1:].astype(np.float64) + 1.0
        self._log_probs = np.log(counts / counts.sum())
        # Most popular first; ties by item id (stable sort) so the ranking is deterministic.
        self._order = np.argsort(-counts, kind="stable").astype(np.int64) + 1
        self._num_items = num_items
        self._max_history = max_history
        self.model_version = f"popularity-{num_items}-items"

    @property
    def num_items(self) -> int:
        """Catalogue size."""
        return self._num_items

    @property
    def max_history(self) -> int:
        """Longest history accepted (the dataset's usual model context)."""
        return self._max_history

    def recommend(self, histories: Sequence[Sequence[int]], n: int) -> CandidateList:
        """The ``n`` most popular items outside each history (empty slots if the catalogue runs out)."""
        items = np.zeros((len(histories), n), dtype=np.int64)
        scores = np.full((len(histories), n), -np.inf, dtype=np.float32)
        for row, history in enumerate(histories):
            seen = np.asarray(history, dtype=np.int64)
            # The top n + |history| items always contain the top n outside the history.
            head = self._order[: n + len(seen)]
            ranked = head[~np.isin(head, seen)][:n]
            items[row, : len(ranked)] = ranked
            scores[row, : len(ranked)] = self._log_probs[ranked - 1]
        return CandidateList(items, scores)
