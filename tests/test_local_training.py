"""A node's local update: Adam moments carried across rounds, per-round learning-rate decay."""

from __future__ import annotations

import pytest
import torch

from lsc4rec.client import local_training
from lsc4rec.client.client_app import round_settings
from lsc4rec.client.local_training import (
    final_decay_epochs,
    load_optimizer_arrays,
    optimizer_state_arrays,
    train_on_shard,
)
from lsc4rec.client.shard import DeviceShard
from lsc4rec.models.srm import build_srm
from lsc4rec.settings import SettingsError, federated_settings_from_overrides
from lsc4rec.training import TrainSettings, decay_lr_linearly

NUM_ITEMS = 30


def _shard() -> DeviceShard:
    sequences = tuple(tuple((u * 3 + t) % NUM_ITEMS + 1 for t in range(7)) for u in range(24))
    return DeviceShard(
        partition_id=0,
        num_partitions=1,
        users=tuple(range(24)),
        train_sequences=sequences,
        valid_histories=sequences,
        valid_targets=tuple(s[0] for s in sequences),
        num_items=NUM_ITEMS,
    )


def _train(model, optimizer_state=None):
    kept: dict[str, torch.Tensor] = {}
    settings = TrainSettings(batch_size=8, progress=False, device="cpu")
    train_on_shard(
        model, _shard(), settings, 8, 1, 0.0, seed=3, optimizer_state=optimizer_state, keep_state=kept.update
    )
    return kept


def test_kept_moments_continue_where_the_last_round_stopped() -> None:
    torch.manual_seed(0)
    model = build_srm("gru4rec", NUM_ITEMS, hidden_size=8, dropout=0.0)
    first = _train(model)
    steps = float(first["0.step"])
    assert steps == 3.0  # 24 sequences in batches of 8
    second = _train(model, optimizer_state=first)
    assert float(second["0.step"]) == 2 * steps
    # Restored moments change the update: the same round from fresh moments lands elsewhere.
    torch.manual_seed(0)
    fresh_model = build_srm("gru4rec", NUM_ITEMS, hidden_size=8, dropout=0.0)
    fresh_model.load_state_dict(model.state_dict())
    warm = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, optimizer_state=second)
    _train(fresh_model)
    moved = [not torch.equal(model.state_dict()[k], fresh_model.state_dict()[k]) for k in warm]
    assert any(moved)


def test_moments_of_the_wrong_shape_are_named() -> None:
    param = torch.nn.Parameter(torch.zeros(3, 2))
    optimizer = torch.optim.Adam([param])
    param.grad = torch.ones(3, 2)
    optimizer.step()
    flat = optimizer_state_arrays(optimizer)
    assert set(flat) == {"0.step", "0.exp_avg", "0.exp_avg_sq"}
    flat["0.exp_avg"] = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"'0.exp_avg' has shape \(2, 3\) but parameter 0 has \(3, 2\)"):
        load_optimizer_arrays(torch.optim.Adam([param]), flat)
    with pytest.raises(ValueError, match=r"unknown entry '7\.exp_avg'"):
        load_optimizer_arrays(torch.optim.Adam([param]), {"7.exp_avg": torch.zeros(3, 2)})


def test_restoring_keeps_this_rounds_learning_rate() -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    old = torch.optim.Adam([param], lr=1.0)
    param.grad = torch.ones(2)
    old.step()
    new = torch.optim.Adam([param], lr=0.25)
    load_optimizer_arrays(new, optimizer_state_arrays(old))
    assert new.param_groups[0]["lr"] == 0.25
    assert torch.equal(new.state[param]["exp_avg"], old.state[param]["exp_avg"])


def test_round_lr_decay_is_geometric_and_checked() -> None:
    assert round_settings(TrainSettings(lr=0.004), 0.5, 3).lr == pytest.approx(0.001)
    assert round_settings(TrainSettings(lr=0.004), 0.5, 1).lr == pytest.approx(0.004)
    with pytest.raises(SettingsError, match=r"federated\.round_lr_decay must be in"):
        federated_settings_from_overrides(["federated.round_lr_decay=1.5"])


def test_local_lr_sets_round_one_and_leaves_the_warm_start_lr() -> None:
    run = federated_settings_from_overrides(["federated.local_lr=0.003", "federated.round_lr_decay=0.5"])
    assert run.train.lr == pytest.approx(0.001)  # the warm start's
    first = round_settings(run.train, run.federated.round_lr_decay, 1, run.federated.local_lr)
    second = round_settings(run.train, run.federated.round_lr_decay, 2, run.federated.local_lr)
    assert (first.lr, second.lr) == (pytest.approx(0.003), pytest.approx(0.0015))
    assert round_settings(run.train, 1.0, 2, None).lr == pytest.approx(0.001)
    with pytest.raises(SettingsError, match=r"federated\.local_lr must be a positive number"):
        federated_settings_from_overrides(["federated.local_lr=-0.1"])


def test_linear_decay_keeps_then_takes_the_rate_to_zero() -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.8)
    decay_lr_linearly(optimizer, keep_steps=2, decay_steps=4)
    rates = []
    for _ in range(7):
        param.grad = torch.ones(2)
        optimizer.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([0.8, 0.8, 0.8, 0.6, 0.4, 0.2, 0.0])
    # SGD moved the parameter by the sum of the rates it ran at.
    assert param.detach() == pytest.approx(torch.full((2,), -sum(rates)))
    with pytest.raises(ValueError, match="decay_steps >= 1"):
        decay_lr_linearly(optimizer, keep_steps=0, decay_steps=0)


def test_the_last_round_decays_its_last_epochs(monkeypatch) -> None:
    run = federated_settings_from_overrides(
        ["federated.rounds=3", "federated.local_epochs=2", "federated.final_decay_epochs=1"]
    )
    assert [final_decay_epochs(run.federated, r) for r in (1, 2, 3)] == [0, 0, 1]
    calls: list[tuple[int, int]] = []

    def spy(optimizer, keep_steps: int, decay_steps: int):
        calls.append((keep_steps, decay_steps))
        return decay_lr_linearly(optimizer, keep_steps, decay_steps)

    monkeypatch.setattr(local_training, "decay_lr_linearly", spy)
    settings = TrainSettings(batch_size=8, progress=False, device="cpu")
    models = []
    for decay in (0, 1):
        torch.manual_seed(0)
        model = build_srm("gru4rec", NUM_ITEMS, hidden_size=8, dropout=0.0)
        train_on_shard(model, _shard(), settings, 8, 2, 0.0, seed=3, decay_epochs=decay)
        models.append(model.state_dict())
    assert calls == [(3, 3)]  # 24 sequences in batches of 8: epoch 1 kept, epoch 2 decayed
    assert any(not torch.equal(models[0][k], models[1][k]) for k in models[0])
    with pytest.raises(SettingsError, match=r"federated\.final_decay_epochs must be in \[0, federated"):
        federated_settings_from_overrides(["federated.local_epochs=2", "federated.final_decay_epochs=3"])
