"""Server optimizers (FedAvg adoption, server SGD, FedAvgM, FedAdam): the update rules and their state."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from lsc4rec.strategies import ServerOptimizer

W = {"w": np.array([1.0, -2.0, 0.5], dtype=np.float32), "count": np.array([3], dtype=np.int64)}
A = {"w": np.array([1.5, -2.0, 0.0], dtype=np.float32), "count": np.array([7], dtype=np.int64)}
DELTA = np.array([0.5, 0.0, -0.5])


def test_none_adopts_the_aggregate() -> None:
    out = ServerOptimizer("none").step(W, A)
    np.testing.assert_array_equal(out["w"], A["w"])
    np.testing.assert_array_equal(out["count"], A["count"])


def test_sgd_scales_the_pseudo_gradient_and_keeps_dtypes() -> None:
    out = ServerOptimizer("sgd", lr=2.0).step(W, A)
    np.testing.assert_allclose(out["w"], W["w"] + 2.0 * DELTA)
    assert out["w"].dtype == np.float32
    # Counters are never stepped: they take the aggregate.
    np.testing.assert_array_equal(out["count"], A["count"])


def test_momentum_accumulates_a_steady_direction() -> None:
    opt = ServerOptimizer("momentum", lr=1.0, momentum=0.9)
    first = opt.step(W, A)
    np.testing.assert_allclose(first["w"], W["w"] + DELTA, rtol=1e-6)
    # The same delta again from the new point: the buffer is 0.9 * delta + delta.
    again = {"w": first["w"] + DELTA.astype(np.float32), "count": A["count"]}
    second = opt.step(first, again)
    np.testing.assert_allclose(second["w"], first["w"] + 1.9 * DELTA, rtol=1e-6)


def test_adam_matches_the_fedadam_formula() -> None:
    opt = ServerOptimizer("adam", lr=0.1, momentum=0.9, beta2=0.99, eps=1e-3)
    out = opt.step(W, A)
    m = 0.1 * DELTA
    v = 0.01 * DELTA**2
    np.testing.assert_allclose(out["w"], W["w"] + 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-6)
    # A zero pseudo-gradient coordinate does not move.
    assert out["w"][1] == W["w"][1]


def test_state_round_trip_continues_identically() -> None:
    rng = np.random.default_rng(0)
    steps = [{"w": rng.normal(size=3).astype(np.float32), "count": A["count"]} for _ in range(4)]
    uninterrupted = ServerOptimizer("adam", lr=0.05)
    weights = dict(W)
    for aggregate in steps:
        weights = uninterrupted.step(weights, aggregate)

    first = ServerOptimizer("adam", lr=0.05)
    resumed_weights = dict(W)
    for aggregate in steps[:2]:
        resumed_weights = first.step(resumed_weights, aggregate)
    restored = ServerOptimizer("adam", lr=0.05)
    restored.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))
    for aggregate in steps[2:]:
        resumed_weights = restored.step(resumed_weights, aggregate)
    np.testing.assert_array_equal(resumed_weights["w"], weights["w"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "fedyogi"}, r"strategy\.server_optimizer\.name='fedyogi'"),
        ({"name": "sgd", "lr": 0.0}, r"strategy\.server_optimizer\.lr"),
        ({"name": "momentum", "momentum": 1.0}, r"strategy\.server_optimizer\.momentum"),
        ({"name": "adam", "eps": 0.0}, r"strategy\.server_optimizer\.eps"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerOptimizer(**kwargs)


def test_mismatched_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="differ from the global keys"):
        ServerOptimizer("sgd").step(W, {"w": A["w"]})
