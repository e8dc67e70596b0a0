"""The fusion weight: fixed, or chosen by the server on the devices' arrivals (mean over rounds, ties to the
smaller weight), restored on resume."""

from __future__ import annotations

import pytest

from lsc4rec.messages import alpha_metric
from lsc4rec.server.components.fusion_weight import START, FusionWeight


def _round(values: dict[float, float]) -> dict[str, float]:
    return {alpha_metric(a): v for a, v in values.items()}


def test_auto_picks_the_weight_with_the_best_mean_over_rounds() -> None:
    weight = FusionWeight("auto", (0.0, 0.5, 1.0))
    assert weight.current == START
    weight.observe(_round({0.0: 0.030, 0.5: 0.034, 1.0: 0.020}))
    assert weight.current == 0.5
    weight.observe(_round({0.0: 0.050, 0.5: 0.040, 1.0: 0.020}))
    # Means: 0.040, 0.037, 0.020.
    assert weight.current == 0.0 and weight.table()["0"] == pytest.approx(0.040)
    # A round without the grid's metrics (no cloud, no arrivals) is no evidence.
    weight.observe({"replay-device-NDCG@10": 0.5})
    assert weight.rounds == 2
    resumed = FusionWeight("auto", (0.0, 0.5, 1.0))
    resumed.load_state_dict(weight.state_dict())
    assert resumed.current == weight.current and resumed.table() == weight.table()


def test_ties_go_to_the_devices_own_ranking_and_a_fixed_weight_stays() -> None:
    weight = FusionWeight("auto", (0.2, 0.0))
    weight.observe(_round({0.0: 0.03, 0.2: 0.03}))
    assert weight.current == 0.0
    fixed = FusionWeight(0.3, (0.0, 1.0))
    fixed.observe(_round({0.0: 0.9, 1.0: 0.1}))
    assert fixed.current == 0.3 and fixed.table() == {}
    with pytest.raises(ValueError, match="alpha_grid"):
        FusionWeight("auto", ())
