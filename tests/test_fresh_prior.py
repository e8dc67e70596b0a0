"""The fresh-popularity prior (``privacy.fresh_prior``): its arithmetic, its privacy planning, its settings,
and in federated runs: the counts the nodes release, the weight chosen from their gains, the ledger entries,
and every ranking after the rounds (the server's validation and test, the devices' test) adding it."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import torch
from conftest import PATTERN_RUN, run_inprocess, write_pattern_dataset

from lsc4rec.client.private_training import epsilon_of, noise_for_target, plan_for
from lsc4rec.data import leave_one_out, load_dataset
from lsc4rec.models.fresh_popularity import (
    PriorRanking,
    fresh_item_counts,
    gains_by_weight,
    log_prior,
    noised,
    per_device_ndcg,
)
from lsc4rec.models.srm import SASRec
from lsc4rec.privacy import PrivacySettings
from lsc4rec.server.components.fresh_prior import PRIOR_FILE, load_saved_prior
from lsc4rec.server.components.registry import check_components
from lsc4rec.settings import SettingsError, federated_settings_from_overrides
from lsc4rec.simulations.privacy_sweep import run_model
from lsc4rec.training import EvalSet, build_eval_sets, evaluate

NUM_ITEMS = 60


# ---------------------------------------------------------------------- arithmetic


def test_each_device_counts_its_last_distinct_items_once() -> None:
    sequences = [[1, 2, 3, 3, 2], [5, 5, 5], [], [0, 4], [7, 1, 7, 1]]
    counts = fresh_item_counts(sequences, num_items=8, recent=2)
    # Device 1: 2, 3 (the repeat of 2 is one item); device 2: 5 only; device 4: 4 (padding never counts);
    # device 5: 1, 7.
    assert counts.tolist() == [0, 1, 1, 1, 1, 1, 0, 1, 0]
    assert fresh_item_counts(sequences, 8, recent=1).tolist() == [0, 1, 1, 0, 1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="recent >= 1"):
        fresh_item_counts(sequences, 8, recent=0)


def test_the_noise_has_the_mechanisms_spread_and_zero_noise_is_exact() -> None:
    values = torch.zeros(200_000)
    draws = noised(values, 6 * math.sqrt(3), torch.Generator().manual_seed(0))
    assert float(draws.std()) == pytest.approx(6 * math.sqrt(3), rel=0.01)
    assert torch.equal(noised(torch.arange(4.0), 0.0, None), torch.arange(4.0, dtype=torch.float64))


def test_log_prior_clamps_negative_noisy_counts_and_padding() -> None:
    prior = log_prior(torch.tensor([5.0, -3.0, 0.0, math.e - 1]))
    assert prior.tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0])


def test_per_device_ndcg_counts_only_the_top_k() -> None:
    gains = per_device_ndcg(torch.tensor([0, 1, 9, 10]))
    assert gains.tolist() == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0])


def _model_and_set() -> tuple[SASRec, EvalSet]:
    torch.manual_seed(0)
    model = SASRec(NUM_ITEMS, hidden_size=16, num_blocks=1, num_heads=2, max_len=8)
    generator = torch.Generator().manual_seed(1)
    histories = [
        torch.randint(1, NUM_ITEMS + 1, (int(n),), generator=generator).tolist() for n in range(2, 42)
    ]
    targets = torch.randint(1, NUM_ITEMS + 1, (len(histories),), generator=generator).tolist()
    return model, EvalSet.build("t", histories, targets, NUM_ITEMS, 8, batch_size=16)


def test_the_wrapper_adds_the_term_to_every_score_and_keeps_padding_out() -> None:
    model, _ = _model_and_set()
    term = torch.rand(NUM_ITEMS + 1)
    ranked = PriorRanking(model, term)
    history = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]])
    plain = model.eval().score_all(history)
    added = ranked.score_all(history)
    assert torch.allclose(added[:, 1:], plain[:, 1:] + term[1:]) and torch.isinf(added[:, 0]).all()
    candidates = torch.tensor([[5, 0, 7], [1, 2, 0]])
    scores = ranked.score_candidates(history, candidates)
    expected = model.score_candidates(history, candidates) + term[candidates]
    assert torch.allclose(scores[candidates > 0], expected[candidates > 0])
    assert torch.isinf(scores[candidates == 0]).all()
    # Anything else is the model's: what the evaluation and the devices' code read.
    assert ranked.num_items == NUM_ITEMS and ranked.max_len == model.max_len
    with pytest.raises(ValueError, match="one value per item"):
        PriorRanking(model, torch.rand(2, NUM_ITEMS + 1))


def test_gains_by_weight_are_the_sums_evaluate_averages() -> None:
    model, eval_set = _model_and_set()
    prior = log_prior(torch.randint(0, 50, (NUM_ITEMS + 1,)).double())
    weights = (0.0, 0.5, 3.0)
    sums = gains_by_weight(model, eval_set.batches, prior, weights)
    rows = eval_set.batches.num_rows
    for weight in weights:
        reference = evaluate(PriorRanking(model, weight * prior), eval_set, (10,))["full"]["NDCG@10"]
        assert sums[weight] / rows == pytest.approx(reference, abs=1e-9)
    # A large weight ranks by the prior: a different ranking from the model's own.
    assert sums[3.0] != pytest.approx(sums[0.0])


# ---------------------------------------------------------------------- privacy planning and settings


def test_dp_sgd_noise_is_planned_so_that_the_releases_and_dp_sgd_end_at_the_target() -> None:
    releases = [(6.0, 1.0, 2), (6.0, 1.0, 1)]
    delta, rate, steps = 1e-4, 0.05, 400
    alone = noise_for_target(8.0, delta, rate, steps)
    composed = noise_for_target(8.0, delta, rate, steps, releases)
    assert composed > alone
    total = epsilon_of([(composed, rate, steps), *releases], delta)
    assert 8.0 * 0.99 <= total <= 8.0
    # The releases alone cost more than the target: a clear error naming what to raise.
    with pytest.raises(ValueError, match="fresh_prior_noise_multiplier"):
        noise_for_target(0.5, delta, rate, steps, [(1.0, 1.0, 3)])


def test_the_node_plans_its_noise_with_the_priors_releases() -> None:
    plain = PrivacySettings(mode="local", target_epsilon=8.0)
    with_prior = PrivacySettings(mode="local", target_epsilon=8.0, fresh_prior=True)
    assert plain.planned_releases() == []
    assert with_prior.planned_releases() == [(4.0, 1.0, 2), (4.0, 1.0, 1)]
    assert PrivacySettings(fresh_prior=True).planned_releases() == []  # without DP: exact releases
    plans = [plan_for(p, 1000, 100, 1, 5, 1000) for p in (plain, with_prior)]
    assert plans[1].noise_multiplier > plans[0].noise_multiplier
    history = [(plans[1].noise_multiplier, plans[1].sample_rate, plans[1].steps_per_epoch * 5)]
    assert epsilon_of([*history, *with_prior.planned_releases()], 1e-3) <= 8.0


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"mode": "central", "noise_multiplier": 1.0}, "central DP accounts whole nodes"),
        ({"mode": "local", "target_epsilon": 8.0, "fresh_prior_noise_multiplier": 0.0}, "must be > 0"),
        ({"fresh_prior_selection_noise_multiplier": -1.0}, "must be > 0 with privacy.mode=local"),
        ({"fresh_prior_weights": ()}, "non-empty list of weights"),
        ({"fresh_prior_weights": (0.0, -1.0)}, "non-empty list of weights"),
        ({"fresh_prior_recent": 0}, "fresh_prior_recent must be >= 1"),
    ],
)
def test_bad_prior_settings_are_refused_with_the_key(keys: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrivacySettings(fresh_prior=True, **keys)


@pytest.mark.parametrize(
    ("override", "message"),
    [("federated.fraction_evaluate=0", "fraction_evaluate > 0"), ("eval.full_ranking=false", "full_ranking")],
)
def test_a_run_the_prior_cannot_serve_is_refused_before_any_work(override: str, message: str) -> None:
    run = federated_settings_from_overrides(["system=base", "privacy.fresh_prior=true", override])
    with pytest.raises(SettingsError, match=message):
        check_components(run)


# ---------------------------------------------------------------------- federated runs


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return write_pattern_dataset(tmp_path / "pattern.txt", num_users=160, num_items=NUM_ITEMS)


def _saved(run_dir: Path, data: Path, *extra: str):
    """The run's settings, split and last-round model, as the sweep rebuilds them."""
    overrides = shlex.split(" ".join(["system=base", *PATTERN_RUN, f"data.path={data}", *extra]))
    run = federated_settings_from_overrides(overrides)
    raw = load_dataset(run.data.name, run.data.path, run.data.format)
    split = leave_one_out(raw)
    return run, split, run_model(run, raw, split, run_dir / "model_last.pt")


def test_without_dp_the_server_ranks_with_the_exact_counts_at_the_chosen_weight(
    data: Path, tmp_path: Path
) -> None:
    # One weight: the choice is forced, so the test and the last validation must carry the prior.
    extra = ("federated.rounds=2", "privacy.fresh_prior=true", "privacy.fresh_prior_weights=[1.0]")
    out = tmp_path / "run"
    summary = run_inprocess(data, out, 2, *extra)
    rows = json.loads((out / "metrics.json").read_text())["rounds"]
    assert summary["fresh_prior"]["weight"] == 1.0 and summary["fresh_prior"]["nodes_counted"] == 2
    assert "fresh_prior" not in rows[0] and rows[1]["fresh_prior"]["nodes_choosing"] == 2
    run, split, model = _saved(out, data, *extra)
    saved = torch.load(out / PRIOR_FILE, weights_only=True)
    # Without DP the released counts are exact: every device's last 3 distinct items, as of each moment.
    test_histories = [[*h, v] for h, v in zip(split.train, split.valid_targets, strict=True)]
    assert torch.equal(saved["test"], fresh_item_counts(test_histories, split.num_items, 3).float())
    assert torch.equal(saved["valid"], fresh_item_counts(split.train, split.num_items, 3).float())
    valid_set, test_set = build_eval_sets(split, run.eval, run.data.max_len)
    term = load_saved_prior(out, "test")
    assert term is not None
    with_prior = evaluate(PriorRanking(model, term), test_set, run.eval.ks)["full"]["NDCG@10"]
    without = evaluate(model, test_set, run.eval.ks)["full"]["NDCG@10"]
    assert summary["test_last_round"]["full"]["NDCG@10"] == pytest.approx(with_prior, abs=1e-6)
    assert with_prior != pytest.approx(without, abs=1e-6)
    # The last round's validation ranked with the counts as of the validation items.
    valid_term = load_saved_prior(out, "valid")
    assert valid_term is not None
    valid = evaluate(PriorRanking(model, valid_term), valid_set, run.eval.ks)["full"]["NDCG@10"]
    assert rows[1]["server_valid"]["NDCG@10"] == pytest.approx(valid, abs=1e-6)


def test_weight_zero_chosen_ranks_without_the_prior(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    extra = ("federated.rounds=1", "privacy.fresh_prior=true", "privacy.fresh_prior_weights=[0.0]")
    summary = run_inprocess(data, out, 2, *extra)
    assert summary["fresh_prior"]["weight"] == 0.0 and load_saved_prior(out) is None
    run, split, model = _saved(out, data, *extra)
    _, test_set = build_eval_sets(split, run.eval, run.data.max_len)
    plain = evaluate(model, test_set, run.eval.ks)["full"]["NDCG@10"]
    assert summary["test_last_round"]["full"]["NDCG@10"] == pytest.approx(plain, abs=1e-6)


def test_under_local_dp_the_releases_are_in_every_ledger_and_the_run_ends_at_its_target(
    data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    summary = run_inprocess(
        data,
        out,
        2,
        "federated.rounds=2",
        "privacy.mode=local",
        "privacy.target_epsilon=8",
        "train.loss=sampled_softmax",
        "train.num_negatives=20",
        "privacy.fresh_prior=true",
        "privacy.fresh_prior_noise_multiplier=5",
        "privacy.fresh_prior_selection_noise_multiplier=7",
    )
    ledgers = sorted((out / "privacy-ledgers").glob("*.json"))
    assert len(ledgers) == 2
    for path in ledgers:
        entries = json.loads(path.read_text())["entries"]
        # Two DP-SGD rounds, then the prior's two count vectors and its gains, recorded in the last round.
        assert [e["round"] for e in entries] == [1, 2, 2, 2]
        assert [(e["noise"], e["rate"], e["steps"]) for e in entries[2:]] == [(5.0, 1.0, 2), (7.0, 1.0, 1)]
        history = [(e["noise"], e["rate"], e["steps"]) for e in entries]
        assert epsilon_of(history, summary["privacy"]["delta"]) == pytest.approx(8.0, rel=0.01)
    # The reported ε is the one after every release, at the target (within the planner's tolerance).
    assert 8.0 * 0.99 <= summary["privacy"]["epsilon"] <= 8.0 + 1e-9
    noisy = torch.load(out / PRIOR_FILE, weights_only=True)
    assert not torch.equal(noisy["test"], noisy["test"].round())  # the counts arrived noised
    assert summary["fresh_prior"]["weight"] in (0.0, 0.25, 0.5, 1.0, 2.0)
    assert set(summary["fresh_prior"]["gain_sums"]) == {"0", "0.25", "0.5", "1", "2"}
