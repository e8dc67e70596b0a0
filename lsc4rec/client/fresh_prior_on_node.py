"""The fresh-popularity prior on a node (``privacy.fresh_prior``, :mod:`lsc4rec.models.fresh_popularity`).

Three moments of the run's end:

1. **The last round's training**: the node releases its devices' fresh counts twice, as of the validation
   items (what each device held before it) and as of the test items (with the validation item), and, with
   local DP, records in its ledger all the prior's releases (the two count vectors now and the per-weight
   gains it will release next) before anything leaves: the reply's ε includes them.
2. **The last round's evaluation**: with the summed validation counts from the server, the node ranks its
   devices' validation items with the new global model plus each weight's term and releases the per-weight
   sums of their NDCG@10.
3. **The test**: the node's rankings (its model alone and fused with the cloud's lists) add the term the
   server sends, the chosen weight times the test counts' log.

With local DP each release is a Gaussian mechanism with its noise multiplier (drawn from the run's seed with
``privacy.seeded_noise``, else the OS; Opacus' secure generator with ``privacy.secure_mode``); without DP the
releases are exact. A node whose ledger has no room left for the prior releases nothing (and the server ranks
without its counts).
"""

from __future__ import annotations

import logging
import os

import torch
from flwr.app import Array, ArrayRecord, RecordDict

from lsc4rec.client.local_training import derive_seed
from lsc4rec.client.node_component import NodeComponent, NodeStep
from lsc4rec.client.privacy_ledger import PrivacyLedger, ledger_path
from lsc4rec.client.private_training import epsilon_of, secure_generator
from lsc4rec.messages import (
    CONFIG,
    EPSILON,
    FRESH_PRIOR,
    FRESH_PRIOR_RELEASED,
    FRESH_PRIOR_TEST,
    FRESH_PRIOR_VALID,
    FRESH_PRIOR_WEIGHT,
    METRICS,
    fresh_prior_gain_metric,
)
from lsc4rec.models.fresh_popularity import fresh_item_counts, gains_by_weight, log_prior, noised, release_std
from lsc4rec.reporting import run_folder
from lsc4rec.settings import FederatedRunSettings
from lsc4rec.training import EvalSet

__all__ = ["RANKING_TERM", "FreshPriorOnNode"]

logger = logging.getLogger(__name__)

#: ``NodeStep.scratch`` key of the term the test's rankings add (set in the test phase).
RANKING_TERM = "fresh-prior-term"


def _generator(step: NodeStep, purpose: str) -> torch.Generator:
    """The noise's generator: seeded from the run (experiments), the OS, or Opacus' secure generator."""
    privacy = step.run.privacy
    if privacy.secure_mode:
        return secure_generator()
    if privacy.seeded_noise:
        seed = derive_seed(step.run.seed, "fresh-prior", purpose, step.shard.partition_id)
    else:
        seed = int.from_bytes(os.urandom(8), "little") & (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _ledger(step: NodeStep) -> PrivacyLedger:
    """The node's local-DP ledger (the file DP-SGD records its rounds in)."""
    run = step.run
    run_dir = run_folder(step.context.run_config, run.output_dir, run.run_name)
    directory = run.privacy.ledger_dir or run_dir / "privacy-ledgers"
    return PrivacyLedger.open(ledger_path(directory, step.shard.partition_id), fresh=False)


class FreshPriorOnNode(NodeComponent):
    """Releases the node's fresh counts and per-weight validation gains; adds the prior at the test."""

    name = "fresh_prior"

    def active(self, run: FederatedRunSettings) -> bool:
        """Only with ``privacy.fresh_prior``."""
        return run.privacy.fresh_prior

    def prepare(self, step: NodeStep) -> None:
        """The test phase: the term the devices' rankings add (the server's weight x log of its counts)."""
        content = step.msg.content
        if step.training or step.server_round is not None or FRESH_PRIOR not in content.array_records:
            return
        counts = torch.from_numpy(content.array_records[FRESH_PRIOR][FRESH_PRIOR_TEST].numpy())
        weight = float(content[CONFIG].get(FRESH_PRIOR_WEIGHT, 0.0))
        if weight > 0:
            step.scratch[RANKING_TERM] = weight * log_prior(counts)

    def reply(self, step: NodeStep, content: RecordDict) -> None:
        """The last round: the counts with its training reply, the per-weight gains with its evaluation."""
        last = step.server_round == step.run.federated.rounds
        if step.training and last:
            self._release_counts(step, content)
        elif not step.training and last and FRESH_PRIOR in step.msg.content.array_records:
            self._release_gains(step, content)

    def _release_counts(self, step: NodeStep, content: RecordDict) -> None:
        """The fresh counts as of the validation and the test items, noised and in the ledger under DP."""
        privacy, shard = step.run.privacy, step.shard
        recent = privacy.fresh_prior_recent
        metrics = content[METRICS]
        if privacy.mode == "local":
            ledger = _ledger(step)
            releases = privacy.planned_releases()
            delta = float(metrics["delta"]) if "delta" in metrics else None
            budget = privacy.budget
            if delta is not None and budget is not None:
                after = epsilon_of([*ledger.history, *releases], delta)
                if after > budget * (1 + 1e-9):
                    logger.warning(
                        "partition %d: the fresh prior would take epsilon to %.3f > %.3f: not released",
                        shard.partition_id,
                        after,
                        budget,
                    )
                    metrics[FRESH_PRIOR_RELEASED] = 0.0
                    return
            for release in releases:
                ledger.record(int(step.server_round or 0), release)
            if delta is not None:
                metrics[EPSILON] = epsilon_of(ledger.history, delta)
        std = release_std(privacy.fresh_prior_noise_multiplier, recent) if privacy.mode == "local" else 0.0
        generator = _generator(step, "counts")
        valid = fresh_item_counts(shard.valid_histories, shard.num_items, recent)
        test = fresh_item_counts(shard.test_histories, shard.num_items, recent)
        content[FRESH_PRIOR] = ArrayRecord(
            {
                FRESH_PRIOR_VALID: Array(noised(valid, std, generator).numpy()),
                FRESH_PRIOR_TEST: Array(noised(test, std, generator).numpy()),
            }
        )
        metrics[FRESH_PRIOR_RELEASED] = 1.0

    def _release_gains(self, step: NodeStep, content: RecordDict) -> None:
        """Each weight's sum of the devices' validation NDCG@10 with the new global model plus the prior."""
        run, shard = step.run, step.shard
        privacy = run.privacy
        counts = torch.from_numpy(step.msg.content.array_records[FRESH_PRIOR][FRESH_PRIOR_VALID].numpy())
        eval_set = EvalSet.build(
            "fresh-prior-valid",
            shard.valid_histories,
            shard.valid_targets,
            shard.num_items,
            run.data.max_len,
            run.eval.batch_size,
            exclude_history=run.eval.exclude_history,
        )
        weights = privacy.fresh_prior_weights
        sums = gains_by_weight(step.model, eval_set.batches, log_prior(counts), weights)
        std = release_std(privacy.fresh_prior_selection_noise_multiplier, len(weights))
        std = std if privacy.mode == "local" else 0.0
        released = noised(torch.tensor([sums[float(w)] for w in weights]), std, _generator(step, "gains"))
        metrics = content[METRICS]
        for weight, value in zip(weights, released.tolist(), strict=True):
            metrics[fresh_prior_gain_metric(weight)] = float(value)
