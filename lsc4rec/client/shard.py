"""Which devices (users) a SuperNode hosts, and their local data.

Every device is one user. Users are dealt to ``num_partitions`` shards by a seeded permutation, so every node
(and every run) agrees on the assignment without talking to the others; ``users_per_node`` caps a shard.
A device's local data is its own sequence: the training part for local updates and the validation item for
client-side evaluation, the same split as the centralized baseline so the two are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from lsc4rec.data import LeaveOneOutSplit, RawDataset, leave_one_out, load_dataset
from lsc4rec.data.partition import federation_size, partition_users
from lsc4rec.data.replay import Replay


@dataclass(frozen=True)
class DeviceShard:
    """The devices of one SuperNode and their local sequences (internal item ids)."""

    partition_id: int
    num_partitions: int
    users: tuple[int, ...]
    train_sequences: tuple[tuple[int, ...], ...]
    valid_histories: tuple[tuple[int, ...], ...]
    valid_targets: tuple[int, ...]
    num_items: int
    #: Devices in the whole federation (all partitions): the population behind privacy's default δ.
    population: int = 0
    #: Each device's item after its validation item (leave-one-out test), for the run's final test phase.
    test_targets: tuple[int, ...] = ()

    @property
    def test_histories(self) -> tuple[tuple[int, ...], ...]:
        """Each device's history at the test moment: its training part and its validation item."""
        return tuple((*h, v) for h, v in zip(self.valid_histories, self.valid_targets, strict=True))

    def at_round(self, replay: Replay, server_round: int) -> DeviceShard:
        """This shard as its devices hold it when ``server_round`` starts (time moving, ``replay``)."""
        if not replay.enabled:
            return self
        return replace(
            self,
            train_sequences=tuple(map(tuple, replay.known_sequences(self.train_sequences, server_round))),
        )

    @property
    def num_devices(self) -> int:
        """Number of users (devices) on this node."""
        return len(self.users)

    def item_counts(self) -> np.ndarray:
        """How often each item occurs in the node's training sequences, ``[num_items + 1]`` (0 = padding)."""
        flat = np.fromiter((i for seq in self.train_sequences for i in seq), dtype=np.int64)
        return np.bincount(flat, minlength=self.num_items + 1).astype(np.int64)


@lru_cache(maxsize=4)
def cached_raw(name: str, path: str | None, data_format: str, kcore: int = 0) -> RawDataset:
    """Load a dataset once per process (a simulation actor serves many rounds and nodes), with the run's
    k-core filter (``data.kcore``: the devices must hold the users and items the server numbers)."""
    return load_dataset(name, path, data_format, kcore=kcore)


@lru_cache(maxsize=4)
def cached_split(name: str, path: str | None, data_format: str, kcore: int = 0) -> LeaveOneOutSplit:
    """Load and split a dataset once per process."""
    return leave_one_out(cached_raw(name, path, data_format, kcore))


def load_shard(
    name: str,
    path: str | None,
    data_format: str,
    partition_id: int,
    num_partitions: int,
    users_per_node: int = 0,
    seed: int = 0,
    kcore: int = 0,
) -> DeviceShard:
    """Build the shard of node ``partition_id``: its users (at most ``users_per_node`` if > 0) and data."""
    split = cached_split(name, path, data_format, kcore)
    users = partition_users(len(split.train), num_partitions, partition_id, seed)
    if users_per_node > 0:
        users = users[:users_per_node]
    return DeviceShard(
        partition_id=partition_id,
        num_partitions=num_partitions,
        users=tuple(int(u) for u in users),
        train_sequences=tuple(tuple(split.train[u]) for u in users),
        valid_histories=tuple(tuple(split.train[u]) for u in users),
        valid_targets=tuple(split.valid_targets[u] for u in users),
        test_targets=tuple(split.test_targets[u] for u in users),
        num_items=split.num_items,
        population=federation_size(len(split.train), num_partitions, users_per_node),
    )
