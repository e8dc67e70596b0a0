"""The global SOLID codebook on the server: versioned, broadcast to stale nodes, updated from statistics.

Protocol (one round):

1. :meth:`CodebookSync.attach` stamps every outgoing message's config with the current version
   (``codebook-version``) and adds the codebook itself (``ArrayRecord "codebook"``) only for nodes that have
   not yet acknowledged that version, so an up-to-date node costs a few bytes, not the codebook.
2. A node updates its copy when it is stale (before it trains or evaluates), trains, and replies with its
   version (metric ``codebook-version``) plus per-code statistics of the items its devices interacted with
   (``ArrayRecord "codebook-stats"``: counts, residual sums, squared norms). Never raw interactions.
3. :meth:`CodebookSync.collect` sums the statistics of the replies computed under the current version;
   :meth:`CodebookSync.update` turns them into the next version (count-weighted Lloyd step, dead codes
   re-seeded, :meth:`SemanticCodebook.updated`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import Message

from lsc4rec.codebook import CodebookStatistics, SemanticCodebook
from lsc4rec.messages import (
    CODEBOOK,
    CODEBOOK_STATS,
    CODEBOOK_VERSION,
    CONFIG,
    METRICS,
    codebook_record,
    instruction_destinations,
    replying_node,
    statistics_from_record,
)

__all__ = ["CodebookSync"]

logger = logging.getLogger(__name__)


class CodebookSync:
    """Server side of the global codebook: which node holds which version, broadcast, merge, update."""

    def __init__(
        self,
        codebook: SemanticCodebook,
        momentum: float = 0.0,
        reseed_scale: float = 0.5,
        sync_every: int = 1,
        seed: int = 0,
    ) -> None:
        """Own ``codebook``; update it every ``sync_every`` rounds (0 = never) from the nodes' statistics."""
        if sync_every < 0:
            raise ValueError(f"solid.sync_every must be >= 0, got {sync_every}")
        self.codebook = codebook
        self.momentum = float(momentum)
        self.reseed_scale = float(reseed_scale)
        self.sync_every = int(sync_every)
        self.seed = int(seed)
        self.node_versions: dict[int, int] = {}
        self._record = codebook_record(codebook)
        # The last messages stamped: an error reply is matched to the node its message went to.
        self._sent: list[Message] = []

    @property
    def version(self) -> int:
        """The current codebook version."""
        return self.codebook.version

    def attach(self, messages: Iterable[Message]) -> dict[str, int]:
        """Stamp the version on every message; add the codebook for nodes without it. Returns byte counts."""
        sent = stale = 0
        self._sent = list(messages)
        for message in messages:
            message.content[CONFIG][CODEBOOK_VERSION] = self.version
            if self.node_versions.get(message.metadata.dst_node_id) != self.version:
                message.content[CODEBOOK] = self._record
                sent += self._record.count_bytes()
                stale += 1
        return {"codebook-bytes-sent": sent, "codebook-nodes-updated": stale}

    def acknowledge(self, replies: Iterable[Message]) -> None:
        """Record the version each replying node now holds (metric ``codebook-version``)."""
        destinations = instruction_destinations(self._sent)
        for reply in replies:
            if reply.has_error():
                # A failed node may have lost its state (restart): send it the codebook again next time.
                self.node_versions.pop(replying_node(reply, destinations), None)
                continue
            if METRICS not in reply.content.metric_records:
                continue
            metrics = reply.content.metric_records[METRICS]
            if CODEBOOK_VERSION in metrics:
                self.node_versions[reply.metadata.src_node_id] = int(metrics[CODEBOOK_VERSION])

    def collect(self, replies: Iterable[Message]) -> tuple[CodebookStatistics | None, dict[str, int]]:
        """Sum the statistics of replies computed under the current version; count what was left out."""
        replies = list(replies)
        self.acknowledge(replies)
        total: CodebookStatistics | None = None
        used = skipped = received = 0
        for reply in replies:
            if reply.has_error() or CODEBOOK_STATS not in reply.content.array_records:
                continue
            record = reply.content.array_records[CODEBOOK_STATS]
            received += record.count_bytes()
            version = self.node_versions.get(reply.metadata.src_node_id)
            if version != self.version:
                skipped += 1
                logger.warning(
                    "node %d sent codebook statistics for version %s, current is %d: skipped",
                    reply.metadata.src_node_id,
                    version,
                    self.version,
                )
                continue
            try:
                stats = statistics_from_record(record, self.codebook)
            except ValueError as error:
                skipped += 1
                logger.warning(
                    "node %d: malformed codebook statistics skipped: %s", reply.metadata.src_node_id, error
                )
                continue
            total = stats if total is None else total + stats
            used += 1
        return total, {
            "codebook-stats-used": used,
            "codebook-stats-skipped": skipped,
            "codebook-bytes-received": received,
        }

    def update(self, server_round: int, stats: CodebookStatistics | None) -> dict[str, Any]:
        """Move to the next version when this round syncs and statistics arrived; report what happened."""
        report: dict[str, Any] = {CODEBOOK_VERSION: self.version, "codebook-updated": 0}
        if stats is None or self.sync_every == 0 or server_round % self.sync_every != 0:
            return report
        self.codebook, changes = self.codebook.updated(
            stats, momentum=self.momentum, seed=self.seed, reseed_scale=self.reseed_scale
        )
        self._record = codebook_record(self.codebook)
        report.update(
            {
                CODEBOOK_VERSION: self.version,
                "codebook-updated": 1,
                "codebook-dead-codes": int(sum(changes["dead"])),
                "codebook-reseeded": int(sum(changes["reseeded"])),
                "codebook-interactions": float(stats.counts[0].sum()),
            }
        )
        logger.info(
            "codebook version %d: dead codes %s, re-seeded %s",
            self.version,
            changes["dead"],
            changes["reseeded"],
        )
        return report

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint needs to resume the sync."""
        return {
            "arrays": self.codebook.to_arrays(),
            "node_versions": dict(self.node_versions),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.codebook = SemanticCodebook.from_arrays(state["arrays"])
        self.node_versions = {int(k): int(v) for k, v in state["node_versions"].items()}
        self._record = codebook_record(self.codebook)
