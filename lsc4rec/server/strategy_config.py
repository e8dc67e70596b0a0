"""The strategy a federated run's settings describe: lsc4rec's SRM strategy (aggregation rule, server
optimizer, central DP) or any Flower strategy (``strategy.flower_class``)."""

from __future__ import annotations

import math

from lsc4rec.models.srm import ITEM_TABLE_KEY
from lsc4rec.settings import FederatedRunSettings
from lsc4rec.strategies import ServerOptimizer, SRMStrategy
from lsc4rec.strategies.central_dp import (
    AdaptiveClipping,
    CentralDP,
    central_noise_for_target,
    default_count_stddev,
)
from lsc4rec.strategies.stock import StockStrategy

__all__ = ["build_strategy", "wrap_central_dp"]


def wrap_central_dp(run: FederatedRunSettings, inner: SRMStrategy, population: int) -> CentralDP:
    """Central DP around ``inner``: noise from ``privacy.noise_multiplier`` or ``privacy.target_epsilon``."""
    privacy = run.privacy
    nodes = max(1, math.ceil(run.strategy.fraction_train * run.federated.num_supernodes))
    delta = privacy.resolved_delta(population)
    noise = privacy.noise_multiplier or central_noise_for_target(
        float(privacy.target_epsilon), run.federated.rounds, delta, nodes
    )
    adaptive = None
    if privacy.adaptive_clipping:
        adaptive = AdaptiveClipping(
            quantile=privacy.adaptive_quantile,
            learning_rate=privacy.adaptive_clip_lr,
            count_stddev=privacy.adaptive_count_stddev or default_count_stddev(noise, nodes),
        )
    return CentralDP(
        inner,
        noise_multiplier=noise,
        clipping_norm=privacy.clipping_norm,
        num_sampled_nodes=nodes,
        delta=delta,
        clipping=privacy.central_clipping,
        max_epsilon=privacy.budget,
        # The item table fixed on every node (public knowledge) gets no noise: it leaves rounds unchanged.
        public_keys=(ITEM_TABLE_KEY,) if privacy.freeze_item_embeddings else (),
        adaptive=adaptive,
    )


def build_strategy(run: FederatedRunSettings, population: int = 0) -> SRMStrategy | CentralDP | StockStrategy:
    """The SRM strategy of ``run.strategy`` and ``run.federated`` (wrapped for central DP), or the Flower
    strategy ``strategy.flower_class`` adapted to the loop.

    ``population``: devices in the federation (central DP's default δ is 1 / population).
    """
    if run.strategy.flower_class is not None:
        return StockStrategy.from_settings(run.strategy.flower_class, run.strategy.flower_kwargs)
    central = run.privacy.mode == "central"
    strategy, federated = run.strategy, run.federated
    optimizer = strategy.server_optimizer
    srm_strategy = SRMStrategy(
        rule=strategy.rule,
        trim_fraction=strategy.trim_fraction,
        proximal_mu=strategy.proximal_mu,
        fraction_train=strategy.fraction_train,
        # 0 switches client-side evaluation off in the round loop; the strategy itself needs a valid fraction.
        fraction_evaluate=federated.fraction_evaluate or 1.0,
        min_train_replies=strategy.min_train_replies,
        min_available_nodes=federated.min_available_nodes,
        wait_for_nodes_seconds=federated.wait_for_nodes_seconds,
        seed=run.seed,
        server_optimizer=ServerOptimizer(
            name=optimizer.name,
            lr=optimizer.lr,
            momentum=optimizer.momentum,
            beta2=optimizer.beta2,
            eps=optimizer.eps,
        ),
        row_weighting=strategy.row_weighting,
        uniform_weights=central,
        max_example_ratio=strategy.max_example_ratio,
        update_norm_ratio=strategy.update_norm_ratio,
    )
    return wrap_central_dp(run, srm_strategy, population) if central else srm_strategy
