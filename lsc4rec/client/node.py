"""What a device node knows about itself: the run's settings, its partition, its devices' data, the model.

A SuperNode hosts the devices of one shard (``partition-id`` of ``num-partitions`` in its node config, see
:mod:`lsc4rec.client.shard`).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from flwr.app import Context, Message

from lsc4rec.client.poisoned_data import poisoned_shard
from lsc4rec.client.shard import DeviceShard, load_shard
from lsc4rec.messages import (
    ARRAYS,
    CONFIG,
    ITEM_TEXT,
    ITEM_TEXT_VERSION,
    item_text_from_record,
    item_text_version,
)
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.settings import FederatedRunSettings, federated_settings_from_run_config
from lsc4rec.training import build_model_from_config

__all__ = [
    "device_item_text",
    "model_from_message",
    "model_reads_text",
    "node_settings",
    "partition_of",
    "shard_of",
]


@lru_cache(maxsize=8)
def _settings(run_config_items: tuple) -> FederatedRunSettings:
    return federated_settings_from_run_config(dict(run_config_items))


def node_settings(context: Context) -> FederatedRunSettings:
    """The typed settings of this run (cached per process: composing costs ~0.2 s)."""
    return _settings(tuple(sorted(context.run_config.items())))


def partition_of(context: Context) -> tuple[int, int]:
    """``(partition-id, num-partitions)`` from the node config, with a clear error when missing."""
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as missing:
        raise KeyError(
            f"node config lacks {missing}: start the SuperNode with "
            '--node-config "partition-id=<i> num-partitions=<n>"'
        ) from None


def shard_of(context: Context, run: FederatedRunSettings) -> DeviceShard:
    """The devices this node hosts and their data."""
    partition_id, num_partitions = partition_of(context)
    shard = load_shard(
        run.data.name,
        run.data.path,
        run.data.format,
        partition_id,
        num_partitions,
        run.federated.users_per_node,
        run.federated.partition_seed,
        run.data.kcore,
    )
    # A drill's hostile node trains on poisoned data (federated.faults; unchanged outside a drill).
    return poisoned_shard(shard, run.federated.faults)


def device_item_text(msg: Message, context: Context, num_items: int) -> tuple[torch.Tensor, int] | None:
    """The catalogue's text vectors and their version, as the server announced them; None without item text.

    A message carrying the vectors replaces the node's stored copy (``context.state``); a message that only
    announces a version the node does not hold is an error the server mends next round (it sends the vectors
    again to a node that failed).
    """
    config = msg.content[CONFIG]
    if ITEM_TEXT_VERSION not in config:
        return None
    announced = int(config[ITEM_TEXT_VERSION])
    if ITEM_TEXT in msg.content.array_records:
        received = msg.content.array_records[ITEM_TEXT]
        vectors = item_text_from_record(received, num_items)
        if item_text_version(vectors) != announced:
            raise ValueError(
                f"the item text received does not match the announced version {announced} (damaged?)"
            )
        context.state[ITEM_TEXT] = received
    stored = context.state.array_records.get(ITEM_TEXT)
    if stored is None:
        raise ValueError(
            f"the server announced item-text version {announced} without sending it and this node holds none "
            "(node state lost?); it will be sent again next round"
        )
    vectors = item_text_from_record(stored, num_items)
    if item_text_version(vectors) != announced:
        raise ValueError(
            f"this node holds another item-text version than the announced {announced}; it will be sent "
            "again next round"
        )
    return vectors, announced


def model_reads_text(run: FederatedRunSettings) -> bool:
    """Whether the run's SRM has a text part (``model.item_text``), i.e. is built with the text vectors."""
    return run.model.item_text != "none"


def model_from_message(
    msg: Message, run: FederatedRunSettings, num_items: int, item_vectors: torch.Tensor | None = None
) -> SequentialRecommender:
    """Build the configured SRM (its text part from ``item_vectors``) and load the global weights."""
    # The message's weights replace every initial value (the text projection's SVD start is skipped).
    model = build_model_from_config(run.model, num_items, run.data.max_len, item_vectors, weights_follow=True)
    model.load_state_dict(msg.content[ARRAYS].to_torch_state_dict())
    return model
