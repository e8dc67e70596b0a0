"""SOLID on the server as a loop extension: the global codebook synced through the round's messages.

Train messages carry the codebook to nodes without its current version; train replies carry per-code
statistics the sync turns into the next version; evaluate replies acknowledge the version a node holds. Before
the server ranks, the global model's items are labelled with the codebook (the best round's own version for
the best weights). The protocol itself is :class:`lsc4rec.server.components.global_codebook.CodebookSync`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from flwr.app import Message

from lsc4rec.data import LeaveOneOutSplit, RawDataset
from lsc4rec.messages import CODEBOOK_VERSION
from lsc4rec.models.solid import SemanticCodebook, SolidRecommender
from lsc4rec.models.solid.pipeline import build_codebook, item_representations, semantic_ids
from lsc4rec.models.solid.solid_config import SolidSettings
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.server.components.global_codebook import CodebookSync
from lsc4rec.server.components.loop_hooks import LoopExtension, LoopState

__all__ = ["SolidOnServer"]

logger = logging.getLogger(__name__)


class SolidOnServer(LoopExtension):
    """The server's half of SOLID: the global codebook sync plus labelling the global model's items."""

    name = "codebook"

    def __init__(
        self, solid: SolidSettings, raw: RawDataset, split: LeaveOneOutSplit, sync: CodebookSync
    ) -> None:
        """``solid``: the ``solid.*`` settings (which item features the codebook quantises)."""
        self.solid, self.raw, self.split, self.sync = solid, raw, split, sync
        self.row: dict[str, Any] = {}

    @classmethod
    def from_initial_model(
        cls,
        solid: SolidSettings,
        raw: RawDataset,
        split: LeaveOneOutSplit,
        model: SolidRecommender,
        seed: int,
    ) -> SolidOnServer:
        """Version 0 of the codebook, fitted on the initial global model's item representations."""
        features, _ = item_representations(solid, raw, split, model.item_embedding.weight.detach())
        codebook = build_codebook(solid, features, seed=seed)
        sync = CodebookSync(
            codebook,
            momentum=solid.sync_momentum,
            reseed_scale=solid.reseed_scale,
            sync_every=solid.sync_every,
            seed=seed,
        )
        logger.info("SOLID codebook version 0: sizes %s, features %s", codebook.sizes, list(solid.features))
        return cls(solid, raw, split, sync)

    def start(self, state: LoopState) -> None:
        """Resume: the codebook and which node holds which version."""
        if state.restored is not None:
            self.sync.load_state_dict(state.restored["extensions"][self.name])

    def attach(self, messages: Sequence[Message], phase: str) -> None:
        """Stamp the version on every message; send the codebook to nodes without it."""
        attached = self.sync.attach(messages)
        if phase == "train":
            self.row = dict(attached)
        else:
            self.row["codebook-bytes-sent"] += attached["codebook-bytes-sent"]

    def after_train(self, server_round: int, replies: Sequence[Message], arrays: Any) -> None:
        """Merge the nodes' statistics into the next codebook version."""
        stats, collected = self.sync.collect(replies)
        self.row.update(collected)
        self.row.update(self.sync.update(server_round, stats))

    def after_evaluate(self, replies: Sequence[Message]) -> None:
        """Record the version each evaluating node now holds."""
        self.sync.acknowledge(replies)

    def before_server_eval(self, model: SequentialRecommender, snapshot: Any = None) -> None:
        """Label the model's items with the current codebook, or the kept one of the best round."""
        if snapshot is not None:
            self.label(model, SemanticCodebook.from_arrays(snapshot))
            return
        usage = self.label(model)
        self.row.update({"perplexity": usage["perplexity"], "dead_codes": usage["dead_codes"]})

    def label(self, model: SequentialRecommender, codebook: SemanticCodebook | None = None) -> dict[str, Any]:
        """Give ``model`` the semantic ids of ``codebook`` (default: the current one); return code usage."""
        if not isinstance(model, SolidRecommender):
            raise TypeError(f"SOLID's codebook labels a SolidRecommender, not {type(model).__name__}")
        codebook = codebook or self.sync.codebook
        features, _ = item_representations(
            self.solid, self.raw, self.split, model.item_embedding.weight.detach()
        )
        codes = semantic_ids(codebook, features)
        model.set_semantic_ids(codes)
        return codebook.usage(codes[1:])

    def snapshot(self) -> dict:
        """The current codebook, kept with the best round."""
        return self.sync.codebook.to_arrays()

    def round_row(self) -> dict[str, Any]:
        """Bytes sent and received, nodes updated, the version, and the code usage of this round."""
        return dict(self.row)

    def state_dict(self) -> dict[str, Any]:
        """The sync's state (codebook and node versions)."""
        return self.sync.state_dict()

    def progress(self, row: dict[str, Any]) -> str:
        """The codebook version the round ended with."""
        version = row.get(self.name, {}).get(CODEBOOK_VERSION)
        return "" if version is None else f"codebook v{int(version)}"

    def summary(self, history: list[dict]) -> dict[str, Any]:
        """The final version and sizes, the bytes over the run, and the last round's row."""
        return {
            "version": self.sync.version,
            "sizes": self.sync.codebook.sizes,
            "bytes_sent": sum(int(r[self.name].get("codebook-bytes-sent", 0)) for r in history),
            "bytes_received": sum(int(r[self.name].get("codebook-bytes-received", 0)) for r in history),
            "last_round": history[-1][self.name] if history else {},
        }
