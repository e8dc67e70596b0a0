"""Dealing users (devices) to federated nodes: a seeded permutation cut in near-equal shards."""

from __future__ import annotations

import numpy as np

__all__ = ["federation_size", "partition_users"]


def partition_users(num_users: int, num_partitions: int, partition_id: int, seed: int) -> np.ndarray:
    """Internal user ids of shard ``partition_id`` (sorted): a seeded permutation cut in near-equal parts."""
    if num_partitions < 1:
        raise ValueError(f"num-partitions must be >= 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} outside 0..{num_partitions - 1}")
    if num_partitions > num_users:
        raise ValueError(f"{num_partitions} partitions for only {num_users} users: some nodes would be empty")
    order = np.random.default_rng(seed).permutation(num_users)
    return np.sort(np.array_split(order, num_partitions)[partition_id])


def federation_size(num_users: int, num_partitions: int, users_per_node: int = 0) -> int:
    """How many devices ``num_partitions`` nodes host together, each capped at ``users_per_node`` (0: no cap).

    Shards are the near-equal cuts of :func:`partition_users` (sizes differ by at most one).
    """
    if num_partitions < 1:
        raise ValueError(f"num-partitions must be >= 1, got {num_partitions}")
    base, extra = divmod(num_users, num_partitions)
    sizes = [base + (1 if index < extra else 0) for index in range(num_partitions)]
    return sum(min(size, users_per_node) if users_per_node > 0 else size for size in sizes)
