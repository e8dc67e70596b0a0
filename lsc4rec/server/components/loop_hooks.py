"""The one interface every optional part of the round loop implements, and the loop's state.

Like Flower's strategy wrappers, an extension adds behaviour around the loop's fixed steps without the loop
knowing what it does. Every hook has a do-nothing default, so an extension overrides only what it needs.

Phases, each run over every extension before the next begins (so no extension depends on its place in the
list for them): :meth:`~LoopExtension.restore` (a resumed run's checkpoint is read), ``start``, then per
round :meth:`~LoopExtension.outgoing` (the global model to send), ``attach`` (train messages),
``after_train``, ``evaluate_config`` / ``attach`` / ``after_evaluate`` (when nodes evaluate),
``before_server_eval`` and :meth:`~LoopExtension.ranking` (when the server evaluates),
:meth:`~LoopExtension.round_row`, ``round_end`` (every
extension records its round) and last :meth:`~LoopExtension.commit` (the round's state is final: checkpoints
save it). Within a phase the extensions run in the order of the registry
(:mod:`lsc4rec.server.components.registry`); ``outgoing`` is the one hook where that order matters (each
extension sees the model the previous one returned).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, Message

from lsc4rec.models.srm import SequentialRecommender

__all__ = ["Best", "LoopExtension", "LoopState", "Scorer", "state_dict_of"]

#: What the server ranks with: the global SRM, or a wrapper with its ``score_all`` / ``score_candidates``.
Scorer = torch.nn.Module


def state_dict_of(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    """A private copy of ``arrays`` as a torch state dict."""
    return {key: value.clone() for key, value in arrays.to_torch_state_dict().items()}


@dataclass
class Best:
    """The best round so far by the server's validation metric, with what each extension kept of it."""

    round: int
    value: float
    arrays: dict[str, torch.Tensor]
    snapshots: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoopState:
    """Everything the round loop carries from one round to the next (and a checkpoint restores)."""

    arrays: ArrayRecord
    best: Best
    history: list[dict] = field(default_factory=list)
    next_round: int = 1
    #: The checkpoint a resumed run started from (extensions restore their own part of it).
    restored: dict[str, Any] | None = None

    @classmethod
    def initial(cls, model: SequentialRecommender) -> LoopState:
        """Round 1 of a fresh run: the model's weights, no best round yet."""
        arrays = ArrayRecord(model.state_dict())
        return cls(arrays=arrays, best=Best(0, -math.inf, state_dict_of(arrays)))


class LoopExtension:
    """One optional part of the round loop (cloud, SOLID, MergeNet, privacy, checkpoints).

    ``name`` keys the extension's section of a round's row in ``metrics.json``, its entry in the checkpoint,
    and its entry in the run's summary.
    """

    name: str = ""

    def restore(self, state: LoopState) -> None:
        """First of all hooks: fill ``state`` (and ``state.restored``) from a checkpoint when resuming."""

    def start(self, state: LoopState) -> None:
        """Before the first round (of this process): restore from ``state.restored`` when resuming."""

    def outgoing(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """The global model to send this round (default: unchanged)."""
        return arrays

    def attach(self, messages: Sequence[Message], phase: str) -> None:
        """Add to this round's outgoing ``train`` or ``evaluate`` messages."""

    def after_train(self, server_round: int, replies: Sequence[Message], arrays: ArrayRecord | None) -> None:
        """The nodes' train replies and the new global model (None when aggregation failed)."""

    def evaluate_config(self) -> dict[str, Any]:
        """Config entries every evaluating node receives."""
        return {}

    def test_config(self) -> dict[str, Any]:
        """Config entries of the final test phase on the devices (after the last round)."""
        return {}

    def after_evaluate(self, replies: Sequence[Message]) -> None:
        """The nodes' evaluate replies."""

    def before_server_eval(self, model: SequentialRecommender, snapshot: Any = None) -> None:
        """Prepare the global model for ranking: now (``snapshot`` None) or as it was in a kept snapshot."""

    def ranking(self, scorer: Scorer, phase: str) -> Scorer:
        """What the server ranks with in ``phase`` (``valid``: a round's validation, ``test``: the final
        test): ``scorer`` (default), or it with a term added to its scores (the fresh prior). Training never
        goes through it."""
        return scorer

    def snapshot(self) -> Any:
        """What this extension keeps with the best round (restored by ``before_server_eval``)."""
        return None

    def round_row(self) -> dict[str, Any] | None:
        """This round's section of the history row (None: no section)."""
        return None

    def progress(self, row: dict[str, Any]) -> str:
        """A few words on this round for its log line (``row`` is the round's row); empty: nothing to say."""
        return ""

    def round_end(self, server_round: int, state: LoopState, extensions: Sequence[LoopExtension]) -> None:
        """After the round's row is in ``state.history``: record what the round taught this extension."""

    def commit(self, server_round: int, state: LoopState, extensions: Sequence[LoopExtension]) -> None:
        """After every extension's ``round_end``: the round's state is final (what a checkpoint saves)."""

    def state_dict(self) -> Any:
        """This extension's state for the checkpoint (None: stateless)."""
        return None

    def summary(self, history: list[dict]) -> dict[str, Any] | None:
        """This extension's entry in the run's summary (None: no entry)."""
        return None

    def close(self) -> None:
        """Release what the extension holds (servers, files); called once, also after a failure."""
