"""Privacy: per-sequence losses, per-sample gradients, DP-SGD with a cross-round ledger, central DP."""

from __future__ import annotations

import copy
import importlib.machinery
import json
import math
import os
import sys
import types
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_inprocess, write_pattern_dataset
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from lsc4rec.client.dp_rows import RowGatherStep, local_item_tables
from lsc4rec.client.privacy_ledger import PrivacyLedger, ledger_path
from lsc4rec.client.privacy_mods import central_dp_clipping_mod
from lsc4rec.client.private_training import (
    _per_sample_grads,
    _RowLoss,
    plan_for,
    train_on_shard_private,
)
from lsc4rec.data.partition import federation_size, partition_users
from lsc4rec.models.srm import build_srm
from lsc4rec.models.srm.losses import draw_negatives, full_softmax_loss, per_sequence_loss
from lsc4rec.privacy import SECURE_MODE_UNAVAILABLE, PrivacySettings
from lsc4rec.simulations.privacy_sweep import SweepSettings, random_ndcg, settings_of
from lsc4rec.strategies import SRMStrategy
from lsc4rec.strategies.central_dp import CentralDP, central_epsilon, central_noise_for_target
from lsc4rec.training import TrainSettings

NUM_ITEMS = 40


def sequences(count: int, seed: int = 0, low: int = 3, high: int = 12) -> list[list[int]]:
    """Random item sequences (ids 1..NUM_ITEMS) of random lengths in [low, high)."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(
            1, NUM_ITEMS + 1, (int(torch.randint(low, high, (1,), generator=g)),), generator=g
        ).tolist()
        for _ in range(count)
    ]


def padded(seqs: list[list[int]], max_len: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) left-padded as the training batches build them."""
    inputs = torch.zeros(len(seqs), max_len, dtype=torch.long)
    targets = torch.zeros_like(inputs)
    for row, seq in enumerate(seqs):
        seq = seq[-(max_len + 1) :]
        inputs[row, max_len - len(seq) + 1 :] = torch.tensor(seq[:-1])
        targets[row, max_len - len(seq) + 1 :] = torch.tensor(seq[1:])
    return inputs, targets


def settings(loss: str = "sampled_softmax", batch_size: int = 16) -> TrainSettings:
    return TrainSettings(loss=loss, num_negatives=12, batch_size=batch_size, lr=5e-3, progress=False)


# ---------------------------------------------------------------------- losses and per-sample gradients


@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "bce"])
def test_per_sequence_loss_of_a_row_depends_on_that_row_only(loss: str) -> None:
    torch.manual_seed(0)
    model = build_srm("sasrec", NUM_ITEMS, hidden_size=8, dropout=0.0).eval()
    inputs, targets = padded(sequences(5, seed=1))
    negatives = draw_negatives(loss, NUM_ITEMS, targets, 6, torch.Generator().manual_seed(0))
    together = per_sequence_loss(loss, model, inputs, targets, negatives)
    for row in range(5):
        own = negatives if negatives is None or negatives.dim() == 1 else negatives[row : row + 1]
        alone = per_sequence_loss(loss, model, inputs[row : row + 1], targets[row : row + 1], own)
        torch.testing.assert_close(together[row : row + 1], alone)
    if loss == "ce":
        # A row's value is the plain next-item cross-entropy averaged over that row's own positions.
        torch.testing.assert_close(together[2], full_softmax_loss(model, inputs[2:3], targets[2:3]))


def test_functorch_per_sample_gradients_match_opacus_hooks_and_add_up() -> None:
    from opacus import GradSampleModule

    torch.manual_seed(0)
    model = build_srm("sasrec", NUM_ITEMS, hidden_size=8, dropout=0.0)
    inputs, targets = padded(sequences(6, seed=2))
    negatives = draw_negatives("sampled_softmax", NUM_ITEMS, targets, 10, torch.Generator().manual_seed(3))
    wrapper = _RowLoss(model, "sampled_softmax")
    params = {n: p.detach() for n, p in wrapper.named_parameters()}
    ours = _per_sample_grads(wrapper, params, inputs, targets, negatives)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hooked = GradSampleModule(model, loss_reduction="sum")
        per_sequence_loss("sampled_softmax", model, inputs, targets, negatives).sum().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(ours[f"model.{name}"], param.grad_sample, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(ours[f"model.{name}"].sum(0), param.grad, atol=1e-6, rtol=1e-4)
    hooked._close()


# ---------------------------------------------------------------------- accounting


def test_ledger_file_survives_a_restart_and_refuses_to_forget(tmp_path: Path) -> None:
    path = ledger_path(tmp_path / "ledgers", 3)
    ledger = PrivacyLedger.open(path, fresh=True)
    ledger.record(1, (1.1, 0.25, 8))
    ledger.record(2, (0.9, 0.5, 4))
    assert path.name == "partition-3.json" and not path.with_suffix(".json.tmp").exists()
    # A new process (a restarted SuperNode, a resumed run) reads back every release.
    reopened = PrivacyLedger.open(path, fresh=False)
    assert reopened.history == [(1.1, 0.25, 8), (0.9, 0.5, 4)]
    assert [e.round for e in reopened.entries] == [1, 2]
    # Only round 1 of a new run starts over.
    assert PrivacyLedger.open(path, fresh=True).history == []
    path.write_text('{"entries": [{"round": 1, "noise": 1.0}]}')
    with pytest.raises(ValueError, match=r"partition-3.json cannot be read \(KeyError: 'rate'\).*epsilon 0"):
        PrivacyLedger.open(path, fresh=False)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"partition-3.json cannot be read \(JSONDecodeError"):
        PrivacyLedger.open(path, fresh=False)


@pytest.mark.slow
def test_epsilon_grows_with_rounds_exactly_as_the_rdp_accountant_predicts() -> None:
    seqs = sequences(64, seed=4)
    model = build_srm("sasrec", NUM_ITEMS, hidden_size=8)
    privacy = PrivacySettings(mode="local", noise_multiplier=1.2, clipping_norm=0.5, delta=1e-3)
    history: list = []
    epsilons = []
    for server_round in range(1, 4):
        result = train_on_shard_private(
            model, seqs, settings(), privacy, 10, 1, planned_rounds=3, num_devices=64, seed=server_round,
            history=history,
        )  # fmt: skip
        history = result.history
        epsilons.append(result.metrics["epsilon"])
        assert result.trained and result.metrics["sample-rate"] == pytest.approx(0.25)
    # 64 devices in Poisson batches of 16 expected: q = 1/4, 4 steps per round; three rounds = 12 steps.
    assert [s for _, _, s in history] == [12]
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    for steps, got in zip((4, 8, 12), epsilons, strict=True):
        rdp = compute_rdp(q=0.25, noise_multiplier=1.2, steps=steps, orders=orders)
        expected, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-3)
        assert got == pytest.approx(expected, rel=1e-6)
    assert epsilons[0] < epsilons[1] < epsilons[2]


@pytest.mark.slow
def test_noise_from_target_epsilon_lands_on_it_and_a_spent_budget_stops_training(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seqs = sequences(48, seed=5)
    model = build_srm("gru4rec", NUM_ITEMS, hidden_size=8)
    privacy = PrivacySettings(mode="local", target_epsilon=3.0, clipping_norm=1.0)
    history: list = []
    for server_round in (1, 2):
        result = train_on_shard_private(
            model, seqs, settings("bce"), privacy, 10, 2, planned_rounds=2, num_devices=48,
            seed=server_round, history=history,
        )  # fmt: skip
        history = result.history
    assert 2.95 <= result.metrics["epsilon"] <= 3.0
    assert result.metrics["delta"] == pytest.approx(1 / 48)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level("WARNING"):
        third = train_on_shard_private(
            model, seqs, settings("bce"), privacy, 10, 2, planned_rounds=2, num_devices=48, seed=3,
            history=history, label="partition 7",
        )  # fmt: skip
    assert (
        not third.trained and third.metrics["privacy-exhausted"] == 1.0 and third.metrics["num-examples"] == 0
    )
    assert third.history == history and third.metrics["epsilon"] == pytest.approx(result.metrics["epsilon"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "partition 7: privacy budget spent" in caplog.text


def test_secure_mode_is_refused_with_the_reason_when_torchcsprng_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "torchcsprng", None)  # an import of it fails, as where it is not built
    with pytest.raises(ValueError, match=r"needs the torchcsprng package.*no build for torch 2.x"):
        PrivacySettings(mode="local", noise_multiplier=1.0, secure_mode=True, seeded_noise=False)
    assert "torch 1.8" in SECURE_MODE_UNAVAILABLE


@pytest.mark.parametrize("mode", ["rows", "hooks"])
def test_secure_mode_draws_sampling_and_noise_from_the_secure_generator(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a torchcsprng present, both engines take their randomness from its /dev/urandom generator."""
    made: list[str] = []

    def create_random_device_generator(device: str) -> torch.Generator:
        made.append(device)
        return torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))

    fake = types.ModuleType("torchcsprng")
    fake.__spec__ = importlib.machinery.ModuleSpec("torchcsprng", None)
    fake.create_random_device_generator = create_random_device_generator
    monkeypatch.setitem(sys.modules, "torchcsprng", fake)
    with pytest.raises(ValueError, match=r"cannot be seeded: set privacy\.seeded_noise=false"):
        PrivacySettings(mode="local", noise_multiplier=1.0, secure_mode=True)
    with pytest.raises(ValueError, match=r"privacy\.ledger_dir is where local DP-SGD nodes keep"):
        PrivacySettings(mode="central", noise_multiplier=1.0, ledger_dir="/var/lib/ledgers")
    with pytest.raises(ValueError, match=r"local DP-SGD only, not privacy\.mode=central"):
        PrivacySettings(mode="central", noise_multiplier=1.0, secure_mode=True, seeded_noise=False)
    privacy = PrivacySettings(
        mode="local", noise_multiplier=1.0, secure_mode=True, seeded_noise=False, grad_sample_mode=mode
    )
    model = build_srm("sasrec", NUM_ITEMS, hidden_size=8)
    result = train_on_shard_private(model, sequences(20, seed=3), settings(), privacy, 10, 1, 1, 20, seed=0)
    assert result.trained and made and set(made) == {"/dev/urandom"}


def test_plan_and_settings_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"privacy.mode must be one of"):
        PrivacySettings(mode="global")
    with pytest.raises(ValueError, match=r"needs privacy.noise_multiplier > 0 or privacy.target_epsilon"):
        PrivacySettings(mode="local")
    with pytest.raises(ValueError, match=r"privacy.clipping_norm must be > 0"):
        PrivacySettings(mode="local", noise_multiplier=1.0, clipping_norm=0.0)
    with pytest.raises(ValueError, match="1/devices, but there are 1 devices"):
        PrivacySettings(mode="local", noise_multiplier=1.0).resolved_delta(1)
    plan = plan_for(PrivacySettings(mode="local", noise_multiplier=1.0), 100, 32, 1, 5, 1000)
    assert plan.steps_per_epoch == 4 and plan.sample_rate == 0.25 and plan.delta == pytest.approx(1e-3)
    hooks = PrivacySettings(mode="local", noise_multiplier=1.0, grad_sample_mode="hooks")
    with pytest.raises(ValueError, match=r"grad_sample_mode=hooks cannot train SASRec with train.loss=ce"):
        train_on_shard_private(
            build_srm("sasrec", NUM_ITEMS, hidden_size=8), sequences(8), settings("ce"), hooks, 10, 1, 1, 8, 0
        )


# ---------------------------------------------------------------------- DP-SGD itself


def _first_step_sums(monkeypatch: pytest.MonkeyPatch) -> list[list[torch.Tensor]]:
    """Record, at every DP step, the clipped per-sample gradient sums (before noise) of every parameter."""
    from opacus.optimizers.optimizer import DPOptimizer

    recorded: list[list[torch.Tensor]] = []
    original = DPOptimizer.add_noise

    def spy(self: DPOptimizer) -> None:
        recorded.append([p.summed_grad.detach().clone() for p in self.params])
        original(self)

    monkeypatch.setattr(DPOptimizer, "add_noise", spy)
    original_rows = RowGatherStep.clipped_sum

    def spy_rows(self: RowGatherStep, *args, **kwargs):
        result = original_rows(self, *args, **kwargs)
        recorded.append([g.detach().clone() for g in result.sums.values()])
        return result

    monkeypatch.setattr(RowGatherStep, "clipped_sum", spy_rows)
    return recorded


@pytest.mark.parametrize("mode", ["rows", "hooks", "functorch"])
def test_per_sample_clipping_bounds_each_devices_influence(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Swapping one device's sequence moves the pre-noise gradient sum by at most 2C, whatever its data."""
    clip = 0.05
    privacy = PrivacySettings(mode="local", noise_multiplier=1.0, clipping_norm=clip, grad_sample_mode=mode)
    base = sequences(12, seed=6)
    # One device with a long, erratic sequence: its raw gradient is far larger than the clipping norm.
    outlier = [((7 * i) % NUM_ITEMS) + 1 for i in range(40)]
    sums = []
    for data in (base, [*base[:5], outlier, *base[6:]]):
        recorded = _first_step_sums(monkeypatch)
        torch.manual_seed(0)
        model = build_srm("sasrec", NUM_ITEMS, hidden_size=8, dropout=0.0)
        # batch_size >= devices: Poisson rate 1, every device is in the (single) batch.
        train_on_shard_private(model, data, settings(batch_size=12), privacy, 10, 1, 1, 12, seed=0)
        sums.append(recorded[0])
    change = math.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(*sums, strict=True)))
    assert 0 < change <= 2 * clip * (1 + 1e-4)
    # Without clipping the same swap would move the sum far more: the bound is the clipping, not the data.
    torch.manual_seed(0)
    model = build_srm("sasrec", NUM_ITEMS, hidden_size=8, dropout=0.0)
    negatives = draw_negatives("sampled_softmax", NUM_ITEMS, padded([outlier])[1], 12, torch.Generator())
    per_sequence_loss("sampled_softmax", model, *padded([outlier]), negatives).sum().backward()
    raw = math.sqrt(sum(float((p.grad**2).sum()) for p in model.parameters()))
    assert raw > 10 * clip


@pytest.mark.parametrize(("name", "loss", "expected_mode"), [
    ("sasrec", "sampled_softmax", 2.0),
    ("gru4rec", "bce", 2.0),
    ("din", "sampled_softmax", 2.0),
    ("ttt4rec", "bce", 2.0),
    ("ttt4rec", "ce", 1.0),
    ("sasrec", "ce", 1.0),
])  # fmt: skip
def test_every_srm_is_dp_trainable(name: str, loss: str, expected_mode: float) -> None:
    torch.manual_seed(0)
    model = build_srm(name, NUM_ITEMS, hidden_size=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    privacy = PrivacySettings(mode="local", noise_multiplier=0.8, clipping_norm=1.0)
    result = train_on_shard_private(
        model, sequences(40, seed=7), settings(loss), privacy, 10, 1, 3, 40, seed=1
    )
    assert result.metrics["grad-sample-mode"] == expected_mode
    assert set(model.state_dict()) == set(before)  # DPGRU's parameter names map back to nn.GRU's
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert set(trainable) <= set(changed)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert math.isfinite(result.metrics["train_loss"]) and 0 <= result.metrics["clipped-fraction"] <= 1


# ---------------------------------------------------------------------- the row-gather engine


def test_local_item_tables_renumber_each_row_into_its_distinct_ids() -> None:
    ids = torch.tensor([[0, 7, 3, 7, 0, 9], [0, 2, 2, 2, 2, 2]])
    distinct, local = local_item_tables(ids)
    # As wide as the row with the most distinct ids (4), not as the reads (6).
    assert distinct.tolist() == [[0, 3, 7, 9], [0, 2, 0, 0]]
    assert local.tolist() == [[0, 2, 1, 2, 0, 3], [0, 1, 1, 1, 1, 1]]
    assert torch.equal(torch.gather(distinct, 1, local), ids)


def _model_for(name: str) -> torch.nn.Module:
    from opacus.validators import ModuleValidator

    torch.manual_seed(3)
    model = build_srm(name, NUM_ITEMS, hidden_size=8, dropout=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ModuleValidator.fix(model)  # DPGRU: torch.func cannot batch nn.GRU


@pytest.mark.parametrize("loss", ["sampled_softmax", "bce"])
@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "din", "ttt4rec"])
@pytest.mark.parametrize("frozen_table", [False, True])
def test_row_gather_clipping_equals_whole_table_per_sample_gradients(
    name: str, loss: str, frozen_table: bool
) -> None:
    """Each example's norm and clipped sum equal those of the dense [B, items, d] per-example gradients."""
    model = _model_for(name)
    if frozen_table:
        model.item_embedding.weight.requires_grad_(False)
    inputs, targets = padded(sequences(9, seed=11, low=2, high=14))
    negatives = draw_negatives(
        loss, NUM_ITEMS, targets, 12 if loss == "sampled_softmax" else 3, torch.Generator()
    )
    wrapper = _RowLoss(model, loss)
    names = [n for n, p in wrapper.named_parameters() if p.requires_grad]
    assert ("model.item_embedding.weight" in names) != frozen_table
    assert_row_gather_equals_dense(wrapper, names, inputs, targets, negatives)


def assert_row_gather_equals_dense(
    wrapper: _RowLoss, names: list[str], inputs: torch.Tensor, targets: torch.Tensor, negatives
) -> None:
    """The row-gather engine's per-example norms and clipped sum equal those of the whole-model ``torch.func``
    engine's dense per-example gradients, at a clipping norm that clips about half the examples."""
    dense = _per_sample_grads(wrapper, {n: dict(wrapper.named_parameters())[n].detach() for n in names},
                              inputs, targets, negatives)  # fmt: skip
    rows = inputs.size(0)
    norms = torch.stack([dense[n].reshape(rows, -1).norm(dim=1) for n in names], dim=1).norm(dim=1)
    clip = float(norms.median())
    result = RowGatherStep(wrapper, names).clipped_sum(inputs, targets, negatives, clip)
    torch.testing.assert_close(result.norms, norms, atol=1e-6, rtol=1e-5)
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    assert set(result.sums) == set(names)
    for n in names:
        expected = torch.einsum("b,b...->...", factor, dense[n])
        # float32: the engines sum in different orders (about 1e-7 of the largest entry, 4 here).
        torch.testing.assert_close(result.sums[n], expected, atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize(("name", "loss"), [("sasrec", "sampled_softmax"), ("gru4rec", "bce")])
def test_row_gather_engine_takes_the_same_steps_as_opacus(name: str, loss: str) -> None:
    """Same seeds: the same Poisson batches, the same noise, the same weights and ledger as Opacus' hooks."""
    # Adam is blind to the gradient's scale; L2 weight decay added to the gradient is not.
    scale_sensitive = replace(settings(loss, batch_size=8), weight_decay=0.5)
    results = {}
    for mode in ("rows", "hooks"):
        torch.manual_seed(0)
        model = build_srm(name, NUM_ITEMS, hidden_size=8, dropout=0.0)
        privacy = PrivacySettings(
            mode="local", noise_multiplier=0.7, clipping_norm=0.2, grad_sample_mode=mode
        )
        result = train_on_shard_private(
            model, sequences(30, seed=12), scale_sensitive, privacy, 10, 2, 2, 30, seed=4
        )
        results[mode] = (model.state_dict(), result)
    (rows_state, rows), (hooks_state, hooks) = results["rows"], results["hooks"]
    assert rows.history == hooks.history and rows.metrics["epsilon"] == hooks.metrics["epsilon"]
    assert rows.metrics["clipped-fraction"] == pytest.approx(hooks.metrics["clipped-fraction"])
    assert rows.metrics["clipped-fraction"] > 0
    for key, value in hooks_state.items():
        torch.testing.assert_close(rows_state[key], value, atol=2e-5, rtol=1e-4, msg=key)


# ---------------------------------------------------------------------- central DP pieces


def test_client_clipping_mod_clips_only_when_the_server_asks(task_identity: None) -> None:
    received = ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32))})

    def message(config: dict) -> Message:
        return Message(
            RecordDict({"arrays": received, "config": ConfigRecord(config)}),
            dst_node_id=1,
            message_type="train",
        )

    def trained(msg: Message, context: Context) -> Message:
        update = ArrayRecord({"w": Array(np.full(4, 3.0, dtype=np.float32))})  # norm 6
        return Message(
            RecordDict({"arrays": update, "metrics": MetricRecord({"num-examples": 1.0})}), reply_to=msg
        )

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    clipped = central_dp_clipping_mod(message({KEY_CLIPPING_NORM: 1.5}), context, trained)
    np.testing.assert_allclose(np.linalg.norm(clipped.content["arrays"]["w"].numpy()), 1.5, rtol=1e-5)
    untouched = central_dp_clipping_mod(message({"server-round": 1}), context, trained)
    np.testing.assert_allclose(untouched.content["arrays"]["w"].numpy(), 3.0)


def test_central_noise_for_target_and_accountant_state_round_trip() -> None:
    noise = central_noise_for_target(4.0, rounds=5, delta=1e-3, nodes=10)
    assert 3.99 <= central_epsilon(noise, 5, 1e-3, 10) <= 4.0
    assert central_epsilon(noise * 1.01, 5, 1e-3, 10) < central_epsilon(noise, 5, 1e-3, 10)
    inner = SRMStrategy(uniform_weights=True)
    dp = CentralDP(inner, noise_multiplier=noise, clipping_norm=1.0, num_sampled_nodes=10, delta=1e-3)
    dp.accountant.compose(_event(noise))
    copy = CentralDP(SRMStrategy(uniform_weights=True), noise, 1.0, 10, 1e-3)
    copy.load_state_dict(dp.state_dict())
    assert copy.epsilon() == pytest.approx(dp.epsilon()) and dp.epsilon() > 0
    with pytest.raises(ValueError, match="weights nodes equally"):
        CentralDP(SRMStrategy(), noise, 1.0, 10, 1e-3)


def _event(noise: float):
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

    return GaussianPrivacyEvent(noise_multiplier=noise, sample_size=10, population_size=10)


def test_federation_size_counts_capped_shards() -> None:
    for users, parts, cap in ((103, 4, 0), (103, 4, 20), (103, 4, 30), (10, 10, 1)):
        expected = sum(
            min(len(partition_users(users, parts, p, 0)), cap)
            if cap
            else len(partition_users(users, parts, p, 0))
            for p in range(parts)
        )
        assert federation_size(users, parts, cap) == expected


# ---------------------------------------------------------------------- federated runs


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return write_pattern_dataset(tmp_path / "pattern.txt", num_users=240, num_items=60)


def federated(data: Path, out: Path, *extra: str) -> tuple[dict, list[dict]]:
    """A 4-node in-process run; its summary and per-round metrics."""
    summary = run_inprocess(data, out, 4, "federated.num_supernodes=4", *extra)
    return summary, json.loads((out / "metrics.json").read_text())["rounds"]


@pytest.mark.slow
def test_local_dp_run_reports_cumulative_epsilon_and_still_beats_random(data: Path, tmp_path: Path) -> None:
    summary, rounds = federated(
        data,
        tmp_path / "local",
        "federated.rounds=3",
        "privacy.mode=local",
        "privacy.target_epsilon=8",
        "train.loss=sampled_softmax",
        "train.num_negatives=30",
    )
    epsilons = [row["train"]["epsilon-max"] for row in rounds]
    assert epsilons[0] < epsilons[1] < epsilons[2] <= 8.0 and epsilons[2] > 7.9
    assert all(row["train"]["epsilon-mean"] == pytest.approx(row["train"]["epsilon-max"]) for row in rounds)
    assert summary["privacy"]["epsilon"] == pytest.approx(epsilons[2])
    assert summary["privacy"]["delta"] == pytest.approx(1 / 240)
    floor = random_ndcg(60)
    assert summary["test_last_round"]["full"]["NDCG@10"] > 2 * floor


LOCAL_DP = (
    "privacy.mode=local",
    "privacy.noise_multiplier=1.3",
    "train.loss=sampled_softmax",
    "train.num_negatives=30",
    "federated.checkpoint=true",
)


def _epsilons(out: Path) -> list[float]:
    """The ε every node reported in each round of the run in ``out``."""
    return [row["train"]["epsilon-max"] for row in json.loads((out / "metrics.json").read_text())["rounds"]]


def test_local_dp_ledgers_survive_a_resume_from_checkpoint(data: Path, tmp_path: Path) -> None:
    """Stopped after round 2 and resumed (fresh node contexts), ε continues as in the uninterrupted run."""
    whole = tmp_path / "whole"
    run_inprocess(data, whole, 2, "federated.rounds=4", *LOCAL_DP)
    cut = tmp_path / "cut"
    run_inprocess(data, cut, 2, "federated.rounds=2", *LOCAL_DP)
    first = _epsilons(cut)
    resumed = run_inprocess(data, cut, 2, "federated.rounds=4", "federated.resume=true", *LOCAL_DP)
    uninterrupted = _epsilons(whole)
    assert first == pytest.approx(uninterrupted[:2], rel=1e-9)
    assert _epsilons(cut)[-1] == pytest.approx(uninterrupted[-1], rel=1e-9)
    assert resumed["privacy"]["epsilon"] == pytest.approx(uninterrupted[-1], rel=1e-9)
    # Each node's ledger holds its four rounds once; their composition is the reported epsilon.
    for partition in (0, 1):
        ledger = PrivacyLedger.open(ledger_path(cut / "privacy-ledgers", partition), fresh=False)
        assert [e.round for e in ledger.entries] == [1, 2, 3, 4]
    rate, steps = ledger.entries[0].rate, ledger.entries[0].steps
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = compute_rdp(q=rate, noise_multiplier=1.3, steps=4 * steps, orders=orders)
    expected, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1 / 240)
    assert uninterrupted[-1] == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_a_round_released_before_a_crash_is_counted_again_after_the_resume(
    data: Path, tmp_path: Path
) -> None:
    """The nodes trained round 3 but the server never checkpointed it: both releases of round 3 count."""
    out = tmp_path / "crash"
    run_inprocess(data, out, 2, "federated.rounds=2", *LOCAL_DP)
    for partition in (0, 1):  # what the nodes' round 3 wrote before the server died
        ledger = PrivacyLedger.open(ledger_path(out / "privacy-ledgers", partition), fresh=False)
        last = ledger.entries[-1]
        ledger.record(3, (last.noise, last.rate, last.steps))
    run_inprocess(data, out, 2, "federated.rounds=3", "federated.resume=true", *LOCAL_DP)
    ledger = PrivacyLedger.open(ledger_path(out / "privacy-ledgers", 0), fresh=False)
    assert [e.round for e in ledger.entries] == [1, 2, 3, 3]
    whole = tmp_path / "whole"
    run_inprocess(data, whole, 2, "federated.rounds=4", *LOCAL_DP)
    assert _epsilons(out)[-1] == pytest.approx(_epsilons(whole)[3], rel=1e-9)  # four releases each


def test_nodes_out_of_budget_stop_without_counting_as_failures(data: Path, tmp_path: Path) -> None:
    # Noise 3, every device in the one step of a round (60 devices, batches of 128): epsilon 0.79 after
    # round 1, 1.21 after round 2 (> the 1.0 budget).
    summary, rounds = federated(
        data,
        tmp_path / "budget",
        "federated.rounds=3",
        "privacy.mode=local",
        "privacy.noise_multiplier=3.0",
        "privacy.max_epsilon=1.0",
        "train.loss=sampled_softmax",
        "train.num_negatives=30",
    )
    assert rounds[0]["train"]["valid-replies"] == 4 and rounds[0]["train"]["privacy-stopped"] == 0
    for row in rounds[1:]:
        assert row["train"]["privacy-stopped"] == 4 and row["train"]["valid-replies"] == 0
        assert row["train"]["epsilon-max"] == pytest.approx(rounds[0]["train"]["epsilon-max"])
    assert summary["failures"] == 0


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "adaptive"])
def test_central_dp_run_with_client_side_clipping_accounts_every_round(
    data: Path, tmp_path: Path, adaptive: bool
) -> None:
    summary, rounds = federated(
        data,
        tmp_path / "central",
        "federated.rounds=2",
        "privacy.mode=central",
        "privacy.central_clipping=client",
        "privacy.noise_multiplier=0.7",
        "privacy.clipping_norm=0.5",
        f"privacy.adaptive_clipping={str(adaptive).lower()}",
    )
    delta = 1 / 240
    for number, row in enumerate(rounds, start=1):
        # Adaptive clipping's two releases are accounted as one Gaussian mechanism of the same multiplier.
        assert row["train"]["epsilon"] == pytest.approx(central_epsilon(0.7, number, delta, 4), rel=1e-6)
        assert row["train"]["valid-replies"] == 4
    norms = [row["train"]["clipping-norm"] for row in rounds]
    assert norms[0] == 0.5
    # The nodes report whether they clipped; the norm moves only when adaptive.
    assert (norms[1] != 0.5) == adaptive
    assert summary["privacy"]["mode"] == "central" and summary["privacy"]["epsilon"] > 0


def test_dp_refuses_settings_that_would_leak(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="row_weighting sends per-item counts in clear"):
        federated(
            data,
            tmp_path / "x",
            "privacy.mode=local",
            "privacy.noise_multiplier=1",
            "strategy.row_weighting=true",
        )
    with pytest.raises(ValueError, match=r"strategy.rule must be fedavg"):
        federated(
            data, tmp_path / "y", "privacy.mode=central", "privacy.noise_multiplier=1", "strategy=median"
        )


def test_sweep_runs_the_curve_then_one_knob_per_ablation() -> None:
    sweep = SweepSettings(
        epsilons=(2, 8),
        modes=("local",),
        runtime="inprocess",
        local_overrides=("train.loss=bce",),
        central_overrides=(),
        ablations=("clip-0.1 privacy.clipping_norm=0.1", "wide privacy.batch_size=512 train.lr=0.01"),
        ablation_epsilon=4,
    )
    runs = settings_of(sweep)
    assert [r["name"] for r in runs] == [
        "non-private", "local-eps2", "local-eps8", "local-eps4-clip-0.1", "local-eps4-wide",
    ]  # fmt: skip
    wide = runs[-1]
    assert wide["target_epsilon"] == 4 and wide["ablation"] == "wide"
    # The mode's own overrides first, the knob last (so it wins).
    assert wide["overrides"][-3:] == ["train.loss=bce", "privacy.batch_size=512", "train.lr=0.01"]
    for bad in ("clip-0.1", "privacy.clipping_norm=0.1", "clip 0.1"):
        with pytest.raises(ValueError, match="must be a name then key=value overrides"):
            settings_of(replace(sweep, ablations=(bad,)))
    with pytest.raises(ValueError, match="repeats a name"):
        replace(sweep, ablations=("a x.y=1", "a x.y=2"))


@pytest.mark.slow
def test_privacy_sweep_entry_point_writes_json_plot_and_result(data: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    command = [
        sys.executable, "-m", "lsc4rec.simulations.privacy_sweep",
        "data.name=pattern", f"data.path={data}", "data.max_len=10", "eval.sampled_negatives=20",
        "train.lr=0.005", "train.progress=false", "federated.rounds=2", "sweep.epsilons=[8]",
        "sweep.setting=[]", "sweep.ablations=['frozen-table privacy.freeze_item_embeddings=true']",
        "collab.cloud_users=0.5", "sweep.local_overrides=['train.loss=sampled_softmax']",
        f"output_dir={tmp_path}", "run_name=sweep", "threads=1",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    names = [row["name"] for row in result["settings"]]
    assert names == ["non-private", "local-eps8", "central-eps8", "local-eps8-frozen-table"]
    local = result["settings"][1]
    assert 7.9 < local["epsilon"] <= 8.0 and local["NDCG@10"] > result["random_NDCG@10"]
    assert 0 < result["initial_NDCG@10"] < result["settings"][0]["NDCG@10"]
    assert result["settings"][0]["fraction_of_gain"] == pytest.approx(1.0)
    assert all(row["seconds_per_round"] > 0 for row in result["settings"])
    assert (tmp_path / "sweep" / "privacy_sweep.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "sweep" / "metrics.json").read_text())
    assert saved["status"] == "completed" and len(saved["settings"]) == 4
    by_name = {row["name"]: row for row in saved["settings"]}
    spent = by_name["local-eps8"]["epsilon_by_round"]
    assert len(spent) == 2 and 0 < spent[0] < spent[1] == pytest.approx(local["epsilon"])
    assert by_name["local-eps8-frozen-table"]["ablation"] == "frozen-table"
    expected_gain = (local["NDCG@10"] - result["initial_NDCG@10"]) / (
        result["settings"][0]["NDCG@10"] - result["initial_NDCG@10"]
    )
    assert local["fraction_of_gain"] == pytest.approx(expected_gain)
    # Slices of each last-round model: "all" is the setting's own test NDCG@10; the two cloud halves split it.
    slices = result["slices_NDCG@10"]
    assert set(slices) == {"initial", *names}
    assert slices["local-eps8"]["all"] == pytest.approx(local["NDCG@10"], abs=1e-4)
    assert slices["initial"]["all"] == pytest.approx(result["initial_NDCG@10"], abs=1e-4)
    counts = by_name["local-eps8"]["slices"]
    assert (
        counts["users_the_cloud_held"]["users"] + counts["users_the_cloud_never_saw"]["users"]
        == (counts["all"]["users"])
    )
    assert counts["rare_targets"]["users"] + counts["popular_targets"]["users"] == counts["all"]["users"]


def test_seeded_noise_replays_and_os_seeded_noise_does_not() -> None:
    def weights(seeded: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = build_srm("sasrec", NUM_ITEMS, hidden_size=8)
        privacy = PrivacySettings(mode="local", noise_multiplier=1.0, seeded_noise=seeded)
        train_on_shard_private(model, sequences(32, seed=8), settings(), privacy, 10, 1, 1, 32, seed=5)
        return model.item_embedding.weight.detach().clone()

    assert torch.equal(weights(True), weights(True))
    assert not torch.equal(weights(False), weights(False))


@pytest.mark.parametrize("grad_sample_mode", ["hooks", "functorch"])
def test_frozen_item_embeddings_stay_put_and_the_encoder_trains(grad_sample_mode: str) -> None:
    torch.manual_seed(0)
    model = build_srm("sasrec", NUM_ITEMS, hidden_size=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    privacy = PrivacySettings(
        mode="local", noise_multiplier=1.0, freeze_item_embeddings=True, grad_sample_mode=grad_sample_mode
    )
    train_on_shard_private(model, sequences(32, seed=9), settings(), privacy, 10, 1, 1, 32, seed=2)
    assert torch.equal(model.item_embedding.weight, before["item_embedding.weight"])
    assert model.item_embedding.weight.requires_grad  # frozen only while training privately
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before) - 1


def test_central_dp_epsilon_matches_an_independent_accountant() -> None:
    # Opacus' own RDP analysis of the Gaussian mechanism without sampling amplification (q = 1), the same
    # orders: central DP's ε (Flower's accountant, composed by CentralDP) must agree.
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512]
    for sigma, rounds, delta in ((0.7, 3, 1 / 240), (1.5, 20, 1e-5), (4.0, 100, 1e-3)):
        rdp = compute_rdp(q=1.0, noise_multiplier=sigma, steps=rounds, orders=orders)
        expected, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
        assert central_epsilon(sigma, rounds, delta, 10) == pytest.approx(expected, rel=1e-9)


class NodeGrid:
    """The part of a Flower grid a strategy's configure_train reads: ``count`` connected node ids."""

    def __init__(self, count: int) -> None:
        self.count = count

    def get_node_ids(self) -> list[int]:
        """Node ids 1..count."""
        return list(range(1, self.count + 1))


def replies_adding(messages: list, weights, updates: list[np.ndarray]) -> list:
    """Train replies to ``messages`` whose array ``w`` is ``weights["w"]`` plus each node's update (5 examples
    each): what a central-DP strategy aggregates in these tests."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    return [
        Message(
            RecordDict(
                {
                    "arrays": ArrayRecord({"w": Array(weights["w"].numpy() + update)}),
                    "metrics": MetricRecord({"num-examples": 5.0}),
                }
            ),
            reply_to=message,
        )
        for message, update in zip(messages, updates, strict=True)
    ]


@pytest.mark.usefixtures("task_identity")
def test_central_dp_adds_gaussian_noise_of_the_calibrated_spread() -> None:
    # Ten nodes send small known updates (inside the clipping norm, so clipping leaves them alone): the
    # aggregate differs from the global model plus their mean by the noise alone, whose standard deviation
    # must be noise_multiplier * clipping_norm / nodes per coordinate. (An exactly zero update would stop
    # Flower's clipping with a division by zero.)
    from flwr.app import Array, ArrayRecord, ConfigRecord

    sigma, clip, size = 2.0, 0.5, 40_000
    weights = ArrayRecord({"w": Array(np.linspace(-1, 1, size, dtype=np.float32))})
    dp = CentralDP(SRMStrategy(uniform_weights=True, seed=0), sigma, clip, num_sampled_nodes=10, delta=1e-3)
    np.random.seed(0)
    messages = list(dp.configure_train(1, weights, ConfigRecord(), NodeGrid(10)))
    generator = np.random.default_rng(1)
    updates = [generator.normal(0, 1e-4, size).astype(np.float32) for _ in messages]
    aggregate, metrics = dp.aggregate_train(1, replies_adding(messages, weights, updates))
    noise = aggregate["w"].numpy() - weights["w"].numpy() - np.mean(updates, axis=0)
    assert abs(float(noise.mean())) < 4 * sigma * clip / 10 / np.sqrt(size)
    assert float(noise.std()) == pytest.approx(sigma * clip / 10, rel=0.03)
    assert metrics["epsilon"] == pytest.approx(central_epsilon(sigma, 1, 1e-3, 10))


def test_dp_sgd_keeps_the_optimizer_moments_across_rounds() -> None:
    """federated.keep_optimizer_state under local DP: round 2 starts from round 1's Adam moments (a function
    of noised gradients only), so it steps differently from a fresh optimizer and its step count goes on."""
    torch.manual_seed(0)
    model = build_srm("sasrec", NUM_ITEMS, hidden_size=8, dropout=0.0)
    privacy = PrivacySettings(mode="local", noise_multiplier=1.0)
    data = sequences(30, seed=1)
    kept: dict[str, torch.Tensor] = {}
    first = train_on_shard_private(
        model, data, settings(), privacy, 10, 1, 2, 30, seed=1, keep_state=kept.update
    )
    steps = first.released[2]
    assert float(kept["0.step"]) == steps and "0.exp_avg_sq" in kept
    carried, fresh = copy.deepcopy(model), copy.deepcopy(model)
    again: dict[str, torch.Tensor] = {}
    train_on_shard_private(carried, data, settings(), privacy, 10, 1, 2, 30, seed=2, optimizer_state=kept,
                           keep_state=again.update)  # fmt: skip
    train_on_shard_private(fresh, data, settings(), privacy, 10, 1, 2, 30, seed=2)
    assert float(again["0.step"]) == 2 * steps
    assert not torch.equal(carried.item_embedding.weight, fresh.item_embedding.weight)
