"""Aggregation rules for model updates: example-weighted mean (FedAvg), coordinate-wise median, trimmed mean.

Pure numpy, no Flower: the strategy feeds them the validated replies of one round. The means sum through
:class:`~lsc4rec.strategies.exact_sum.ReproducibleSum`: the same bits in any order of the replies, and the
same bits as the streaming fold (:mod:`.train_fold`) that adds each reply as it arrives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from lsc4rec.strategies.exact_sum import ReproducibleSum

AGGREGATION_RULES = ("fedavg", "median", "trimmed_mean")


def _stack(updates: Sequence[Mapping[str, np.ndarray]], key: str) -> np.ndarray:
    return np.stack([np.asarray(update[key], dtype=np.float64) for update in updates])


def aggregate_arrays(
    updates: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float],
    rule: str = "fedavg",
    trim_fraction: float = 0.1,
) -> dict[str, np.ndarray]:
    """Combine per-node arrays (same keys, shapes and dtypes) into one set with ``rule``.

    ``fedavg``: mean weighted by ``weights`` (the nodes' example counts). ``median``: coordinate-wise median
    (unweighted; robust to a minority of arbitrary updates). ``trimmed_mean``: coordinate-wise mean after
    dropping the ``floor(trim_fraction * n)`` largest and smallest values per coordinate (Yin et al. 2018).
    Integer arrays (e.g. counters) are averaged and rounded back to their dtype. FedAvg is
    ``sum(weight * update) / sum(weights)``, the sum independent of the order (:func:`weighted_sum`).
    """
    if not updates:
        raise ValueError("no updates to aggregate")
    if rule not in AGGREGATION_RULES:
        raise ValueError(f"unknown aggregation rule {rule!r}; choose one of {AGGREGATION_RULES}")
    if len(weights) != len(updates):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    weight = np.asarray(weights, dtype=np.float64)
    if rule == "fedavg" and (not np.all(weight >= 0) or weight.sum() <= 0):
        raise ValueError(f"FedAvg weights must be non-negative with a positive sum, got {list(weights)}")
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    out: dict[str, np.ndarray] = {}
    for key, reference in updates[0].items():
        dtype = np.asarray(reference).dtype
        if rule == "fedavg":
            # A running sum: memory stays one binned float64 sum of the array whatever the node count
            # (stacking 100 replies of Beauty's item table alone would take 1.2 GB).
            total = weighted_sum(
                np.shape(reference), ((u[key], w) for u, w in zip(updates, weights, strict=True))
            )
            out[key] = total.total(math.fsum(float(w) for w in weights), dtype)
            continue
        if rule == "median":
            combined = np.median(_stack(updates, key), axis=0)
        else:
            cut = math.floor(trim_fraction * len(updates))
            ordered = np.sort(_stack(updates, key), axis=0)
            combined = ordered[cut : len(updates) - cut].mean(axis=0)
        out[key] = (
            np.rint(combined).astype(dtype) if np.issubdtype(dtype, np.integer) else combined.astype(dtype)
        )
    return out


def weighted_sum(
    shape: Sequence[int], terms: Iterable[tuple[np.ndarray, float | np.ndarray]]
) -> ReproducibleSum:
    """``sum(array * weight)`` over ``terms`` (a weight: a number, or one per row of the array), the same
    bits in any order of the terms: what FedAvg and row weighting sum, here and in the streaming fold."""
    total = ReproducibleSum(shape)
    for array, weight in terms:
        total.add(array, weight)
    return total


def count_weighted_rows(
    tables: Sequence[np.ndarray], counts: Sequence[np.ndarray], fallback: np.ndarray
) -> np.ndarray:
    """Row-wise mean of per-node tables ``[R, d]`` weighted by each node's per-row counts ``[R]``.

    For item-embedding tables (row i = item i) with counts = how often each node's data holds item i: a row
    is averaged over the nodes that actually saw the item, in proportion to how often, instead of being
    diluted by the nodes that never did (plain FedAvg divides an item seen on one of K nodes by K). Rows no
    node saw take ``fallback[row]`` (the rule's ordinary aggregate).
    """
    if len(tables) != len(counts) or not tables:
        raise ValueError(f"{len(tables)} tables but {len(counts)} count vectors")
    weight = np.stack([np.asarray(c, dtype=np.float64) for c in counts])  # [K, R]
    shape = np.shape(fallback)
    if weight.shape[1:] != shape[:1] or any(np.shape(t) != shape for t in tables):
        raise ValueError(f"counts {weight.shape} do not match tables {[np.shape(t) for t in tables][:3]}...")
    if (weight < 0).any():
        raise ValueError("row counts must be non-negative")
    return row_weighted_mean(
        weighted_sum(shape, zip(tables, weight, strict=True)),
        weighted_sum(shape[:1], ((c, 1.0) for c in weight)),
        fallback,
    )


def row_weighted_mean(sums: ReproducibleSum, counts: ReproducibleSum, fallback: np.ndarray) -> np.ndarray:
    """``sums / counts`` row by row (rows no node saw: ``fallback``'s), in ``fallback``'s dtype."""
    total = counts.total()
    out = sums.total(total, np.asarray(fallback).dtype)
    unseen = ~(total > 0)
    out[unseen] = np.asarray(fallback)[unseen]
    return out
