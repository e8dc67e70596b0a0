"""Ranking metrics against a plain loop-based reference and hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from lsc4rec.metrics import (
    RankingAccumulator,
    full_ranking_ranks,
    metrics_from_ranks,
    sample_negatives,
    sampled_ranking_ranks,
    target_ranks,
)


def reference_rank(scores: list[float], target: int, excluded: set[int]) -> int:
    """Obvious implementation: sort the kept items best-first, ties put the target last, find it."""
    num_items = len(scores) - 1
    if target in excluded:
        return num_items
    kept = [i for i in range(1, len(scores)) if i not in excluded]
    # Sort by score descending; among equal scores the target goes after the others (pessimistic ties).
    ordered = sorted(kept, key=lambda i: (-scores[i], i == target))
    return ordered.index(target)


def reference_metrics(ranks: list[int], k: int) -> tuple[float, float, float]:
    hr = sum(1.0 for r in ranks if r < k) / len(ranks)
    ndcg = sum(1.0 / math.log2(r + 2) for r in ranks if r < k) / len(ranks)
    mrr = sum(1.0 / (r + 1) for r in ranks if r < k) / len(ranks)
    return hr, ndcg, mrr


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_ties", [False, True])
def test_full_ranking_matches_reference(seed: int, with_ties: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    batch, num_items = 50, 200
    scores = torch.rand(batch, num_items + 1, generator=gen)
    if with_ties:
        scores = (scores * 10).round() / 10  # ~11 distinct values: many ties
    targets = torch.randint(1, num_items + 1, (batch,), generator=gen)
    exclude = torch.randint(0, num_items + 1, (batch, 8), generator=gen)
    original = scores.clone()
    ranks = full_ranking_ranks(scores, targets, exclude)
    assert torch.equal(scores, original), "caller's scores must not change"
    expected = [
        reference_rank(scores[b].tolist(), int(targets[b]), {int(x) for x in exclude[b] if int(x) != 0})
        for b in range(batch)
    ]
    assert ranks.tolist() == expected
    got = metrics_from_ranks(ranks)
    for k in (5, 10, 20):
        hr, ndcg, mrr = reference_metrics(expected, k)
        assert got[f"HR@{k}"] == pytest.approx(hr, abs=1e-12)
        assert got[f"NDCG@{k}"] == pytest.approx(ndcg, abs=1e-12)
        assert got[f"MRR@{k}"] == pytest.approx(mrr, abs=1e-12)


def test_hand_computed_cases() -> None:
    # Items 1..3 score 0.9, 0.5, 0.7; target 2 (0.5) is beaten by items 1 and 3: rank 2.
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.7]])
    ranks = full_ranking_ranks(scores, torch.tensor([2]))
    assert ranks.tolist() == [2]
    metrics = metrics_from_ranks(ranks, ks=(1, 5))
    assert metrics["HR@1"] == 0.0 and metrics["HR@5"] == 1.0
    assert metrics["NDCG@5"] == pytest.approx(0.5)  # 1 / log2(2 + 2)
    assert metrics["MRR@5"] == pytest.approx(1 / 3)
    # The padding column never counts, even with a huge score.
    assert full_ranking_ranks(torch.tensor([[99.0, 0.1, 0.5]]), torch.tensor([2])).tolist() == [0]
    # A tie with one other item puts the target below it.
    assert full_ranking_ranks(torch.tensor([[0.0, 0.5, 0.5, 0.1]]), torch.tensor([1])).tolist() == [1]
    # Excluding a better item lifts the target; excluding the target makes it a miss (rank N).
    assert full_ranking_ranks(scores, torch.tensor([2]), torch.tensor([[1, 0]])).tolist() == [1]
    assert full_ranking_ranks(scores, torch.tensor([2]), torch.tensor([[2, 0]])).tolist() == [3]


def test_constant_scores_never_look_good() -> None:
    scores = torch.zeros(10, 101)
    ranks = full_ranking_ranks(scores, torch.arange(1, 11))
    assert ranks.tolist() == [99] * 10
    assert metrics_from_ranks(ranks)["HR@20"] == 0.0


def test_minus_inf_target_ranks_last() -> None:
    scores = torch.tensor([[0.0, float("-inf"), float("-inf"), 0.3]])
    assert target_ranks(scores[:, 1:], torch.tensor([0])).tolist() == [2]


def test_input_errors_are_clear() -> None:
    scores = torch.rand(3, 5)
    scores[1, 2] = float("nan")
    with pytest.raises(ValueError, match="row 1 contain NaN"):
        full_ranking_ranks(scores, torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match=r"target item 5 outside 1\.\.4"):
        full_ranking_ranks(torch.rand(3, 5), torch.tensor([1, 5, 1]))
    with pytest.raises(ValueError, match="targets must be 1-D with 3 rows"):
        full_ranking_ranks(torch.rand(3, 5), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="empty"):
        RankingAccumulator().compute()


def test_sample_negatives_properties() -> None:
    num_items, batch = 50, 40
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(1, num_items + 1, (batch,), generator=gen)
    exclude = torch.randint(0, num_items + 1, (batch, 10), generator=gen)
    negatives = sample_negatives(targets, num_items, 20, torch.Generator().manual_seed(7), exclude)
    assert negatives.shape == (batch, 20)
    for b in range(batch):
        row = negatives[b].tolist()
        assert len(set(row)) == 20
        assert all(1 <= x <= num_items for x in row)
        assert int(targets[b]) not in row
        assert not set(row) & {int(x) for x in exclude[b]}
    again = sample_negatives(targets, num_items, 20, torch.Generator().manual_seed(7), exclude)
    other = sample_negatives(targets, num_items, 20, torch.Generator().manual_seed(8), exclude)
    assert torch.equal(negatives, again) and not torch.equal(negatives, other)


def test_sample_negatives_is_uniform() -> None:
    # 20,000 rows x 5 draws from 19 eligible items (target 1 excluded): each expects ~5,263 draws.
    targets = torch.ones(20_000, dtype=torch.long)
    draws = sample_negatives(targets, 20, 5, torch.Generator().manual_seed(3))
    counts = torch.bincount(draws.flatten(), minlength=21)
    assert counts[0] == 0 and counts[1] == 0
    expected = 100_000 / 19
    # Binomial std ~ 70; 5% is > 3.5 std.
    assert ((counts[2:].double() - expected).abs() < 0.05 * expected).all(), counts


def test_sample_negatives_too_few_eligible() -> None:
    with pytest.raises(ValueError, match="row 0 has only 3 eligible items for 5 negatives"):
        sample_negatives(torch.tensor([1]), 4, 5, torch.Generator().manual_seed(0))


def test_sampled_ranking_matches_reference() -> None:
    gen = torch.Generator().manual_seed(4)
    batch, num_items = 30, 300
    scores = (torch.rand(batch, num_items + 1, generator=gen) * 20).round()
    targets = torch.randint(1, num_items + 1, (batch,), generator=gen)
    negatives = sample_negatives(targets, num_items, 99, gen)
    ranks = sampled_ranking_ranks(scores, targets, negatives)
    for b in range(batch):
        t = float(scores[b, targets[b]])
        others = [float(scores[b, n]) for n in negatives[b]]
        assert int(ranks[b]) == sum(1 for s in others if s >= t)


def test_accumulator_equals_concatenation() -> None:
    gen = torch.Generator().manual_seed(5)
    parts = [torch.randint(0, 60, (n,), generator=gen) for n in (7, 30, 1, 12)]
    accumulator = RankingAccumulator()
    for part in parts:
        accumulator.add(part)
    assert accumulator.count == 50
    expected = metrics_from_ranks(torch.cat(parts))
    assert accumulator.compute() == pytest.approx(expected, abs=1e-12)
