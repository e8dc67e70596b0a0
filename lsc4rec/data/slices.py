"""Where knowledge from outside the device should matter: rare targets, cold users and items new to devices.

The slices every research experiment reports (issue 19 of the project's tracker):

- ``rare_targets``: test users whose target item has at most :data:`RARE_TARGET_MAX` interactions in the
  device's training data;
- ``cold_users``: test users with at most :data:`COLD_USER_MAX` training items;
- ``new_items``: test users whose target is one of the catalogue's newest items, which the devices never
  train on (:func:`newest_items` picks them, :func:`without_items` removes them from training sequences);
  only text (which the cloud has for every item) can tell a model anything about them.

An item's arrival time is its first interaction: the real timestamp where the dataset has one (MovieLens) and
otherwise its earliest *relative position* in any user's sequence (0 = a user's first item, 1 = a user's
last), the only clock a timestamp-free sequence file (Beauty) offers. "The last 5% of time" is read as the
newest 5% of the catalogue by arrival (ties broken by a seeded shuffle), which both clocks support.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from lsc4rec.data.split import LeaveOneOutSplit

__all__ = [
    "COLD_USER_MAX",
    "NEW_ITEM_SHARE",
    "RARE_TARGET_MAX",
    "NewItems",
    "evaluation_slices",
    "item_counts",
    "newest_items",
    "without_items",
]

#: A test target with at most this many training interactions is rare.
RARE_TARGET_MAX = 4
#: A user with at most this many training items is cold.
COLD_USER_MAX = 4
#: Share of the catalogue (newest by arrival) held out of device training as new items.
NEW_ITEM_SHARE = 0.05


@dataclass(frozen=True)
class NewItems:
    """The items held out of device training as new, and how they were chosen."""

    items: frozenset[int]
    share: float
    #: ``timestamp`` (real time of first interaction) or ``position`` (earliest relative sequence position).
    clock: str
    #: Arrival time of the oldest new item, on ``clock``.
    since: float

    def report(self) -> dict[str, float | int | str]:
        """A JSON-ready summary."""
        return {"items": len(self.items), "share": self.share, "clock": self.clock, "since": self.since}


def _arrival_times(split: LeaveOneOutSplit) -> tuple[np.ndarray, str]:
    """First-interaction time of every item ``[num_items + 1]`` (inf for unseen) and the clock used."""
    arrival = np.full(split.num_items + 1, np.inf)
    full = split.train_sequences(include_test=True)
    times = split.timestamps
    if times is not None:
        for sequence, stamps in zip(full, times, strict=True):
            np.minimum.at(arrival, np.asarray(sequence, dtype=np.int64), np.asarray(stamps, dtype=np.float64))
        return arrival, "timestamp"
    for sequence in full:
        if not sequence:
            continue
        position = np.arange(len(sequence), dtype=np.float64) / max(len(sequence) - 1, 1)
        np.minimum.at(arrival, np.asarray(sequence, dtype=np.int64), position)
    return arrival, "position"


def newest_items(split: LeaveOneOutSplit, share: float = NEW_ITEM_SHARE, seed: int = 0) -> NewItems:
    """The newest ``share`` of the catalogue by arrival (first interaction), ties broken by ``seed``."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"new-item share must be in (0, 1), got {share}")
    arrival, clock = _arrival_times(split)
    items = np.arange(1, split.num_items + 1)
    known = items[np.isfinite(arrival[1:])]
    count = max(1, round(share * len(known)))
    # lexsort: last key is primary; the seeded shuffle breaks ties among equal arrival times.
    tie_break = np.random.default_rng(seed).permutation(len(known))
    order = np.lexsort((tie_break, -arrival[known]))
    chosen = known[order[:count]]
    return NewItems(
        items=frozenset(int(i) for i in chosen),
        share=float(share),
        clock=clock,
        since=round(float(arrival[chosen].min()), 4),
    )


def without_items(sequences: Iterable[Sequence[int]], items: Iterable[int]) -> list[list[int]]:
    """``sequences`` with every interaction with ``items`` removed (order kept; nothing else dropped)."""
    held_out = set(items)
    return [[i for i in sequence if i not in held_out] for sequence in sequences]


def item_counts(sequences: Iterable[Sequence[int]], num_items: int) -> np.ndarray:
    """Interactions per item ``[num_items + 1]`` in ``sequences``."""
    counts = np.zeros(num_items + 1, dtype=np.int64)
    for sequence in sequences:
        np.add.at(counts, np.asarray(sequence, dtype=np.int64), 1)
    return counts


def evaluation_slices(
    split: LeaveOneOutSplit,
    train_sequences: Sequence[Sequence[int]] | None = None,
    new_items: NewItems | None = None,
) -> dict[str, list[int]]:
    """Test users (rows of ``split``) by situation: all, rare/popular targets, cold/warm users, new items.

    Counts come from ``train_sequences`` (what the device trains on; default: the split's own training
    sequences). ``new_items`` adds the ``new_items`` slice (targets among them).
    """
    sequences = split.train_sequences() if train_sequences is None else train_sequences
    counts = item_counts(sequences, split.num_items)
    users = range(len(split.train))
    targets = split.test_targets
    slices = {
        "all": list(users),
        "rare_targets": [u for u in users if counts[targets[u]] <= RARE_TARGET_MAX],
        "popular_targets": [u for u in users if counts[targets[u]] > RARE_TARGET_MAX],
        "cold_users": [u for u in users if len(split.train[u]) <= COLD_USER_MAX],
        "warm_users": [u for u in users if len(split.train[u]) > COLD_USER_MAX],
    }
    if new_items is not None:
        slices["new_items"] = [u for u in users if targets[u] in new_items.items]
    return slices
