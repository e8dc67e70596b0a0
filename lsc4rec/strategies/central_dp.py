"""Privacy on the server side: central DP around the SRM strategy, and the round's privacy metrics.

Central DP (``privacy.mode=central``) wraps :class:`~lsc4rec.strategies.srm.SRMStrategy` in Flower's own
fixed-clipping wrappers (``DifferentialPrivacyServerSideFixedClipping`` or, with
``privacy.central_clipping=client``, ``DifferentialPrivacyClientSideFixedClipping`` plus the client mod in
:mod:`lsc4rec.client.privacy_mods`): every node's update is clipped to ``clipping_norm`` and the average
gets Gaussian noise of standard deviation ``noise_multiplier * clipping_norm / nodes sampled``. The privacy
unit is a **node** (all devices it hosts). The wrapped strategy averages with equal node weights, which is
what that noise calibration assumes.

Flower's own accountant refuses strategies other than its ``FedAvg``, so :class:`CentralDP` composes the
same Gaussian events into Flower's ``RdpAccountant`` itself (no amplification by sampling, as Flower's
fixed-clipping accounting requires), reports ε each round and checkpoints the accountant. (Amplification by
sampling nodes does not pay here: a round's nodes are a fixed-size sample, whose analysis counts *replacing*
one node, a sensitivity of 2C; at 300 of 1,000 nodes, ε = 8 over 10 rounds then needs σ = 2.52 against 1.90
unamplified, and fewer nodes a round put more noise on their mean: docs/results/privacy.md.)

Adaptive clipping (``privacy.adaptive_clipping``, Andrew et al. 2021, "Differentially Private Learning
with Adaptive Clipping") uses Flower's adaptive wrappers instead: ``clipping_norm`` is the first round's
norm; each round the server counts the nodes whose update it clipped, adds Gaussian noise of standard
deviation σ_b to the count and moves the norm geometrically toward the ``quantile`` of the update norms. The
update's noise multiplier grows to z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) so that the two releases together are the
Gaussian mechanism of the configured multiplier z: the accountant composes z, as for fixed clipping. Two
things in Flower 1.42's wrappers are corrected by :class:`_AdaptiveNorm`: they move the norm by the fraction
of updates *clipped* where the paper (and their own docstring) moves it by the fraction *at or below* the
norm, so the norm runs away from the quantile (every update clipped makes it shrink further); and they move
it before they add the update's noise, which would calibrate that noise to the next round's norm.

Parameters that are public (``privacy.freeze_item_embeddings``: the item table fixed on every node) are
trained by no node, so their update is zero and clipping ignores them; the noise the wrapper adds to them is
replaced by the global model's own values after aggregation (data-independent post-processing), so they
leave every round exactly as they entered it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from lsc4rec.messages import ADAPTIVE_CLIPPING, EPSILON, PRIVACY_EXHAUSTED
from lsc4rec.strategies.srm import SRMStrategy, record_failure

logger = logging.getLogger(__name__)


def _accountant(delta: float, population: int):
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

    return RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=None,
        )
    )


def _gaussian_event(noise_multiplier: float, sample_size: int, population: int):
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

    return GaussianPrivacyEvent(
        noise_multiplier=noise_multiplier, sample_size=sample_size, population_size=population
    )


def central_epsilon(noise_multiplier: float, rounds: int, delta: float, nodes: int) -> float:
    """ε after ``rounds`` releases of the Gaussian mechanism with ``noise_multiplier`` (Flower's RDP)."""
    accountant = _accountant(delta, nodes)
    for _ in range(rounds):
        accountant.compose(_gaussian_event(noise_multiplier, nodes, nodes))
    return float(accountant.get_privacy_spent().epsilon)


def central_noise_for_target(target_epsilon: float, rounds: int, delta: float, nodes: int) -> float:
    """The smallest noise multiplier (to 0.1%) keeping ε <= ``target_epsilon`` after ``rounds`` releases."""
    low, high = 0.01, 1.0
    while central_epsilon(high, rounds, delta, nodes) > target_epsilon:
        high *= 2
        if high > 1e4:
            raise ValueError(f"no noise multiplier reaches epsilon={target_epsilon} in {rounds} rounds")
    while (high - low) / high > 1e-3:
        middle = (low + high) / 2
        if central_epsilon(middle, rounds, delta, nodes) > target_epsilon:
            low = middle
        else:
            high = middle
    return high


@dataclass(frozen=True)
class AdaptiveClipping:
    """How adaptive clipping moves the norm: toward the ``quantile`` of the nodes' update norms (the fraction
    of updates it should leave unclipped) at rate ``learning_rate``, from a count noised with standard
    deviation ``count_stddev``."""

    quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.quantile <= 1.0:
            raise ValueError(f"privacy.adaptive_quantile must be in [0, 1], got {self.quantile}")
        if not self.learning_rate > 0:
            raise ValueError(f"privacy.adaptive_clip_lr must be > 0, got {self.learning_rate}")
        if not self.count_stddev > 0:
            raise ValueError(f"privacy.adaptive_count_stddev must be > 0, got {self.count_stddev}")


def default_count_stddev(noise_multiplier: float, num_sampled_nodes: int) -> float:
    """σ_b when none is configured: Andrew et al.'s (and Flower's) sampled nodes / 20, raised where needed so
    that the update's noise multiplier grows by at most 10% (σ_b >= 1.25 z; below z / 2 it is impossible)."""
    return max(num_sampled_nodes / 20, 1.25 * noise_multiplier)


class _AdaptiveNorm:
    """Mixin for Flower's adaptive-clipping wrappers (module doc): the norm follows Andrew et al.'s update
    C <- C exp(-lr (b - q)), b the noised fraction of updates at or below C, q the target quantile; the
    round's noise is added at the norm its updates were clipped to."""

    clipping_norm: float
    clip_norm_lr: float
    target_clipped_quantile: float
    round_clipping_norm: float | None = None

    def _geometric_update(self, clipped_fraction: float) -> None:
        self.round_clipping_norm = self.clipping_norm
        below = 1.0 - clipped_fraction  # Flower passes the noised fraction clipped
        self.clipping_norm *= math.exp(-self.clip_norm_lr * (below - self.target_clipped_quantile))

    def _add_noise_to_aggregated_arrays(self, aggregated: ArrayRecord) -> ArrayRecord:
        following = self.clipping_norm
        if self.round_clipping_norm is not None:
            self.clipping_norm = self.round_clipping_norm
        try:
            return super()._add_noise_to_aggregated_arrays(aggregated)  # type: ignore[misc]
        finally:
            self.clipping_norm = following


class _ServerSideAdaptive(_AdaptiveNorm, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping, noised at the round's own norm."""


class _ClientSideAdaptive(_AdaptiveNorm, DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive clipping, noised at the round's own norm."""


class CentralDP(Strategy):
    """Central DP around the SRM strategy: Flower's fixed- or adaptive-clipping wrapper plus Flower's RDP
    accounting.

    Exposes what the server's round loop uses from :class:`SRMStrategy` (failures, checkpoint state).
    ``max_epsilon`` stops training (no more releases) once the next round would exceed it.
    """

    def __init__(
        self,
        inner: SRMStrategy,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_nodes: int,
        delta: float,
        clipping: str = "server",
        max_epsilon: float | None = None,
        public_keys: tuple[str, ...] = (),
        adaptive: AdaptiveClipping | None = None,
    ) -> None:
        """Wrap ``inner`` (which must weight nodes equally) for ``num_sampled_nodes`` nodes per round;
        ``public_keys`` leave every round as they entered it; ``adaptive``: adaptive clipping starting from
        ``clipping_norm`` (module doc)."""
        super().__init__()
        if not inner.uniform_weights:
            raise ValueError("central DP needs an SRM strategy that weights nodes equally (uniform_weights)")
        if inner.row_weighting:
            raise ValueError("central DP cannot use strategy.row_weighting (the counts are not private)")
        if noise_multiplier <= 0:
            raise ValueError(f"central DP needs privacy.noise_multiplier > 0, got {noise_multiplier}")
        self.inner = inner
        self.clipping = clipping
        self.adaptive = adaptive
        if adaptive is None:
            fixed = {
                "server": DifferentialPrivacyServerSideFixedClipping,
                "client": DifferentialPrivacyClientSideFixedClipping,
            }[clipping]
            self.dp = fixed(inner, noise_multiplier, clipping_norm, num_sampled_nodes)
        else:
            if noise_multiplier >= 2 * adaptive.count_stddev:
                raise ValueError(
                    f"central DP with adaptive clipping: the noise multiplier {noise_multiplier:.4f} needs "
                    f"privacy.adaptive_count_stddev > {noise_multiplier / 2:.4f} (the clipped-node count's "
                    f"noise), got {adaptive.count_stddev}; set it higher or null"
                )
            moving = {"server": _ServerSideAdaptive, "client": _ClientSideAdaptive}[clipping]
            self.dp = moving(
                inner,
                noise_multiplier,
                num_sampled_nodes,
                initial_clipping_norm=clipping_norm,
                target_clipped_quantile=adaptive.quantile,
                clip_norm_lr=adaptive.learning_rate,
                clipped_count_stddev=adaptive.count_stddev,
            )
        self.noise_multiplier = noise_multiplier
        self.num_sampled_nodes = num_sampled_nodes
        self.delta = delta
        self.max_epsilon = max_epsilon
        self.accountant = _accountant(delta, num_sampled_nodes)
        self.public_keys = tuple(public_keys)
        self._pending: dict[int, int] = {}
        self._public: dict[str, Any] = {}

    # What the round loop reads from the SRM strategy.
    @property
    def failures(self) -> list:
        """The wrapped strategy's failure log."""
        return self.inner.failures

    def epsilon(self) -> float:
        """ε spent so far (0 before the first release)."""
        return float(self.accountant.get_privacy_spent().epsilon) if self._released() else 0.0

    def _released(self) -> int:
        releases = self.accountant.num_releases
        return int(releases() if callable(releases) else releases)

    def _epsilon_after_release(self) -> float:
        probe = _accountant(self.delta, self.num_sampled_nodes)
        probe.load_state_dict(self.accountant.state_dict())
        probe.compose(_gaussian_event(self.noise_multiplier, self.num_sampled_nodes, self.num_sampled_nodes))
        return float(probe.get_privacy_spent().epsilon)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped strategy's state plus the accountant's (and the adaptive clipping norm)."""
        state = {"inner": self.inner.state_dict(), "accountant": self.accountant.state_dict()}
        if self.adaptive is not None:
            state["clipping_norm"] = float(self.dp.clipping_norm)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.inner.load_state_dict(state["inner"])
        self.accountant.load_state_dict(state["accountant"])
        if self.adaptive is not None:
            self.dp.clipping_norm = float(state["clipping_norm"])

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's messages (with the clipping norm for client-side clipping), or none once
        another release would exceed ``max_epsilon``."""
        if self.max_epsilon is not None and self._epsilon_after_release() > self.max_epsilon * (1 + 1e-9):
            logger.warning(
                "round %d: central DP budget spent (epsilon %.3f of %.3f): no training this round",
                server_round,
                self.epsilon(),
                self.max_epsilon,
            )
            return []
        missing = [key for key in self.public_keys if key not in arrays]
        if missing:
            raise ValueError(f"central DP: the public parameters {missing} are not in the global model")
        # The global model's public parameters as they entered the round (restored after the noise).
        self._public = {key: arrays[key] for key in self.public_keys}
        messages = list(self.dp.configure_train(server_round, arrays, config, grid))
        if self.adaptive is not None and self.clipping == "client":
            for message in messages:
                # The nodes' mod clips adaptively (and reports whether it clipped) instead of fixed.
                message.content["config"][ADAPTIVE_CLIPPING] = True
        self._pending[server_round] = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip (server-side), aggregate, add the noise, account the release; metrics gain ``epsilon``."""
        sent = self._pending.pop(server_round, 0)
        if sent == 0:
            return None, MetricRecord({PRIVACY_EXHAUSTED: 1.0, EPSILON: self.epsilon()})
        replies = list(replies)
        for reply in replies:
            if reply.has_error():
                # Flower's DP wrappers skip the whole aggregation when any node errs (the noise is calibrated
                # to the sampled node count); record who failed, as the SRM strategy would.
                node = self.inner.sender("train", reply)
                reason = f"client error {reply.error.code}: {reply.error.reason} (round skipped: central DP)"
                record_failure(self.inner.failures, server_round, "train", node, reason)
        norm = float(self.dp.clipping_norm)
        arrays, metrics = self.dp.aggregate_train(server_round, replies)
        out = dict(metrics or {})
        out["clipping-norm"] = norm
        if self.adaptive is not None:
            out["next-clipping-norm"] = float(self.dp.clipping_norm)
        if arrays is not None:
            for key, value in self._public.items():
                # No node trains a public parameter: what the wrapper put there is its noise alone.
                arrays[key] = value
            self.accountant.compose(_gaussian_event(self.noise_multiplier, sent, self.num_sampled_nodes))
        out.update(
            {"epsilon": self.epsilon(), "delta": self.delta, "noise-multiplier": self.noise_multiplier}
        )
        return arrays, MetricRecord(out)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Client-side evaluation as the wrapped strategy does it."""
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Evaluation metrics as the wrapped strategy aggregates them."""
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        """Log the DP settings and the wrapped strategy's."""
        logger.info(
            "central DP (%s-side %s clipping): noise multiplier %.4f, clip %.4f, %d nodes/round, delta %g",
            self.clipping,
            "fixed" if self.adaptive is None else "adaptive",
            self.noise_multiplier,
            self.dp.clipping_norm,
            self.num_sampled_nodes,
            self.delta,
        )
        self.inner.summary()
