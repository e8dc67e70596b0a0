"""What the round loop asks of a strategy: Flower's ``Strategy`` calls plus a failure log and a state.

lsc4rec's :class:`~lsc4rec.strategies.srm.SRMStrategy`, its central-DP wrapper
(:class:`~lsc4rec.strategies.central_dp.CentralDP`) and any Flower strategy behind
:class:`~lsc4rec.strategies.stock.StockStrategy` all fit it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

__all__ = ["LoopStrategy"]


class LoopStrategy(Protocol):
    """A strategy the round loop can drive."""

    #: Every node failure so far (``round``, ``stage``, ``node_id``, ``reason``), for the run's report.
    failures: list

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The round's train messages."""
        ...

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The new global model (None: keep the old one) and the round's train metrics."""
        ...

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The round's evaluate messages."""
        ...

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The round's evaluation metrics."""
        ...

    def summary(self) -> None:
        """Log what the strategy is."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the strategy."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        ...
