"""What a device node knows about itself: the run's settings, its partition, its devices' data, the model.

A SuperNode hosts the devices of one shard (``partition-id`` of ``num-partitions`` in its node config, see
:mod:`lsc4rec.client.shard`).
"""

from __future__ import annotations

from functools import lru_cache

from flwr.app import Context, Message

from lsc4rec.client.shard import DeviceShard, load_shard
from lsc4rec.messages import ARRAYS
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.settings import FederatedRunSettings, federated_settings_from_run_config
from lsc4rec.training import build_model_from_config

__all__ = ["model_from_message", "node_settings", "partition_of", "shard_of"]


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
    return load_shard(
        run.data.name,
        run.data.path,
        run.data.format,
        partition_id,
        num_partitions,
        run.federated.users_per_node,
        run.federated.partition_seed,
    )


def model_from_message(msg: Message, run: FederatedRunSettings, num_items: int) -> SequentialRecommender:
    """Build the configured SRM and load the global weights sent by the server."""
    model = build_model_from_config(run.model, num_items, run.data.max_len)
    model.load_state_dict(msg.content[ARRAYS].to_torch_state_dict())
    return model
