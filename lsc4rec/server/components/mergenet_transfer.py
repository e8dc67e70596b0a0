"""MergeNet in the federated loop: the cloud LLM -> the global SRM, on the server, every k rounds.

The round is the transfer cycle: before sending, the adapter rewrites the global SRM's paired parameters
(``θ' = adapter(θ_global, factors(θ_LLM))``); the nodes train from ``θ'``; the aggregate is the post-step
parameters the adapter learns from (``½‖θ' − θ_aggregate‖²``: the server holds no gradient, and
``θ' − θ_aggregate`` is the round's pseudo-gradient, so the ``step`` signal is the only one here). Nodes
receive the same-sized model, so the transfer costs server time, not bytes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, Message

from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.models.mergenet import MergeNetTransfer, resolve_slice
from lsc4rec.models.mergenet.mergenet_config import MergeNetSettings
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.server.components.loop_hooks import LoopExtension, LoopState

__all__ = ["MergeNetOnServer"]


class MergeNetOnServer(LoopExtension):
    """Transfer from ``llm`` into the global model every ``mergenet.every_rounds`` rounds."""

    name = "mergenet"

    def __init__(
        self, mergenet: MergeNetSettings, model: SequentialRecommender, llm: CloudLLM, seed: int
    ) -> None:
        """``model``: the adapter's own copy of the global SRM; ``mergenet``: the ``mergenet.*`` settings."""
        self.settings, self.model, self.llm, self.seed = mergenet, model, llm, seed
        self.every = mergenet.every_rounds
        self.transfer: MergeNetTransfer | None = None
        self.pending: torch.Tensor | None = None
        self.row: dict[str, float] = {}

    def start(self, state: LoopState) -> None:
        """Build the adapter (after any resume: it seeds torch) and restore its state when resuming."""
        # The round is the cycle: one transfer per transferring round.
        self.transfer = MergeNetTransfer.from_config(
            self.settings,
            resolve_slice(self.settings.target, self.model, self.llm),
            resolve_slice(self.settings.source, self.model, self.llm),
            seed=self.seed,
            t_cycle=1,
            signal="step",
        )
        saved = (state.restored or {}).get("extensions", {}).get(self.name)
        if state.next_round > 1 and saved is not None:
            self.transfer.adapter.load_state_dict(saved["adapter"])
            self.transfer.optimizer.load_state_dict(saved["optimizer"])

    def outgoing(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """The global model to send this round: transferred on the cycle, else unchanged."""
        self.row = {}
        if self.transfer is None or self.every <= 0 or (server_round - 1) % self.every != 0:
            return arrays
        start = time.perf_counter()
        self.model.load_state_dict(arrays.to_torch_state_dict())
        self.pending = self.transfer.transfer()
        self.row = {"mergenet-seconds": time.perf_counter() - start, "mergenet-extra-bytes": 0}
        return ArrayRecord(self.model.state_dict())

    def after_train(self, server_round: int, replies: Sequence[Message], arrays: ArrayRecord | None) -> None:
        """Learn from the aggregate that followed a transfer."""
        if arrays is None or self.pending is None or self.transfer is None:
            return
        start = time.perf_counter()
        self.model.load_state_dict(arrays.to_torch_state_dict())
        loss = self.transfer.learn(self.pending)
        self.pending = None
        self.row.update(
            {
                "mergenet-adapter-loss": loss,
                "mergenet-learn-seconds": time.perf_counter() - start,
                "mergenet-relative-change": self.transfer.stats.relative_changes[-1],
            }
        )

    def progress(self, row: dict[str, Any]) -> str:
        """How much the round's transfer changed the target parameter."""
        change = row.get(self.name, {}).get("mergenet-relative-change")
        return "" if change is None else f"MergeNet Δ {float(change):.2%}"

    def round_row(self) -> dict[str, float] | None:
        """The transfer's cost and the adapter's loss this round (None in a round without transfer)."""
        return dict(self.row) or None

    def state_dict(self) -> dict[str, Any] | None:
        """Adapter and optimizer state (a resumed run keeps learning the same adapter)."""
        if self.transfer is None:
            return None
        return {
            "adapter": self.transfer.adapter.state_dict(),
            "optimizer": self.transfer.optimizer.state_dict(),
        }
