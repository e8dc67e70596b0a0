"""Streaming aggregation: fold each train reply into the round's running aggregate as it arrives.

The ServerApp no longer holds every reply of a round (1,000 nodes × 7 MB = 7 GB) before aggregating: it pulls
replies in small chunks, and :class:`TrainFold` validates each as :class:`~lsc4rec.strategies.srm.SRMStrategy`
does, adds its weighted arrays to a running sum and drops them; what stays of a reply is its small records
(metrics, row counts, SOLID's statistics) for the round's metrics and the loop's extensions.

Bit for bit the aggregate of :meth:`SRMStrategy.aggregate_train` on the same replies, in any arrival order:
both sum through :class:`~lsc4rec.strategies.exact_sum.ReproducibleSum` (the same bits in any order of the
terms) with the same terms (:func:`~lsc4rec.strategies.aggregation.weighted_sum`), divide by the exactly
rounded sum of the weights, and compute the metrics over the replies in digest order. Only where that holds:
FedAvg-style means (``fedavg``, FedProx, a server optimizer's pseudo-gradient, row weighting).
:func:`train_fold` answers None for the rest, which keep the whole-round path: median and trimmed mean (they
need every update at once), the bounds taken from the round's median (``max_example_ratio``,
``update_norm_ratio``), central DP (Flower's wrappers see the whole round) and Flower strategies.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from lsc4rec.messages import ARRAYS, METRICS, NUM_EXAMPLES, ROW_COUNTS
from lsc4rec.strategies.aggregation import row_weighted_mean
from lsc4rec.strategies.exact_sum import ReproducibleSum
from lsc4rec.strategies.srm import SRMStrategy, content_bytes, record_failure, update_digest

__all__ = ["TrainFold", "train_fold"]


def train_fold(strategy: object, server_round: int) -> TrainFold | None:
    """A fold for this round's train replies, or None where folding would not give the same bits."""
    if isinstance(strategy, SRMStrategy) and strategy.streams:
        return TrainFold(strategy, server_round)
    return None


class TrainFold:
    """One round's train replies folded one at a time (see the module docstring)."""

    def __init__(self, strategy: SRMStrategy, server_round: int) -> None:
        """Fold the replies of ``server_round`` to ``strategy``'s train instructions."""
        self.strategy = strategy
        self.server_round = server_round
        self.failures_before = len(strategy.failures)
        self.sums = {key: ReproducibleSum(np.shape(value)) for key, value in strategy.reference.items()}
        self.row_sums: dict[str, tuple[ReproducibleSum, ReproducibleSum]] = {}
        self.row_keys: set[str] | None = None
        self.weights: list[float] = []
        self.valid: list[tuple[str, Message]] = []
        self.stopped: list[Message] = []
        self.seen: set[int] = set()
        self.received = 0

    def add(self, reply: Message) -> Message:
        """Validate and fold one reply; return it without its update (what the extensions read)."""
        if not reply.has_error():
            self.received += content_bytes(reply.content)
        if self.strategy.privacy_stop(self.server_round, reply):
            self.stopped.append(reply)
            return reply
        node = self.strategy.sender("train", reply)
        self.seen.add(node)
        reason = self.strategy.check_update(reply)
        if reason is not None:
            record_failure(self.strategy.failures, self.server_round, "train", node, reason)
        else:
            self.valid.append((update_digest(reply), reply))
            self._fold(reply)
        if not reply.has_error() and ARRAYS in reply.content:
            del reply.content[ARRAYS]
        return reply

    def _fold(self, reply: Message) -> None:
        """Add a valid reply's weighted arrays (and its row-weighted tables) to the running sums."""
        content = reply.content
        weight = (
            1.0 if self.strategy.uniform_weights else float(content.metric_records[METRICS][NUM_EXAMPLES])
        )
        self.weights.append(weight)
        arrays = content.array_records[ARRAYS]
        for key, total in self.sums.items():
            total.add(arrays[key].numpy(), weight)
        if not self.strategy.row_weighting:
            return
        counts = content.array_records.get(ROW_COUNTS)
        keys = set(counts.keys()) if counts is not None else set()
        self.row_keys = keys if self.row_keys is None else self.row_keys & keys
        for key in sorted(self.row_keys):
            node_counts = np.asarray(counts[key].numpy(), dtype=np.float64)
            if key not in self.row_sums:
                shape = self.sums[key].shape
                self.row_sums[key] = (ReproducibleSum(shape), ReproducibleSum(shape[:1]))
            sums, totals = self.row_sums[key]
            sums.add(arrays[key].numpy(), node_counts)
            totals.add(node_counts, 1.0)
        for key in set(self.row_sums) - self.row_keys:
            del self.row_sums[key]

    def finish(self) -> tuple[ArrayRecord | None, MetricRecord]:
        """Record the nodes that did not answer; the new global model (None: too few updates) and the round's
        metrics, as :meth:`SRMStrategy.aggregate_train` gives them for the same replies."""
        strategy = self.strategy
        strategy.record_timeouts(self.server_round, "train", self.seen)
        valid = [reply for _, reply in sorted(self.valid, key=lambda pair: pair[0])]
        failures = len(strategy.failures) - self.failures_before
        metrics = strategy.round_metrics(valid, self.stopped, self.received, failures)
        if not strategy.enough_updates(self.server_round, len(valid)):
            return None, MetricRecord(metrics)
        metrics["examples-capped"] = 0
        weight = math.fsum(self.weights)
        aggregate = {
            key: total.total(weight, strategy.reference[key].dtype) for key, total in self.sums.items()
        }
        for key, (sums, totals) in sorted(self.row_sums.items()):
            aggregate[key] = row_weighted_mean(sums, totals, aggregate[key])
        return strategy.adopt(aggregate, metrics)
