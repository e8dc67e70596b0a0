"""Hostile partitions of a drill: which partitions ``federated.faults`` lists, and the poisoned data a
hostile node with ``attack=poison`` trains on (the rest of the drill: :mod:`lsc4rec.client.fault_drills`)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from lsc4rec.client.shard import DeviceShard
from lsc4rec.settings import FaultSettings

__all__ = ["is_hostile", "listed", "poisoned_shard"]


def listed(value: str, partition_id: int) -> bool:
    """True when the comma-separated partition ids ``value`` name ``partition_id``."""
    names = str(value).replace(" ", "")
    return bool(names) and str(partition_id) in names.split(",")


def is_hostile(faults: FaultSettings, partition_id: int) -> bool:
    """True when ``federated.faults.hostile`` lists ``partition_id``."""
    return listed(faults.hostile, partition_id)


def poisoned_shard(shard: DeviceShard, faults: FaultSettings) -> DeviceShard:
    """``shard`` with every item id of its training sequences relabelled by one fixed random permutation
    when this partition is hostile with ``attack=poison`` (a model trained on it is well formed and of a
    normal norm, and wrong about every item); else ``shard`` unchanged."""
    if faults.attack != "poison" or not is_hostile(faults, shard.partition_id):
        return shard
    permutation = np.random.default_rng(shard.partition_id).permutation(shard.num_items) + 1
    relabel = np.concatenate([[0], permutation])

    def poison(sequences: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(int(i) for i in relabel[list(seq)]) if seq else () for seq in sequences)

    return replace(
        shard,
        train_sequences=poison(shard.train_sequences),
        valid_histories=poison(shard.valid_histories),
    )
