"""The popularity-prior probe's pieces: what each device releases, its noise, and the ε it reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import load_script
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

REPO = Path(__file__).resolve().parents[1]


def _probe():
    return load_script(REPO / "benchmarks" / "popularity_prior.py")


def test_count_noise_has_the_mechanisms_spread_on_the_total() -> None:
    probe = _probe()
    zeros = torch.zeros(200_001)
    noisy = probe.noised_counts(
        zeros, recent=4, noise_multiplier=1.5, generator=torch.Generator().manual_seed(0)
    )
    assert noisy[0] == 0
    assert float(noisy[1:].std()) == pytest.approx(1.5 * 2.0, rel=0.01)


def test_release_epsilon_is_the_gaussian_mechanisms_and_composes_with_the_ledger(tmp_path: Path) -> None:
    probe = _probe()
    delta = 1e-5
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    # Two releases at noise multiplier 6: the RDP of a sampling rate of 1, two steps.
    expected, _ = get_privacy_spent(orders=orders, rdp=compute_rdp(q=1.0, noise_multiplier=6.0, steps=2,
                                                                   orders=orders), delta=delta)  # fmt: skip
    ledger = [(0.6, 0.02, 100)]
    spent = probe.release_epsilon([(6.0, 1.0, 2)], delta, ledger)
    assert spent["alone"] == pytest.approx(expected, rel=1e-3)
    assert spent["training_alone"] < spent["with_training"] < spent["training_alone"] + spent["alone"]
    assert probe.release_epsilon([(6.0, 1.0, 2)], delta, [])["with_training"] is None
    # A third release (the weight's selection) at the same noise is the same mechanism run three times.
    three = probe.release_epsilon([(6.0, 1.0, 2), (6.0, 1.0, 1)], delta, [])["alone"]
    assert three == pytest.approx(probe.release_epsilon([(6.0, 1.0, 3)], delta, [])["alone"])
    assert three > spent["alone"]
    # The run's most spent node's ledger is the one composed.
    folder = tmp_path / "privacy-ledgers"
    folder.mkdir()
    for name, noise in (("partition-0.json", 1.0), ("partition-1.json", 0.6)):
        entry = {"round": 1, "noise": noise, "rate": 0.02, "steps": 100}
        (folder / name).write_text(json.dumps({"entries": [entry]}), encoding="utf-8")
    assert probe.largest_ledger(tmp_path, delta) == [(0.6, 0.02, 100)]
    assert probe.largest_ledger(tmp_path / "none", delta) == []
    (folder / "partition-2.json").write_text('{"entries": [{"round": 1}]}', encoding="utf-8")
    with pytest.raises(SystemExit, match=r"privacy ledger .*partition-2.json is not a ledger"):
        probe.largest_ledger(tmp_path, delta)


def test_bad_model_arguments_are_one_clear_error(tmp_path: Path) -> None:
    probe = _probe()
    with pytest.raises(SystemExit, match="must be label=path"):
        probe.parse_models(["just-a-path.pt"])
    with pytest.raises(SystemExit, match="--model dp: no such file"):
        probe.parse_models([f"dp={tmp_path / 'missing.pt'}"])


def test_the_weight_is_chosen_by_noised_sums_that_a_clear_winner_survives() -> None:
    probe = _probe()
    # 2,000 devices: weight 1 lifts each by 0.05 on average, far above the noise (std 6 x sqrt(3) = 10.4).
    g = torch.Generator().manual_seed(0)
    base = torch.rand(2000, generator=g) * 0.5
    by_weight = {0.0: base, 0.5: base + 0.02, 1.0: base + 0.05}
    choices = [probe.private_choice(by_weight, 6.0, torch.Generator().manual_seed(s))[0] for s in range(20)]
    assert choices.count(1.0) == 20
    # Equal sums: the noise decides, so both weights win sometimes (the choice is randomised, not fixed).
    tied = {0.0: base, 1.0: base.clone()}
    picks = {probe.private_choice(tied, 6.0, torch.Generator().manual_seed(s))[0] for s in range(20)}
    assert picks == {0.0, 1.0}
    _, noisy = probe.private_choice(tied, 0.0, torch.Generator().manual_seed(0))
    assert noisy[0.0] == pytest.approx(float(base.sum()))
