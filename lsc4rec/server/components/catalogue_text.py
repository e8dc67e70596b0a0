"""The catalogue's item text on the devices: the vectors of the SRMs' text part, sent once per version.

With ``model.item_text=projected`` every item vector is ``id_row + P · text(i)``; the text vectors are public
catalogue data, not model weights, so they travel apart from the rounds' updates: every message announces the
catalogue's text version, and only a node that has not acknowledged that version receives the vectors
(float16, or in the compact form of ``federated.item_text_codes``: a residual codebook plus one semantic id
per item, :mod:`lsc4rec.text.compact`). A node that failed (and may have lost its state) gets them again.
The round's row counts the bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import Message

from lsc4rec.data import LeaveOneOutSplit
from lsc4rec.messages import (
    CONFIG,
    ITEM_TEXT,
    ITEM_TEXT_VERSION,
    METRICS,
    compact_item_text_record,
    instruction_destinations,
    item_text_record,
    item_text_version,
    replying_node,
)
from lsc4rec.server.components.loop_hooks import LoopExtension, LoopState
from lsc4rec.settings import FederatedRunSettings
from lsc4rec.text.compact import CompactItemVectors
from lsc4rec.training import run_item_vectors

__all__ = ["CatalogueText", "CatalogueVectors", "catalogue_vectors"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogueVectors:
    """The catalogue's text vectors as every side reads them, and their compact form when they travel so."""

    vectors: torch.Tensor
    compact: CompactItemVectors | None = None
    #: The compact carrier's bytes and fidelity (:meth:`CompactItemVectors.report`).
    report: dict[str, Any] = field(default_factory=dict)


class CatalogueText(LoopExtension):
    """Sends the catalogue's text vectors to every node that lacks the current version."""

    name = "item_text"

    def __init__(
        self,
        vectors: torch.Tensor,
        compact: CompactItemVectors | None = None,
        report: dict[str, Any] | None = None,
    ) -> None:
        """``vectors [num_items + 1, D]``: the catalogue's text vectors (zero rows: padding, no text), sent as
        the float16 matrix, or as ``compact`` (whose rebuilt vectors they must be) with its ``report``."""
        self.record = item_text_record(vectors) if compact is None else compact_item_text_record(compact)
        self.version = item_text_version(vectors)
        self.carrier = {"form": "float16 matrix"} if compact is None else {"form": "codes", **(report or {})}
        self.node_versions: dict[int, int] = {}
        self._sent: list[Message] = []
        self.row: dict[str, Any] = {}

    def start(self, state: LoopState) -> None:
        """Resume: which node holds which version (a node restarted since then acknowledges afresh)."""
        if state.restored is not None:
            saved = state.restored["extensions"].get(self.name) or {}
            self.node_versions = {int(k): int(v) for k, v in saved.get("node_versions", {}).items()}

    def attach(self, messages: Sequence[Message], phase: str) -> None:
        """Stamp the version on every message; add the vectors for nodes without it."""
        self._sent = list(messages)
        sent = updated = 0
        for message in messages:
            message.content[CONFIG][ITEM_TEXT_VERSION] = self.version
            if self.node_versions.get(message.metadata.dst_node_id) != self.version:
                message.content[ITEM_TEXT] = self.record
                sent += self.record.count_bytes()
                updated += 1
        if phase == "train" or not self.row:
            self.row = {"item-text-bytes-sent": 0, "item-text-nodes-updated": 0}
        self.row["item-text-bytes-sent"] += sent
        self.row["item-text-nodes-updated"] += updated

    def _acknowledge(self, replies: Sequence[Message]) -> None:
        destinations = instruction_destinations(self._sent)
        for reply in replies:
            if reply.has_error():
                self.node_versions.pop(replying_node(reply, destinations), None)
                continue
            metrics = reply.content.metric_records.get(METRICS)
            if metrics is not None and ITEM_TEXT_VERSION in metrics:
                self.node_versions[reply.metadata.src_node_id] = int(metrics[ITEM_TEXT_VERSION])

    def after_train(self, server_round: int, replies: Sequence[Message], arrays: Any) -> None:
        """Record the version each training node now holds."""
        self._acknowledge(replies)

    def after_evaluate(self, replies: Sequence[Message]) -> None:
        """Record the version each evaluating node now holds."""
        self._acknowledge(replies)

    def round_row(self) -> dict[str, Any]:
        """Bytes of text vectors sent this round and to how many nodes."""
        return dict(self.row)

    def state_dict(self) -> dict[str, Any]:
        """Which node holds which version."""
        return {"node_versions": {str(k): v for k, v in self.node_versions.items()}}

    def summary(self, history: list[dict]) -> dict[str, Any]:
        """The version, the record's size and the bytes sent over the run."""
        return {
            "version": self.version,
            "carrier": self.carrier,
            "record_bytes": self.record.count_bytes(),
            "bytes_sent": sum(int(r.get(self.name, {}).get("item-text-bytes-sent", 0)) for r in history),
        }


def catalogue_vectors(run: FederatedRunSettings, split: LeaveOneOutSplit) -> CatalogueVectors | None:
    """The catalogue's text vectors the devices need (the SRM's text part, the content term) as they travel:
    the float16 matrix, or the compact carrier (``federated.item_text_codes``), with the values every side
    reads (the server's model included); None when nothing reads them."""
    content = run.collab.content_weight if run.collab.enabled else 0.0
    vectors = run_item_vectors(run.model, split, run.text, run.data.name, content)
    if vectors is None:
        return None
    sizes = run.federated.item_text_codes
    if not sizes:
        return CatalogueVectors(vectors.to(torch.float16).float(), None)
    compact = CompactItemVectors.from_vectors(vectors, sizes, seed=run.seed)
    report = compact.report(vectors)
    logger.info("item text travels as codes: %s", report)
    return CatalogueVectors(compact.vectors(), compact, report)
