"""The SRM strategy a config describes: aggregation rule, server optimizer, and central DP around it."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from lsc4rec.privacy import PrivacySettings
from lsc4rec.strategies import ServerOptimizer, SRMStrategy
from lsc4rec.strategies.privacy import CentralDP, central_noise_for_target

__all__ = ["central_dp_from_config", "check_privacy_config", "strategy_from_config"]


def check_privacy_config(cfg: DictConfig) -> None:
    """Refuse combinations that would release un-noised information about devices under DP."""
    mode = str(cfg.privacy.mode)
    if mode == "none":
        return
    if bool(cfg.strategy.row_weighting):
        raise ValueError(f"privacy.mode={mode}: strategy.row_weighting sends per-item counts in clear")
    if str(cfg.model.name) == "solid":
        raise ValueError(f"privacy.mode={mode}: SOLID's codebook statistics are not privatised")
    if mode == "central" and str(cfg.strategy.rule) != "fedavg":
        raise ValueError(
            f"privacy.mode=central calibrates its noise to a mean: strategy.rule must be fedavg, "
            f"not {cfg.strategy.rule}"
        )


def central_dp_from_config(cfg: DictConfig, inner: SRMStrategy, population: int) -> CentralDP:
    """Central DP around ``inner``: noise from ``privacy.noise_multiplier`` or ``privacy.target_epsilon``."""
    privacy = PrivacySettings.from_config(cfg.privacy)
    nodes = max(1, math.ceil(float(cfg.strategy.fraction_train) * int(cfg.federated.num_supernodes)))
    delta = privacy.resolved_delta(population)
    noise = privacy.noise_multiplier or central_noise_for_target(
        float(privacy.target_epsilon), int(cfg.federated.rounds), delta, nodes
    )
    return CentralDP(
        inner,
        noise_multiplier=noise,
        clipping_norm=privacy.clipping_norm,
        num_sampled_nodes=nodes,
        delta=delta,
        clipping=privacy.central_clipping,
        max_epsilon=privacy.budget,
    )


def strategy_from_config(cfg: DictConfig, population: int = 0) -> SRMStrategy | CentralDP:
    """The SRM strategy described by ``cfg.strategy`` and ``cfg.federated`` (wrapped for central DP).

    ``population``: devices in the federation (central DP's default δ is 1 / population).
    """
    check_privacy_config(cfg)
    central = str(cfg.privacy.mode) == "central"
    strategy = SRMStrategy(
        rule=str(cfg.strategy.rule),
        trim_fraction=float(cfg.strategy.trim_fraction),
        proximal_mu=float(cfg.strategy.proximal_mu),
        fraction_train=float(cfg.strategy.fraction_train),
        # 0 switches client-side evaluation off in the round loop; the strategy itself needs a valid fraction.
        fraction_evaluate=float(cfg.federated.fraction_evaluate) or 1.0,
        min_train_replies=int(cfg.strategy.min_train_replies),
        min_available_nodes=int(cfg.federated.min_available_nodes),
        wait_for_nodes_seconds=float(cfg.federated.wait_for_nodes_seconds),
        seed=int(cfg.seed),
        server_optimizer=ServerOptimizer(
            name=str(cfg.strategy.server_optimizer.name),
            lr=float(cfg.strategy.server_optimizer.lr),
            momentum=float(cfg.strategy.server_optimizer.momentum),
            beta2=float(cfg.strategy.server_optimizer.beta2),
            eps=float(cfg.strategy.server_optimizer.eps),
        ),
        row_weighting=bool(cfg.strategy.row_weighting),
        uniform_weights=central,
    )
    return central_dp_from_config(cfg, strategy, population) if central else strategy
