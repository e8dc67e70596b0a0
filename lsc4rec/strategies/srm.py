"""The SRM strategy: sample nodes, send the global weights, validate replies, aggregate what arrived.

A Flower ``Strategy`` (Message API): it works under ``Strategy.start`` and the server's own round loop
(which adds checkpoints and resume). Faults never stop a round: a node that returns an error, times out, or
sends a malformed update (wrong keys, shapes or dtypes, non-finite values, no example count) is left out,
logged with its node id and reason, and counted in the round's metrics. The round aggregates when at least
``min_train_replies`` valid updates arrived; otherwise the global weights stay as they were and it says so.
The aggregate becomes the new global model through a server optimizer (:mod:`.server_optimizer`): by default
it is adopted as is (FedAvg); FedAvgM and FedAdam apply it as a pseudo-gradient with momentum / adaptivity.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from lsc4rec.messages import (
    ARRAYS,
    METRICS,
    NUM_EXAMPLES,
    PROXIMAL_MU,
    ROW_COUNTS,
    SERVER_ROUND,
    instruction_destinations,
    replying_node,
)
from lsc4rec.strategies.aggregation import AGGREGATION_RULES, aggregate_arrays, count_weighted_rows
from lsc4rec.strategies.privacy_metrics import is_privacy_stop, local_privacy_metrics
from lsc4rec.strategies.server_optimizer import ServerOptimizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeFailure:
    """One node's failed reply in one round."""

    round: int
    stage: str
    node_id: int
    reason: str


def content_bytes(content: RecordDict) -> int:
    """Payload size of a message's records (arrays, metrics, configs), as counted by Flower."""
    return sum(record.count_bytes() for record in content.values())


def update_digest(reply: Message) -> str:
    """Digest of a reply's update (its arrays), the same in every run that computes the same update."""
    content = reply.content
    return content.array_records[ARRAYS].object_id if ARRAYS in content.array_records else content.object_id


def _is_finite(array: np.ndarray) -> bool:
    return bool(np.isfinite(array).all()) if np.issubdtype(array.dtype, np.floating) else True


class _ReplyArrays(Mapping[str, np.ndarray]):
    """One reply's arrays as a read-only mapping that decodes an array each time it is read (no cache)."""

    def __init__(self, record: ArrayRecord) -> None:
        self._record = record

    def __getitem__(self, key: str) -> np.ndarray:
        return self._record[key].numpy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._record.keys())

    def __len__(self) -> int:
        return len(self._record)


class _ScaledUpdate(Mapping[str, np.ndarray]):
    """A reply's arrays with its update (arrays − global) scaled by ``scale``, decoded as it is read."""

    def __init__(self, arrays: _ReplyArrays, reference: Mapping[str, np.ndarray], scale: float) -> None:
        self._arrays, self._reference, self._scale = arrays, reference, scale

    def __getitem__(self, key: str) -> np.ndarray:
        value, reference = self._arrays[key], self._reference[key]
        if not np.issubdtype(value.dtype, np.floating):
            return value
        return (reference + self._scale * (value - reference)).astype(value.dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)


def record_failure(
    failures: list[NodeFailure], server_round: int, stage: str, node_id: int, reason: str
) -> None:
    """Append one node's failed reply to ``failures`` (the run's ``failed_nodes``) and log it."""
    failures.append(NodeFailure(server_round, stage, int(node_id), reason))
    logger.warning("round %d %s: node %d failed: %s", server_round, stage, node_id, reason)


def lower_median(values: Sequence[float]) -> float:
    """The lower median: the middle value, or the smaller of the two middle ones for an even count.

    The bounds' reference: with an odd count it is the median; with an even one no single node can raise it,
    so with two nodes the reference is the honest one's when the other inflates (the plain median, the mean of
    the two, would follow an inflated value halfway)."""
    ordered = sorted(float(value) for value in values)
    return ordered[(len(ordered) - 1) // 2]


def capped_example_counts(claims: Sequence[float], ratio: float) -> list[float]:
    """Each node's claimed example count, at most ``ratio`` × the round's lower median claim (0: as claimed).

    FedAvg weights a node by what it claims; an honest-looking update claiming 10^9 examples would make the
    aggregate its own. The round's (lower) median claim is what the server can justify without trusting any
    one node: a node may hold a few times the typical data, not orders of magnitude more."""
    if ratio <= 0 or not claims:
        return list(claims)
    cap = ratio * lower_median(claims)
    return [min(float(claim), cap) for claim in claims]


def update_norm_scales(norms: Sequence[float], ratio: float) -> list[float]:
    """The factor each node's update is scaled by so its L2 norm is at most ``ratio`` × the round's lower
    median update norm (0: no bound). Bounds how far one scaled or sign-flipped update moves the model."""
    if ratio <= 0 or not norms:
        return [1.0] * len(norms)
    bound = ratio * lower_median(norms)
    return [1.0 if norm <= bound or norm == 0 else bound / norm for norm in norms]


class _DecodedTables(Sequence[np.ndarray]):
    """The same table of several replies, decoded one at a time as it is read."""

    def __init__(self, updates: Sequence[Mapping[str, np.ndarray]], key: str) -> None:
        self._updates, self._key = updates, key

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [update[self._key] for update in self._updates[index]]
        return self._updates[index][self._key]

    def __len__(self) -> int:
        return len(self._updates)


class SRMStrategy(Strategy):
    """Federated aggregation of SRM weights (FedAvg, FedProx, median or trimmed mean) with fault tolerance."""

    def __init__(
        self,
        rule: str = "fedavg",
        trim_fraction: float = 0.1,
        proximal_mu: float = 0.0,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_replies: int = 1,
        min_available_nodes: int = 1,
        wait_for_nodes_seconds: float = 120.0,
        seed: int = 0,
        server_optimizer: ServerOptimizer | None = None,
        row_weighting: bool = False,
        uniform_weights: bool = False,
        max_example_ratio: float = 0.0,
        update_norm_ratio: float = 0.0,
    ) -> None:
        """Configure the aggregation ``rule`` (``AGGREGATION_RULES``), node sampling and server optimizer.

        ``row_weighting``: tables for which replies carry per-row counts (record ``row-counts``, e.g. item
        embeddings with item occurrence counts) are averaged row by row over the nodes that saw each row
        (:func:`count_weighted_rows`) instead of by ``rule``. ``uniform_weights``: every node counts the same
        instead of by its ``num-examples`` (what central DP's noise calibration assumes).
        ``max_example_ratio``: a node's claimed ``num-examples`` counts at most this many times the round's
        median claim (:func:`capped_example_counts`; 0 = as claimed). ``update_norm_ratio``: each update's
        L2 norm is bounded by this many times the round's median update norm (:func:`update_norm_scales`;
        0 = unbounded).
        """
        if rule not in AGGREGATION_RULES:
            raise ValueError(f"strategy.rule={rule!r} is not one of {AGGREGATION_RULES}")
        for name, value in (("fraction_train", fraction_train), ("fraction_evaluate", fraction_evaluate)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"strategy.{name} must be in (0, 1], got {value}")
        if proximal_mu < 0:
            raise ValueError(f"strategy.proximal_mu must be >= 0, got {proximal_mu}")
        if min_train_replies < 1:
            raise ValueError(f"strategy.min_train_replies must be >= 1, got {min_train_replies}")
        bounds = (("max_example_ratio", max_example_ratio), ("update_norm_ratio", update_norm_ratio))
        for name, value in bounds:
            if value != 0 and not value >= 1.0:
                raise ValueError(f"strategy.{name} must be 0 (off) or >= 1, got {value}")
        self.max_example_ratio = float(max_example_ratio)
        self.update_norm_ratio = float(update_norm_ratio)
        self.rule = rule
        self.trim_fraction = float(trim_fraction)
        self.proximal_mu = float(proximal_mu)
        self.fraction_train = float(fraction_train)
        self.fraction_evaluate = float(fraction_evaluate)
        self.min_train_replies = int(min_train_replies)
        self.min_available_nodes = int(min_available_nodes)
        self.wait_for_nodes_seconds = float(wait_for_nodes_seconds)
        self.rng = random.Random(seed)
        self.server_optimizer = server_optimizer or ServerOptimizer("none")
        self.row_weighting = bool(row_weighting)
        self.uniform_weights = bool(uniform_weights)
        self.failures: list[NodeFailure] = []
        self._reference: dict[str, tuple[tuple[int, ...], str]] = {}
        self._global: dict[str, np.ndarray] = {}
        self._expected: dict[str, set[int]] = {"train": set(), "evaluate": set()}
        # The round's instructions per stage: a reply is matched to the node its instruction went to (the
        # SuperLink answers for a node that went offline, with its own id as the sender).
        self._sent: dict[str, list[Message]] = {"train": [], "evaluate": []}
        # Their ids -> destinations, built once the grid has sent them (it sets the ids), per stage.
        self._destinations: dict[str, dict[str, int]] = {}
        self._bytes_sent: dict[str, int] = {"train": 0, "evaluate": 0}

    # ------------------------------------------------------------------ state for checkpoints
    def state_dict(self) -> dict:
        """Everything needed to continue identically after a restart (sampling RNG, failure log)."""
        return {
            "rng": self.rng.getstate(),
            "failures": [vars(f) for f in self.failures],
            "server_optimizer": self.server_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output."""
        rng_state = state["rng"]
        # JSON/pickle round trips may turn the inner tuple into a list; random.setstate needs tuples.
        self.rng.setstate((rng_state[0], tuple(rng_state[1]), rng_state[2]))
        self.failures = [NodeFailure(**f) for f in state["failures"]]
        self.server_optimizer.load_state_dict(state.get("server_optimizer", {}))

    # ------------------------------------------------------------------ helpers
    def _sample_nodes(self, grid: Grid, fraction: float) -> list[int]:
        deadline = time.monotonic() + self.wait_for_nodes_seconds
        node_ids = sorted(grid.get_node_ids())
        while len(node_ids) < self.min_available_nodes and time.monotonic() < deadline:
            time.sleep(1.0)
            node_ids = sorted(grid.get_node_ids())
        if len(node_ids) < self.min_available_nodes:
            raise RuntimeError(
                f"only {len(node_ids)} nodes connected after {self.wait_for_nodes_seconds:.0f} s; "
                f"federated.min_available_nodes={self.min_available_nodes}"
            )
        count = min(len(node_ids), max(1, math.ceil(fraction * len(node_ids))))
        return sorted(self.rng.sample(node_ids, count))

    def _messages(
        self,
        stage: str,
        message_type: str,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
    ) -> list[Message]:
        nodes = self._sample_nodes(grid, self.fraction_train if stage == "train" else self.fraction_evaluate)
        self._expected[stage] = set(nodes)
        self._bytes_sent[stage] = arrays.count_bytes() * len(nodes)
        messages = []
        for node_id in nodes:
            # A fresh ConfigRecord per node: a shared object would be one record for all messages.
            node_config = ConfigRecord(dict(config))
            node_config[SERVER_ROUND] = server_round
            node_config[PROXIMAL_MU] = self.proximal_mu
            content = RecordDict({"arrays": arrays, "config": node_config})
            messages.append(Message(content, dst_node_id=node_id, message_type=message_type))
        self._sent[stage] = messages
        self._destinations.pop(stage, None)
        return messages

    def sender(self, stage: str, reply: Message) -> int:
        """The node ``reply`` answers for among this round's ``stage`` instructions (see
        :func:`~lsc4rec.messages.replying_node`)."""
        if stage not in self._destinations:
            self._destinations[stage] = instruction_destinations(self._sent[stage])
        return replying_node(reply, self._destinations[stage])

    def _fail(self, server_round: int, stage: str, node_id: int, reason: str) -> None:
        record_failure(self.failures, server_round, stage, node_id, reason)

    def check_update(self, reply: Message) -> str | None:
        """Return why ``reply`` cannot be aggregated, or None when it is a valid update."""
        if reply.has_error():
            return f"client error {reply.error.code}: {reply.error.reason}"
        content = reply.content
        if ARRAYS not in content.array_records:
            return "reply has no 'arrays' ArrayRecord"
        arrays = content.array_records[ARRAYS]
        if set(arrays.keys()) != set(self._reference):
            missing = sorted(set(self._reference) - set(arrays.keys()))
            extra = sorted(set(arrays.keys()) - set(self._reference))
            return f"array keys differ from the global model (missing {missing[:3]}, unexpected {extra[:3]})"
        for key, (shape, dtype) in self._reference.items():
            array = arrays[key]
            if tuple(array.shape) != shape or array.dtype != dtype:
                return f"array {key!r} is {array.dtype}{tuple(array.shape)}, expected {dtype}{shape}"
        if not all(_is_finite(arrays[key].numpy()) for key in self._reference):
            return "update contains NaN or inf"
        if ROW_COUNTS in content.array_records:
            for key, counts in content.array_records[ROW_COUNTS].items():
                if key not in self._reference or tuple(counts.shape) != self._reference[key][0][:1]:
                    return f"row counts {key!r} {tuple(counts.shape)} match no table of the global model"
                values = counts.numpy()
                if not _is_finite(values) or (values < 0).any():
                    return f"row counts {key!r} hold negative or non-finite values"
        metrics = content.metric_records.get(METRICS)
        if metrics is None or NUM_EXAMPLES not in metrics:
            return f"reply has no MetricRecord 'metrics' with {NUM_EXAMPLES!r}"
        if not float(metrics[NUM_EXAMPLES]) > 0:
            return f"{NUM_EXAMPLES} = {metrics[NUM_EXAMPLES]} (must be > 0)"
        return None

    def _split_replies(self, server_round: int, stage: str, replies: Iterable[Message]) -> list[Message]:
        valid, seen = [], set()
        for reply in replies:
            node_id = self.sender(stage, reply)
            seen.add(node_id)
            reason = self.check_update(reply) if stage == "train" else self._check_metrics(reply)
            if reason is None:
                valid.append(reply)
            else:
                self._fail(server_round, stage, node_id, reason)
        self.record_timeouts(server_round, stage, seen)
        # Replies arrive in the order nodes finish; summing floats in that order would make the aggregate
        # depend on timing. Sorted by the digest of the update's arrays (not of the whole content: metrics
        # such as seconds differ run to run), equal updates aggregate to equal bits in any run.
        return sorted(valid, key=update_digest)

    def record_timeouts(self, server_round: int, stage: str, seen: set[int]) -> None:
        """Record a failure for every node of the round's ``stage`` that did not answer (not in ``seen``)."""
        for node_id in sorted(self._expected[stage] - seen):
            self._fail(server_round, stage, node_id, "no reply before the round timeout")

    @staticmethod
    def _check_metrics(reply: Message) -> str | None:
        if reply.has_error():
            return f"client error {reply.error.code}: {reply.error.reason}"
        metrics = reply.content.metric_records.get(METRICS)
        if metrics is None or NUM_EXAMPLES not in metrics or not float(metrics[NUM_EXAMPLES]) > 0:
            return f"reply has no MetricRecord 'metrics' with a positive {NUM_EXAMPLES!r}"
        return None

    @staticmethod
    def _weighted_metrics(replies: list[Message]) -> dict[str, float]:
        """Example-weighted mean of each metric over the replies that report it (a node that skipped a
        step, e.g. rerank training while the cloud was unreachable, does not count as a zero).

        Summed in node-id order: evaluation replies come in digest order of their whole content, seconds
        included, so the same metrics summed in that order differed run to run in the last bits."""
        totals: dict[str, float] = {}
        weights: dict[str, float] = {}
        weight_sum = 0.0
        for reply in sorted(replies, key=lambda reply: reply.metadata.src_node_id):
            metrics = reply.content.metric_records[METRICS]
            weight = float(metrics[NUM_EXAMPLES])
            weight_sum += weight
            for key, value in metrics.items():
                if key != NUM_EXAMPLES and isinstance(value, int | float):
                    totals[key] = totals.get(key, 0.0) + weight * float(value)
                    weights[key] = weights.get(key, 0.0) + weight
        out = {key: value / weights[key] for key, value in totals.items() if weights[key]}
        out[NUM_EXAMPLES] = weight_sum
        return out

    # ------------------------------------------------------------------ Strategy API
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global weights to a sampled fraction of the nodes."""
        self._reference = {key: (tuple(arrays[key].shape), arrays[key].dtype) for key in arrays}
        self._global = {key: arrays[key].numpy() for key in arrays}
        return self._messages("train", MessageType.TRAIN, server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the valid updates; None arrays when fewer than ``min_train_replies`` arrived."""
        replies = list(replies)
        failures_before = len(self.failures)
        # Nodes whose privacy budget is spent answer without training: neither an update nor a failure.
        stopped = [r for r in replies if self.privacy_stop(server_round, r)]
        valid = self._split_replies(server_round, "train", [r for r in replies if not is_privacy_stop(r)])
        received = sum(content_bytes(r.content) for r in replies if not r.has_error())
        metrics = self.round_metrics(valid, stopped, received, len(self.failures) - failures_before)
        if not self.enough_updates(server_round, len(valid)):
            return None, MetricRecord(metrics)
        # Each reply's arrays are decoded when a rule reads them and dropped after: the server holds the
        # replies Flower delivered and one running aggregate, not a second decoded copy of every update.
        updates: list[Mapping[str, np.ndarray]] = [
            _ReplyArrays(r.content.array_records[ARRAYS]) for r in valid
        ]
        claims = [float(r.content.metric_records[METRICS][NUM_EXAMPLES]) for r in valid]
        weights = capped_example_counts(claims, self.max_example_ratio)
        metrics["examples-capped"] = sum(w < c for w, c in zip(weights, claims, strict=True))
        if self.uniform_weights:
            weights = [1.0] * len(valid)
        if self.update_norm_ratio > 0:
            norms = [self._update_norm(update) for update in updates]
            scales = update_norm_scales(norms, self.update_norm_ratio)
            metrics["updates-bounded"] = sum(scale < 1.0 for scale in scales)
            updates = [
                _ScaledUpdate(u, self._global, scale) for u, scale in zip(updates, scales, strict=True)
            ]
        aggregate = aggregate_arrays(updates, weights, self.rule, self.trim_fraction)
        if self.row_weighting:
            self._weight_rows(aggregate, valid, updates)
        return self.adopt(aggregate, metrics)

    # ------------------------------------------------------------------ shared with the streaming fold
    @property
    def streams(self) -> bool:
        """Whether a round's updates can be folded one at a time as they arrive, to the same bits
        (:mod:`.train_fold`): FedAvg's weighted mean (and row weighting, any server optimizer) without the
        bounds that need the whole round's median. Median and trimmed mean need every update at once."""
        return self.rule == "fedavg" and self.max_example_ratio == 0 and self.update_norm_ratio == 0

    @property
    def reference(self) -> Mapping[str, np.ndarray]:
        """The global arrays of the round's train instructions (keys, shapes and dtypes of a valid update)."""
        return self._global

    def privacy_stop(self, server_round: int, reply: Message) -> bool:
        """Whether ``reply`` comes from a node whose privacy budget is spent; such a node is logged and no
        longer awaited this round."""
        if not is_privacy_stop(reply):
            return False
        node = self.sender("train", reply)
        logger.info("round %d: node %d has spent its privacy budget", server_round, node)
        self._expected["train"].discard(node)
        return True

    def round_metrics(
        self, valid: list[Message], stopped: list[Message], received: int, failures: int
    ) -> dict[str, float]:
        """The round's train metrics before aggregation: ``valid`` in digest order, ``stopped`` in arrival
        order, ``received`` payload bytes, ``failures`` this round."""
        metrics = self._weighted_metrics(valid)
        metrics.update(local_privacy_metrics(valid + stopped))
        metrics.update(
            {
                "privacy-stopped": len(stopped),
                "nodes-sampled": len(self._expected["train"]) + len(stopped),
                "valid-replies": len(valid),
                "failures": failures,
                "bytes-sent": self._bytes_sent["train"],
                "bytes-received": received,
                "aggregated": 0,
            }
        )
        return metrics

    def enough_updates(self, server_round: int, valid: int) -> bool:
        """Whether ``valid`` updates reach ``min_train_replies`` (if not, say that the weights stay)."""
        if valid >= self.min_train_replies:
            return True
        logger.error(
            "round %d: %d valid updates < strategy.min_train_replies=%d; global weights unchanged",
            server_round,
            valid,
            self.min_train_replies,
        )
        return False

    def adopt(
        self, aggregate: dict[str, np.ndarray], metrics: dict[str, float]
    ) -> tuple[ArrayRecord, MetricRecord]:
        """The new global model from the round's ``aggregate`` (through the server optimizer)."""
        combined = self.server_optimizer.step(self._global, aggregate)
        metrics["aggregated"] = 1
        return ArrayRecord({key: Array(combined[key]) for key in self._reference}), MetricRecord(metrics)

    def _update_norm(self, update: Mapping[str, np.ndarray]) -> float:
        """L2 norm of ``update − global`` over every floating array (decoded one at a time)."""
        total = 0.0
        for key, reference in self._global.items():
            value = update[key]
            if np.issubdtype(value.dtype, np.floating):
                total += float(np.sum(np.square(value.astype(np.float64) - reference)))
        return float(np.sqrt(total))

    @staticmethod
    def _weight_rows(
        aggregate: dict[str, np.ndarray], valid: list[Message], updates: Sequence[Mapping[str, np.ndarray]]
    ) -> None:
        """Replace, in place, the aggregate of every table all replies sent row counts for."""
        records = [r.content.array_records.get(ROW_COUNTS) for r in valid]
        if any(record is None for record in records):
            return
        shared = set.intersection(*(set(record.keys()) for record in records))
        for key in sorted(shared):
            counts = [record[key].numpy() for record in records]
            aggregate[key] = count_weighted_rows(_DecodedTables(updates, key), counts, aggregate[key])

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask a sampled fraction of the nodes to evaluate the global weights on their devices."""
        return self._messages("evaluate", MessageType.EVALUATE, server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Example-weighted mean of the nodes' evaluation metrics."""
        replies = list(replies)
        failures_before = len(self.failures)
        valid = self._split_replies(server_round, "evaluate", replies)
        if not valid:
            return None
        metrics = self._weighted_metrics(valid)
        metrics["failures"] = len(self.failures) - failures_before
        metrics["valid-replies"] = len(valid)
        return MetricRecord(metrics)

    def summary(self) -> None:
        """Log the strategy's settings."""
        logger.info(
            "SRMStrategy rule=%s server_optimizer=%s(lr=%g) trim=%.2f mu=%.4f fraction_train=%.2f "
            "fraction_evaluate=%.2f min_replies=%d",
            self.rule,
            self.server_optimizer.name,
            self.server_optimizer.lr,
            self.trim_fraction,
            self.proximal_mu,
            self.fraction_train,
            self.fraction_evaluate,
            self.min_train_replies,
        )
