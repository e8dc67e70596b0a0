"""Central DP with adaptive clipping: the norm follows the quantile of the nodes' update norms, the noise is
calibrated to the norm each round clipped with, and ε is accounted as for fixed clipping."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT
from test_privacy import NodeGrid, replies_adding

from lsc4rec.client.privacy_mods import central_dp_clipping_mod
from lsc4rec.messages import ADAPTIVE_CLIPPING
from lsc4rec.privacy import PrivacySettings
from lsc4rec.server.strategy_config import wrap_central_dp
from lsc4rec.settings import federated_settings_from_overrides
from lsc4rec.strategies import SRMStrategy
from lsc4rec.strategies.central_dp import AdaptiveClipping, CentralDP, central_epsilon

SIZE = 2_000


def _adaptive_dp(nodes: int, sigma: float, clip: float, **adaptive: float) -> CentralDP:
    inner = SRMStrategy(uniform_weights=True, seed=0)
    return CentralDP(inner, sigma, clip, nodes, delta=1e-3, adaptive=AdaptiveClipping(**adaptive))


def _round(dp: CentralDP, number: int, weights: ArrayRecord, norms: list[float]) -> tuple[ArrayRecord, dict]:
    """One round in which node i sends an update of norm ``norms[i]`` (a fixed direction per node)."""
    messages = list(dp.configure_train(number, weights, ConfigRecord(), NodeGrid(len(norms))))
    updates = []
    for index, norm in enumerate(norms):
        direction = np.random.default_rng(index).normal(size=SIZE).astype(np.float32)
        updates.append(direction / np.linalg.norm(direction) * norm)
    aggregate, metrics = dp.aggregate_train(number, replies_adding(messages, weights, updates))
    return aggregate, dict(metrics)


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize(("quantile", "low", "high"), [(0.5, 8.0, 13.0), (0.9, 16.0, 21.0)])
def test_the_norm_settles_at_the_quantile_of_the_update_norms(
    quantile: float, low: float, high: float
) -> None:
    """Twenty nodes send updates of norms 1..20 every round; from a norm of 0.1 (every update clipped) the
    norm must rise and settle around the quantile's update norm (10.5 for the median, 18-19 for 0.9), not
    run away from it (Flower 1.42's own update shrinks it toward 0 here)."""
    np.random.seed(0)
    dp = _adaptive_dp(20, 0.5, 0.1, quantile=quantile, learning_rate=1.0, count_stddev=0.3)
    weights = ArrayRecord({"w": Array(np.zeros(SIZE, dtype=np.float32))})
    norms = [float(n) for n in range(1, 21)]
    seen = []
    for number in range(1, 41):
        _, metrics = _round(dp, number, weights, norms)
        seen.append(metrics["next-clipping-norm"])
    assert seen[0] > 0.1 * np.exp(0.4)  # every update clipped: the norm grows by exp(lr (q - 0)) or so
    assert low <= float(np.mean(seen[-10:])) <= high
    assert metrics["epsilon"] == pytest.approx(central_epsilon(0.5, 40, 1e-3, 20))


@pytest.mark.usefixtures("task_identity")
def test_the_noise_is_calibrated_to_the_norm_the_round_clipped_with() -> None:
    """Ten updates far inside the norm: the norm shrinks after the round, but the round's noise has the
    spread of z_Δ C / m at the round's own norm C, z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)."""
    sigma, clip, count_stddev, size = 2.0, 0.5, 1.5, 40_000
    dp = CentralDP(
        SRMStrategy(uniform_weights=True, seed=0), sigma, clip, 10, delta=1e-3,
        adaptive=AdaptiveClipping(quantile=0.5, learning_rate=0.2, count_stddev=count_stddev),
    )  # fmt: skip
    np.random.seed(0)
    weights = ArrayRecord({"w": Array(np.linspace(-1, 1, size, dtype=np.float32))})
    messages = list(dp.configure_train(1, weights, ConfigRecord(), NodeGrid(10)))
    generator = np.random.default_rng(1)
    updates = [generator.normal(0, 1e-4, size).astype(np.float32) for _ in messages]
    aggregate, metrics = dp.aggregate_train(1, replies_adding(messages, weights, updates))
    noise = aggregate["w"].numpy() - weights["w"].numpy() - np.mean(updates, axis=0)
    update_sigma = (sigma**-2 - (2 * count_stddev) ** -2) ** -0.5
    assert float(noise.std()) == pytest.approx(update_sigma * clip / 10, rel=0.03)
    assert metrics["clipping-norm"] == clip
    assert metrics["next-clipping-norm"] < clip  # nothing clipped: the norm comes down
    assert metrics["epsilon"] == pytest.approx(central_epsilon(sigma, 1, 1e-3, 10))


@pytest.mark.usefixtures("task_identity")
def test_the_adaptive_norm_is_checkpointed() -> None:
    np.random.seed(0)
    dp = _adaptive_dp(4, 0.5, 0.1, quantile=0.5, learning_rate=1.0, count_stddev=0.3)
    weights = ArrayRecord({"w": Array(np.zeros(SIZE, dtype=np.float32))})
    _round(dp, 1, weights, [1.0, 2.0, 3.0, 4.0])
    moved = dp.dp.clipping_norm
    assert moved != 0.1
    restored = _adaptive_dp(4, 0.5, 0.1, quantile=0.5, learning_rate=1.0, count_stddev=0.3)
    restored.load_state_dict(dp.state_dict())
    assert restored.dp.clipping_norm == moved
    assert restored.epsilon() == dp.epsilon()


@pytest.mark.usefixtures("task_identity")
def test_client_side_adaptive_clipping_marks_the_config_and_the_node_reports_its_bit() -> None:
    dp = CentralDP(
        SRMStrategy(uniform_weights=True, seed=0), 0.5, 1.5, 4, delta=1e-3, clipping="client",
        adaptive=AdaptiveClipping(count_stddev=0.3),
    )  # fmt: skip
    weights = ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32))})
    messages = list(dp.configure_train(1, weights, ConfigRecord(), NodeGrid(4)))
    config = messages[0].content["config"]
    assert config[KEY_CLIPPING_NORM] == 1.5 and config[ADAPTIVE_CLIPPING]

    def trained(msg: Message, context: Context) -> Message:
        update = ArrayRecord({"w": Array(np.full(4, 3.0, dtype=np.float32))})  # norm 6
        return Message(
            RecordDict({"arrays": update, "metrics": MetricRecord({"num-examples": 1.0})}), reply_to=msg
        )

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    sent = Message(
        RecordDict({"arrays": weights, "config": ConfigRecord(dict(config))}),
        dst_node_id=1,
        message_type="train",
    )
    reply = central_dp_clipping_mod(sent, context, trained)
    np.testing.assert_allclose(np.linalg.norm(reply.content["arrays"]["w"].numpy()), 1.5, rtol=1e-5)
    assert reply.content["metrics"][KEY_NORM_BIT] == 1


def test_adaptive_settings_are_checked_and_the_count_noise_defaults_to_a_workable_spread() -> None:
    with pytest.raises(ValueError, match=r"adaptive_clipping=true adapts central DP.*privacy\.mode=local"):
        PrivacySettings(mode="local", noise_multiplier=1.0, adaptive_clipping=True)
    with pytest.raises(ValueError, match=r"privacy\.adaptive_quantile must be in \[0, 1\], got 1\.5"):
        PrivacySettings(mode="central", noise_multiplier=1.0, adaptive_clipping=True, adaptive_quantile=1.5)
    with pytest.raises(
        ValueError, match=r"adaptive_count_stddev=0\.4 must exceed half of .*noise_multiplier=1"
    ):
        PrivacySettings(
            mode="central", noise_multiplier=1.0, adaptive_clipping=True, adaptive_count_stddev=0.4
        )
    run = federated_settings_from_overrides(
        [
            "privacy.mode=central",
            "privacy.noise_multiplier=1.9",
            "privacy.adaptive_clipping=true",
            "federated.num_supernodes=4",
        ]
    )
    dp = wrap_central_dp(run, SRMStrategy(uniform_weights=True), population=240)
    # Four nodes: 4 / 20 = 0.2 is below z / 2, so the default is 1.25 z (the update noise +10% at most).
    assert dp.adaptive is not None and dp.adaptive.count_stddev == pytest.approx(1.25 * 1.9)
    assert dp.dp.noise_multiplier == pytest.approx((1.9**-2 - (2 * 1.25 * 1.9) ** -2) ** -0.5)
    assert dp.dp.noise_multiplier <= 1.1 * 1.9
