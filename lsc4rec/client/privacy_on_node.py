"""Local differential privacy on a node (``privacy.mode=local``): the round's local epochs run as DP-SGD,
and the privacy ledger, on the node's own disk, survives restarts; the optimizer's moments carry across rounds
as without DP (``federated.keep_optimizer_state``), and with collaborative training the pass over the cloud's
lists (fetched by the collaboration component) runs first in the same DP-SGD round. The settings refuse what
DP-SGD cannot run before any work (FedProx)."""

from __future__ import annotations

from lsc4rec.client.collaboration import CLOUD_LIST_PASS
from lsc4rec.client.local_training import (
    derive_seed,
    final_decay_epochs,
    optimizer_state_keeper,
    saved_optimizer_state,
)
from lsc4rec.client.node_component import NodeComponent, NodeStep
from lsc4rec.client.privacy_ledger import PrivacyLedger, ledger_path
from lsc4rec.client.private_training import train_on_shard_private
from lsc4rec.reporting import run_folder
from lsc4rec.settings import FederatedRunSettings
from lsc4rec.training import TrainSettings

__all__ = ["PrivacyOnNode"]


class PrivacyOnNode(NodeComponent):
    """Runs the round's local epochs as DP-SGD and records what each release spent in the node's ledger."""

    name = "privacy"

    def active(self, run: FederatedRunSettings) -> bool:
        """Only with local DP (central DP clips on the node through a Flower mod, not here)."""
        return run.privacy.mode == "local"

    def local_update(self, step: NodeStep, settings: TrainSettings, mu: float) -> dict[str, float]:
        """DP-SGD on this node's devices (``mu`` is 0: the settings refuse FedProx with local DP)."""
        run, shard = step.run, step.shard
        server_round = int(step.server_round or 1)
        keep = run.federated.keep_optimizer_state
        # The node's own disk; by default inside the run's folder, found as the ServerApp finds it.
        directory = run.privacy.ledger_dir or run_folder(
            step.context.run_config, run.output_dir, run.run_name
        ) / ("privacy-ledgers")
        ledger = PrivacyLedger.open(
            ledger_path(directory, shard.partition_id),
            fresh=server_round == 1 and not run.federated.resume,
        )
        result = train_on_shard_private(
            step.model,
            shard.train_sequences,
            settings,
            run.privacy,
            run.data.max_len,
            run.federated.local_epochs,
            planned_rounds=run.federated.rounds,
            num_devices=shard.population or shard.num_devices,
            seed=derive_seed(run.seed, server_round, shard.partition_id),
            history=ledger.history,
            label=f"partition {shard.partition_id}",
            optimizer_state=saved_optimizer_state(step.context) if keep else None,
            keep_state=optimizer_state_keeper(step.context) if keep else None,
            cloud_lists=step.scratch.get(CLOUD_LIST_PASS),  # type: ignore[arg-type]  # set by collaboration
            decay_epochs=final_decay_epochs(run.federated, server_round),
        )
        if result.released is not None:
            ledger.record(server_round, result.released)
        return result.metrics
