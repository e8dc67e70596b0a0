"""Checkpoints as a loop extension: every round's state on disk (atomically); a resumed run continues it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from flwr.app import ArrayRecord

from lsc4rec.server.components.checkpoint_files import (
    load_checkpoint,
    rng_states,
    save_checkpoint,
)
from lsc4rec.server.components.loop_hooks import Best, LoopExtension, LoopState, state_dict_of
from lsc4rec.strategies.loop_strategy import LoopStrategy

__all__ = ["Checkpoints"]

logger = logging.getLogger(__name__)


class Checkpoints(LoopExtension):
    """Write ``path`` after every round (``save``); with ``resume`` start from it instead of round 1.

    A checkpoint holds the global and best weights, the history, the strategy's state (server optimizer,
    privacy ledger), every extension's :meth:`~LoopExtension.state_dict`, and the RNG states, so a resumed
    run reaches the same final weights as an uninterrupted one. It reads in the ``restore`` phase (before any
    extension starts) and writes in the ``commit`` phase (after every extension recorded its round), so its
    place among the extensions does not matter. The RNG states it saved are put back by the loop after every
    extension has started (building one may seed torch).
    """

    name = "checkpoint"

    def __init__(
        self,
        path: Path,
        strategy: LoopStrategy,
        reference: dict,
        *,
        save: bool = True,
        resume: bool = False,
    ) -> None:
        """``reference``: the model's state dict, to check a checkpoint's weights against before use."""
        self.path, self.strategy, self.reference = path, strategy, reference
        self.save, self.resume = save, resume

    def restore(self, state: LoopState) -> None:
        """Resume: restore weights, best round, history and strategy; keep the rest in ``state.restored``."""
        if not self.resume:
            return
        restored = load_checkpoint(self.path, reference=self.reference)
        state.arrays = ArrayRecord(restored["arrays"])
        state.best = Best(
            restored["best_round"],
            restored["best_value"],
            restored["best_arrays"],
            restored["best_snapshots"],
        )
        state.history = restored["history"]
        state.next_round = int(restored["round"]) + 1
        state.restored = restored
        self.strategy.load_state_dict(restored["strategy"])
        logger.info("resuming %s after round %d", self.path.parent.name, restored["round"])

    def commit(self, server_round: int, state: LoopState, extensions: Sequence[LoopExtension]) -> None:
        """Write this round's checkpoint (atomic: a crash while writing leaves the previous one valid)."""
        if not self.save:
            return
        save_checkpoint(
            self.path,
            {
                "round": server_round,
                "arrays": state_dict_of(state.arrays),
                "best_round": state.best.round,
                "best_value": state.best.value,
                "best_arrays": state.best.arrays,
                "best_snapshots": state.best.snapshots,
                "extensions": {e.name: s for e in extensions if (s := e.state_dict()) is not None},
                "strategy": self.strategy.state_dict(),
                "rng": rng_states(),
                "history": state.history,
            },
        )
