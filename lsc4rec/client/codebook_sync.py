"""Device side of the global SOLID codebook: keep the node's copy current, label items, report statistics.

The node keeps the codebook it last received in ``context.state`` (``ArrayRecord "codebook"``). Every message
announces the server's version; a message to a stale node carries the new codebook, which replaces the stored
one before the node trains or evaluates. After local training the node reports per-code statistics of the
items its devices interacted with (weighted by how often), computed on the updated item representations:
aggregated sums, never a device's sequence; none under DP (``privacy.mode``): they would leave un-noised.
"""

from __future__ import annotations

import torch
from flwr.app import Context, Message, RecordDict

from lsc4rec.client.node_component import NodeComponent, NodeStep
from lsc4rec.client.shard import DeviceShard, cached_raw, cached_split
from lsc4rec.codebook import CodebookStatistics
from lsc4rec.messages import (
    CODEBOOK,
    CODEBOOK_STATS,
    CODEBOOK_VERSION,
    CONFIG,
    METRICS,
    codebook_from_record,
    statistics_record,
)
from lsc4rec.models.solid import SemanticCodebook, SolidRecommender
from lsc4rec.models.solid.pipeline import item_representations, semantic_ids
from lsc4rec.settings import FederatedRunSettings

__all__ = [
    "CodebookOnNode",
    "device_codebook",
    "device_statistics",
    "install_semantic_ids",
    "item_features_of",
    "prepare_device_model",
]


def device_codebook(msg: Message, context: Context) -> SemanticCodebook | None:
    """The codebook version the server announced (the stored copy updated first); None without SOLID."""
    config = msg.content[CONFIG]
    if CODEBOOK_VERSION not in config:
        return None
    announced = int(config[CODEBOOK_VERSION])
    if CODEBOOK in msg.content.array_records:
        context.state[CODEBOOK] = msg.content.array_records[CODEBOOK]
    stored = context.state.array_records.get(CODEBOOK)
    if stored is None:
        raise ValueError(
            f"the server announced codebook version {announced} without sending it and this node holds none "
            "(node state lost?); it will be sent again next round"
        )
    codebook = codebook_from_record(stored)
    if codebook.version != announced:
        raise ValueError(
            f"this node holds codebook version {codebook.version} but the server announced {announced} "
            "without sending it; it will be sent again next round"
        )
    return codebook


def item_features_of(run: FederatedRunSettings, model: SolidRecommender) -> torch.Tensor:
    """The item representations the codebook quantises, from public sources and the model's item table."""
    raw = cached_raw(run.data.name, run.data.path, run.data.format, run.data.kcore)
    split = cached_split(run.data.name, run.data.path, run.data.format, run.data.kcore)
    features, _ = item_representations(run.solid, raw, split, model.item_embedding.weight.detach().cpu())
    return features


def install_semantic_ids(model: SolidRecommender, codebook: SemanticCodebook, features: torch.Tensor) -> None:
    """Label every item with ``codebook`` and give the model those semantic ids."""
    model.set_semantic_ids(semantic_ids(codebook, features))


def device_statistics(
    codebook: SemanticCodebook, features: torch.Tensor, shard: DeviceShard
) -> CodebookStatistics:
    """Per-code statistics of the items this node's devices interacted with, weighted by interaction count."""
    counts = torch.from_numpy(shard.item_counts()[1:]).to(torch.float64)
    used = counts > 0
    return codebook.statistics(features[used], weights=counts[used])


def prepare_device_model(
    msg: Message, context: Context, run: FederatedRunSettings, model: object
) -> SemanticCodebook | None:
    """Bring the node's codebook up to date and label the items of a SOLID ``model``; None for other SRMs."""
    codebook = device_codebook(msg, context)
    if codebook is None or not isinstance(model, SolidRecommender):
        return None
    install_semantic_ids(model, codebook, item_features_of(run, model))
    return codebook


class CodebookOnNode(NodeComponent):
    """SOLID's global codebook on a node: kept current and installed in the model before it trains or
    evaluates; after training, the per-code statistics of the node's items go back with the update, and
    every reply says which version the node holds."""

    name = "codebook"

    def prepare(self, step: NodeStep) -> None:
        """Update the node's codebook copy from the message and label the SOLID model's items with it."""
        step.codebook = prepare_device_model(step.msg, step.context, step.run, step.model)

    def reply(self, step: NodeStep, content: RecordDict) -> None:
        """The statistics of a training reply (computed on the locally updated representations) and the
        version the node holds."""
        if step.codebook is None:
            return
        # Under DP the statistics (counts of the devices' items) would leave without noise: the node sends
        # none, and the codebook stays the one the server built from public text and the cloud's own data.
        if step.training and step.run.privacy.mode == "none":
            features = item_features_of(step.run, step.model)  # type: ignore[arg-type]  # SOLID: prepared
            stats = device_statistics(step.codebook, features, step.shard)
            content[CODEBOOK_STATS] = statistics_record(stats)
        content[METRICS][CODEBOOK_VERSION] = step.codebook.version
