"""The device–cloud staleness regime of LSC4Rec: the cloud sees each user's history only up to ``lag`` ago.

The device always holds its user's real-time history; the cloud's copy misses the ``lag`` most recent
interactions (uploads are batched and delayed). With the leave-one-out split (train part, validation item,
test item) this gives, per evaluated user whose full sequence is ``s`` of length ``n``:

* device, test moment: history ``s[:n-1]``; cloud's stale prompt for it: ``s[:n-1-lag]``;
* device, validation moment: history ``s[:n-2]``; cloud's stale prompt: ``s[:n-2-lag]``;
* the cloud's training data is what it has seen at the test moment, ``s[:n-1-lag]``, whose last item is the
  cloud's own validation target (early stopping) and the rest its training sequence. Neither the device's
  validation item nor its test item is ever in the cloud's training data when ``lag >= 1``.

A request (the device uploading its real-time history) lets the cloud answer from ``s[:n-1]`` instead.
Users whose stale view is empty keep an empty prompt (the cloud then recommends from the bos token alone).

The cloud validates (early stopping) on the last item it holds of each user with at least two; with
``validation_users = N > 0`` only a seeded sample of N of them hold it out, and every other user trains on all
it has seen: on a short-history dataset, where the held-out item is a large share of what the cloud holds, the
cloud's models train on more without losing a reliable stopping signal.

Not every user need have uploaded at all: with ``users < 1`` the cloud holds only a seeded share of the users
(:func:`held_by_cloud`); the others' histories live on their devices alone (no training data, empty prompts),
which is what makes the devices' data worth learning from in the privacy experiments.

When time moves through a federated run (:mod:`lsc4rec.data.replay`), the cloud trains when the run starts,
so its training data is what it held then: each training part cut to what the device held at round 1, ``lag``
interactions fewer. The stale prompts stay those of the validation and test moments (the end of the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lsc4rec.data.replay import Replay
from lsc4rec.data.split import LeaveOneOutSplit

__all__ = ["CloudView", "cloud_view", "cloud_view_for", "held_by_cloud", "keep_held"]


@dataclass(frozen=True)
class CloudView:
    """What the cloud knows of every evaluated user (row u = internal user u), ``lag`` interactions late."""

    lag: int
    train: list[list[int]]
    valid_histories: list[list[int]]
    valid_targets: list[int]
    stale_valid_prompts: list[list[int]]
    stale_test_prompts: list[list[int]]
    #: Which evaluated users the cloud holds at all (``collab.cloud_users``; all True = every user).
    held: np.ndarray | None = None

    @property
    def num_users(self) -> int:
        """Evaluated users covered."""
        return len(self.stale_test_prompts)


def held_by_cloud(count: int, share: float, seed: int) -> np.ndarray:
    """Which of ``count`` users the cloud holds at all: ``round(share x count)`` of them by a seeded draw."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"collab.cloud_users must be in (0, 1], got {share}")
    held = np.zeros(count, dtype=bool)
    chosen = np.random.default_rng(seed).permutation(count)[: round(share * count)]
    held[chosen] = True
    return held


def keep_held(sequences: list[list[int]], held: np.ndarray) -> list[list[int]]:
    """``sequences`` with those of users the cloud does not hold emptied."""
    return [list(seq) if keep else [] for seq, keep in zip(sequences, held, strict=True)]


def cloud_view(
    split: LeaveOneOutSplit,
    lag: int = 2,
    replay: Replay | None = None,
    users: float = 1.0,
    seed: int = 0,
    validation_users: int = 0,
) -> CloudView:
    """The cloud's stale data for ``split`` (see the module docstring for exactly what it holds).

    ``replay`` (time moving through a federated run): the cloud's training data is what it held at round 1.
    ``users``: the share of users the cloud holds at all (drawn with ``seed``; 1 = every user).
    ``validation_users``: how many users hold their last seen item out for the cloud's validation (a seeded
    sample; 0 = every user with at least two items).
    """
    if lag < 0:
        raise ValueError(f"collab.cloud_lag must be >= 0, got {lag}")
    if validation_users < 0:
        raise ValueError(
            f"collab.cloud_validation_users must be >= 0 (0 = every user), got {validation_users}"
        )
    held = held_by_cloud(len(split.train), users, seed)
    held_short = held_by_cloud(len(split.train_only), users, seed + 1)
    test_histories = keep_held(split.test_histories(), held)
    valid_histories = keep_held(split.valid_histories(), held)
    stale_test = [h[: max(len(h) - lag, 0)] for h in test_histories]
    stale_valid = [h[: max(len(h) - lag, 0)] for h in valid_histories]
    moving = replay is not None and replay.enabled
    seen_at_start = keep_held(replay.cloud_sequences(split.train, 1, lag), held) if moving else stale_test
    train, cloud_valid_histories, cloud_valid_targets = [], [], []
    validating = _validating(seen_at_start, validation_users, seed)
    for seen, validated in zip(seen_at_start, validating, strict=True):
        if validated:
            cloud_valid_histories.append(seen[:-1])
            cloud_valid_targets.append(seen[-1])
            train.append(seen[:-1])
        elif seen:
            train.append(seen)
    # Users too short to be evaluated still upload their (stale) sequences.
    if moving:
        train += [
            seq for seq in keep_held(replay.cloud_sequences(split.train_only, 1, lag), held_short) if seq
        ]
    else:
        train += [
            seq[: max(len(seq) - lag, 0)]
            for seq, keep in zip(split.train_only, held_short, strict=True)
            if keep and len(seq) > lag
        ]
    return CloudView(
        lag=lag,
        train=train,
        valid_histories=cloud_valid_histories,
        valid_targets=cloud_valid_targets,
        stale_valid_prompts=stale_valid,
        stale_test_prompts=stale_test,
        held=held,
    )


class CloudHolding(Protocol):
    """What the cloud holds (the ``collab`` settings' part that :func:`cloud_view_for` reads)."""

    cloud_lag: int
    cloud_users: float
    cloud_validation_users: int


def cloud_view_for(
    split: LeaveOneOutSplit, collab: CloudHolding, seed: int, replay: Replay | None = None
) -> CloudView:
    """:func:`cloud_view` as a run's ``collab.cloud_*`` settings describe it."""
    return cloud_view(
        split, collab.cloud_lag, replay, collab.cloud_users, seed, collab.cloud_validation_users
    )


def _validating(seen: list[list[int]], count: int, seed: int) -> np.ndarray:
    """Which users hold their last seen item out for validation: all with two or more items (``count`` 0),
    else a seeded sample of ``count`` of them."""
    eligible = np.array([len(items) >= 2 for items in seen], dtype=bool)
    if count == 0 or count >= int(eligible.sum()):
        return eligible
    chosen = np.random.default_rng([seed, 7]).choice(np.flatnonzero(eligible), size=count, replace=False)
    validating = np.zeros(len(seen), dtype=bool)
    validating[chosen] = True
    return validating
