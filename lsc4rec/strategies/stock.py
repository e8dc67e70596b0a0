"""Any Flower ``Strategy`` in the round loop's seat (``strategy.flower_class``), e.g. Flower's own FedAdagrad.

The loop, its components and the ClientApp stay as they are; :class:`StockStrategy` adapts what differs:

- **Messages.** A Flower strategy sends one content to every node; each message here gets its own copy (the
  components attach per-node records: the catalogue's text to a node that lacks it, the codebook to a stale
  node), with the keys the ClientApp reads (``server-round``, ``proximal-mu`` = 0).
- **Replies.** A Flower strategy expects exactly one ``ArrayRecord`` and one ``MetricRecord`` per reply; the
  strategy sees each reply's ``arrays`` and ``metrics`` only (the components still read the whole reply:
  SOLID's statistics, row counts). Error replies and replies Flower refuses to aggregate are logged as the
  SRM strategy logs its failures (:attr:`failures`, the run's ``failed_nodes``).
- **State.** A checkpoint keeps the strategy's plain attributes (arrays, numbers, strings: e.g. FedAdam's
  moments and current weights), so a resumed run continues them.

Central DP wraps lsc4rec's own strategy only (its noise assumes equal node weights,
:mod:`lsc4rec.strategies.central_dp`); the settings refuse it with a stock strategy.
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import Strategy

from lsc4rec.messages import (
    ARRAYS,
    CONFIG,
    METRICS,
    PROXIMAL_MU,
    SERVER_ROUND,
    instruction_destinations,
    replying_node,
)
from lsc4rec.strategies.srm import NodeFailure, record_failure

__all__ = ["StockStrategy", "load_strategy_class"]

logger = logging.getLogger(__name__)


def load_strategy_class(dotted: str) -> type[Strategy]:
    """The Flower ``Strategy`` subclass at ``package.module.Class``, with a clear error naming the key."""
    module_name, _, class_name = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"strategy.flower_class must be a dotted path package.module.Class, got {dotted!r}")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"strategy.flower_class={dotted!r} cannot be imported: {error}") from None
    if not (isinstance(found, type) and issubclass(found, Strategy)):
        raise ValueError(f"strategy.flower_class={dotted!r} is not a flwr.serverapp.strategy.Strategy")
    return found


@dataclass
class _ReplyView:
    """What a Flower strategy reads of a reply: its content (arrays and metrics only), metadata and error."""

    content: RecordDict
    metadata: Any
    error: Any

    def has_error(self) -> bool:
        """Whether the node answered with an error."""
        return self.error is not None


def _view(reply: Message) -> _ReplyView:
    if reply.has_error():
        return _ReplyView(RecordDict(), reply.metadata, reply.error)
    content = reply.content
    kept = {key: content[key] for key in (ARRAYS, METRICS) if key in content}
    return _ReplyView(RecordDict(kept), reply.metadata, None)


def _plain(value: Any) -> bool:
    """Whether a strategy attribute is state a checkpoint can keep (no callables, no grid handles)."""
    if isinstance(value, (ArrayRecord, np.ndarray, int, float, str, bool)) or value is None:
        return True
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return False


class StockStrategy:
    """A Flower ``Strategy`` adapted to the round loop (see the module docstring)."""

    #: What central DP and the settings check of lsc4rec's own strategy.
    uniform_weights = False
    row_weighting = False

    def __init__(self, strategy: Strategy) -> None:
        """Drive ``strategy`` (constructed by the caller, e.g. ``FedAdagrad(fraction_train=1.0)``)."""
        self.strategy = strategy
        self.failures: list[NodeFailure] = []
        self._sent: dict[str, list[Message]] = {}

    @classmethod
    def from_settings(cls, dotted: str, kwargs: Mapping[str, Any]) -> StockStrategy:
        """``strategy.flower_class`` built with ``strategy.flower_kwargs``."""
        strategy_class = load_strategy_class(dotted)
        try:
            return cls(strategy_class(**dict(kwargs)))
        except TypeError as error:
            raise ValueError(f"strategy.flower_kwargs do not fit {dotted}: {error}") from None

    def _own_messages(self, stage: str, server_round: int, messages: Iterable[Message]) -> list[Message]:
        own = []
        for message in messages:
            config = ConfigRecord(dict(message.content[CONFIG]))
            config[SERVER_ROUND] = server_round
            if PROXIMAL_MU not in config:
                config[PROXIMAL_MU] = 0.0
            records = {key: value for key, value in message.content.items() if key != CONFIG}
            metadata = message.metadata
            own.append(
                Message(
                    RecordDict({**records, CONFIG: config}),
                    dst_node_id=metadata.dst_node_id,
                    message_type=metadata.message_type,
                )
            )
        self._sent[stage] = own
        return own

    def _log_failures(self, stage: str, server_round: int, replies: list[Message]) -> None:
        destinations = instruction_destinations(self._sent.get(stage, []))
        for reply in replies:
            if reply.has_error():
                self._fail(server_round, stage, replying_node(reply, destinations), reply.error.reason)

    def _fail(self, server_round: int, stage: str, node: int, reason: str) -> None:
        record_failure(self.failures, server_round, stage, node, reason)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The Flower strategy's train messages, one content per node."""
        messages = self.strategy.configure_train(server_round, arrays, config, grid)
        return self._own_messages("train", server_round, messages)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The Flower strategy's aggregate of the replies' arrays and metrics (None when it cannot)."""
        replies = list(replies)
        self._log_failures("train", server_round, replies)
        try:
            arrays, metrics = self.strategy.aggregate_train(server_round, [_view(r) for r in replies])
        except InconsistentMessageReplies as error:
            for reply in replies:
                if not reply.has_error():
                    self._fail(server_round, "train", reply.metadata.src_node_id, str(error))
            return None, None
        out = dict(metrics or {})
        out["valid-replies"] = float(sum(not r.has_error() for r in replies))
        out["nodes-sampled"] = float(len(self._sent.get("train", [])))
        return arrays, MetricRecord(out)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The Flower strategy's evaluate messages, one content per node."""
        messages = self.strategy.configure_evaluate(server_round, arrays, config, grid)
        return self._own_messages("evaluate", server_round, messages)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The Flower strategy's aggregate of the evaluation metrics."""
        replies = list(replies)
        self._log_failures("evaluate", server_round, replies)
        try:
            return self.strategy.aggregate_evaluate(server_round, [_view(r) for r in replies])
        except InconsistentMessageReplies as error:
            logger.warning("round %d evaluate: metrics not aggregated: %s", server_round, error)
            return None

    def summary(self) -> None:
        """The Flower strategy's own summary."""
        logger.info("strategy: %s (a Flower strategy)", type(self.strategy).__name__)
        self.strategy.summary()

    def state_dict(self) -> dict[str, Any]:
        """The strategy's plain attributes (weights, moments, counters) and the failure log."""
        attributes = {k: copy.deepcopy(v) for k, v in vars(self.strategy).items() if _plain(v)}
        return {"attributes": attributes, "failures": [vars(f) for f in self.failures]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        for key, value in state["attributes"].items():
            setattr(self.strategy, key, value)
        self.failures = [NodeFailure(**f) for f in state["failures"]]
