"""Ranking metrics: vectorised code vs a plain loop reference, hand-computed cases, sampling, input errors."""

from __future__ import annotations

import math

import pytest
import torch

from lsc4rec import metrics
from lsc4rec.metrics import (
    DEFAULT_KS,
    RankingAccumulator,
    full_ranking_ranks,
    metrics_from_ranks,
    sample_negatives,
    sampled_ranking_ranks,
    target_ranks,
)

# --------------------------------------------------------------------------------------------------------
# Plain reference implementation (Python loops, no tensors), deliberately written differently from the module
# --------------------------------------------------------------------------------------------------------


def ref_rank(row: list[float], target_col: int, candidate_cols: list[int]) -> int:
    """Sort (score, column) pairs best first, ties put the target last among equals; return its position."""
    # Key: higher score first; among equal scores the target (flag 1) comes after the others (flag 0).
    pairs = sorted(candidate_cols, key=lambda col: (-row[col], 1 if col == target_col else 0))
    return pairs.index(target_col)


def ref_full_rank(row: list[float], target: int, excluded: set[int]) -> int:
    """Full ranking: column 0 and excluded ids become -inf, rank among all columns; excluded target -> N."""
    num_items = len(row) - 1
    if target in excluded:
        return num_items
    masked = [float("-inf") if col == 0 or col in excluded else score for col, score in enumerate(row)]
    return ref_rank(masked, target, list(range(len(row))))


def ref_metrics(ranks: list[int], ks: tuple[int, ...]) -> dict[str, float]:
    """Mean HR/NDCG/MRR@K with math.log2."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = sum(1.0 for r in ranks if r < k) / len(ranks)
        out[f"NDCG@{k}"] = sum(1.0 / math.log2(r + 2) for r in ranks if r < k) / len(ranks)
        out[f"MRR@{k}"] = sum(1.0 / (r + 1) for r in ranks if r < k) / len(ranks)
    return out


def assert_metrics_close(got: dict[str, float], want: dict[str, float]) -> None:
    """Same keys in the same order and values equal up to float rounding."""
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def random_case(
    seed: int, batch: int = 50, num_items: int = 200, history: int = 15
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores rounded to 1 decimal (many ties) with some -inf, targets, padded histories (rows 0-2 hit)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.round(torch.randn(batch, num_items + 1, generator=g) * 10) / 10
    scores[torch.rand(batch, num_items + 1, generator=g) < 0.02] = float("-inf")
    targets = torch.randint(1, num_items + 1, (batch,), generator=g)
    exclude = torch.randint(1, num_items + 1, (batch, history), generator=g)
    exclude[torch.rand(batch, history, generator=g) < 0.3] = 0  # padding entries
    exclude[:3, 0] = targets[:3]  # rows 0..2 have their target excluded
    return scores, targets, exclude


# --------------------------------------------------------------------------------------------------------
# Against the reference
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_target_ranks_match_reference(seed: int) -> None:
    scores, targets, _ = random_case(seed)
    ranks = target_ranks(scores, targets)
    assert ranks.dtype == torch.long and ranks.shape == targets.shape
    rows = scores.tolist()
    want = [ref_rank(rows[i], int(targets[i]), list(range(len(rows[i])))) for i in range(len(rows))]
    assert ranks.tolist() == want


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("use_exclude", [False, True])
def test_full_ranking_matches_reference(seed: int, use_exclude: bool) -> None:
    scores, targets, exclude = random_case(seed)
    original = scores.clone()
    ranks = full_ranking_ranks(scores, targets, exclude if use_exclude else None)
    assert torch.equal(scores, original)  # the caller's tensor is untouched
    rows, ex = scores.tolist(), exclude.tolist()
    want = [
        ref_full_rank(rows[i], int(targets[i]), {e for e in ex[i] if e} if use_exclude else set())
        for i in range(len(rows))
    ]
    assert ranks.tolist() == want
    ks = (1, 5, 10, 20, 50)
    assert_metrics_close(metrics_from_ranks(ranks, ks), ref_metrics(want, ks))


@pytest.mark.parametrize("seed", range(5))
def test_sampled_ranking_matches_reference(seed: int) -> None:
    scores, targets, exclude = random_case(seed)
    g = torch.Generator().manual_seed(100 + seed)
    negatives = sample_negatives(targets, 200, 99, g, exclude=exclude)
    ranks = sampled_ranking_ranks(scores, targets, negatives)
    assert ranks.dtype == torch.long
    rows, negs = scores.tolist(), negatives.tolist()
    want = [ref_rank(rows[i], int(targets[i]), [int(targets[i]), *negs[i]]) for i in range(len(rows))]
    assert ranks.tolist() == want
    assert_metrics_close(metrics_from_ranks(ranks), ref_metrics(want, DEFAULT_KS))


# --------------------------------------------------------------------------------------------------------
# Hand-computed cases
# --------------------------------------------------------------------------------------------------------


def test_hand_computed_rank_and_metrics() -> None:
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.7]])
    target = torch.tensor([2])
    assert target_ranks(scores, target).tolist() == [2]
    assert full_ranking_ranks(scores, target).tolist() == [2]
    result = metrics_from_ranks(torch.tensor([2]), ks=(2, 5))
    assert result == {
        "HR@2": 0.0,
        "NDCG@2": 0.0,
        "MRR@2": 0.0,
        "HR@5": 1.0,
        "NDCG@5": pytest.approx(0.5),  # 1 / log2(4)
        "MRR@5": pytest.approx(1 / 3),
    }


def test_default_keys_and_order() -> None:
    assert DEFAULT_KS == (5, 10, 20)
    keys = list(metrics_from_ranks(torch.tensor([0])))
    assert keys == ["HR@5", "NDCG@5", "MRR@5", "HR@10", "NDCG@10", "MRR@10", "HR@20", "NDCG@20", "MRR@20"]


def test_metrics_mean_over_rows_by_hand() -> None:
    result = metrics_from_ranks(torch.tensor([0, 1, 4, 5, 30]), ks=(5,))
    assert result["HR@5"] == pytest.approx(3 / 5)
    assert result["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5)
    assert result["MRR@5"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 5)


def test_tie_counts_against_target() -> None:
    # Items 2 and 3 tie at 0.5; whichever is the target ranks below the other (and below item 1).
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.5, 0.1], [0.0, 0.9, 0.5, 0.5, 0.1]])
    assert full_ranking_ranks(scores, torch.tensor([2, 3])).tolist() == [2, 2]
    # Item 4 is strictly below everything except padding, which never counts.
    assert full_ranking_ranks(scores, torch.tensor([4, 1])).tolist() == [3, 0]


def test_constant_scores_give_zero_hit_rate() -> None:
    num_items = 50
    scores = torch.zeros(8, num_items + 1)
    targets = torch.arange(1, 9)
    ranks = full_ranking_ranks(scores, targets)
    assert ranks.tolist() == [num_items - 1] * 8
    result = metrics_from_ranks(ranks)
    assert result["HR@20"] == 0.0 and result["NDCG@20"] == 0.0 and result["MRR@20"] == 0.0
    negatives = sample_negatives(targets, num_items, 30, torch.Generator().manual_seed(0))
    assert sampled_ranking_ranks(scores, targets, negatives).tolist() == [30] * 8


def test_excluded_target_is_a_miss() -> None:
    scores = torch.tensor([[0.0, 5.0, 1.0, 2.0], [0.0, 5.0, 1.0, 2.0]])
    targets = torch.tensor([1, 1])
    exclude = torch.tensor([[1, 0], [3, 0]])
    ranks = full_ranking_ranks(scores, targets, exclude)
    # Row 0: target excluded -> rank N = 3. Row 1: excluding item 3 does not change the top item.
    assert ranks.tolist() == [3, 0]
    assert metrics_from_ranks(ranks, ks=(1, 3))["HR@3"] == 0.5


def test_exclusion_lifts_target() -> None:
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.7]])
    assert full_ranking_ranks(scores, torch.tensor([2]), torch.tensor([[1, 3]])).tolist() == [0]
    assert full_ranking_ranks(scores, torch.tensor([2]), torch.tensor([[0, 3]])).tolist() == [1]


def test_padding_column_never_counted() -> None:
    scores = torch.tensor([[1e9, 0.1, 0.3, 0.2]])
    assert full_ranking_ranks(scores, torch.tensor([2])).tolist() == [0]
    negatives = torch.tensor([[1, 3]])
    assert sampled_ranking_ranks(scores, torch.tensor([2]), negatives).tolist() == [0]


def test_minus_inf_target_ranks_last() -> None:
    inf = float("-inf")
    scores = torch.tensor([[0.0, 0.3, inf, inf, 0.1]])
    # Pessimistic: after every finite item and after the other -inf entries (item 3 and padding column 0).
    assert full_ranking_ranks(scores, torch.tensor([2])).tolist() == [4]
    assert target_ranks(scores, torch.tensor([2])).tolist() == [4]
    # A finite target is unaffected by -inf items.
    assert full_ranking_ranks(scores, torch.tensor([4])).tolist() == [1]


def test_works_with_half_precision_and_empty_batch() -> None:
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.7]], dtype=torch.float16)
    assert full_ranking_ranks(scores, torch.tensor([3], dtype=torch.int32)).tolist() == [1]
    empty = full_ranking_ranks(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,) and empty.dtype == torch.long


# --------------------------------------------------------------------------------------------------------
# sample_negatives
# --------------------------------------------------------------------------------------------------------


def check_negatives(negatives: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor, n: int) -> None:
    """Every row: ids in 1..n, no duplicates, never the target, never an excluded id."""
    for row, target, excluded in zip(negatives.tolist(), targets.tolist(), exclude.tolist(), strict=True):
        assert len(set(row)) == len(row)
        assert all(1 <= item <= n for item in row)
        assert target not in row
        assert not set(row) & (set(excluded) - {0})


def test_sample_negatives_properties() -> None:
    g = torch.Generator().manual_seed(1)
    num_items, batch = 300, 64
    targets = torch.randint(1, num_items + 1, (batch,), generator=g)
    exclude = torch.randint(0, num_items + 1, (batch, 40), generator=g)
    # Row 0 has a huge history (only 120 eligible items), which forces the random-keys path for it.
    exclude = torch.cat([exclude, torch.zeros(batch, 180, dtype=torch.long)], dim=1)
    exclude[0, :179] = torch.tensor([i for i in range(1, num_items + 1) if i != int(targets[0])][:179])
    negatives = sample_negatives(targets, num_items, 99, g, exclude=exclude)
    assert negatives.shape == (batch, 99) and negatives.dtype == torch.long
    check_negatives(negatives, targets, exclude, num_items)


def test_sample_negatives_exactly_enough_eligible() -> None:
    targets = torch.tensor([1, 10])
    exclude = torch.tensor([[2, 3, 0], [4, 5, 0]])
    negatives = sample_negatives(targets, 10, 7, torch.Generator().manual_seed(0), exclude=exclude)
    assert sorted(negatives[0].tolist()) == [4, 5, 6, 7, 8, 9, 10]
    assert sorted(negatives[1].tolist()) == [1, 2, 3, 6, 7, 8, 9]
    check_negatives(negatives, targets, exclude, 10)


def test_sample_negatives_deterministic_per_seed() -> None:
    targets = torch.randint(1, 501, (32,), generator=torch.Generator().manual_seed(0))

    def draw(seed: int) -> torch.Tensor:
        return sample_negatives(targets, 500, 99, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


@pytest.mark.parametrize(
    ("num_negatives", "squeeze_budget", "expected_path"),
    [(10, False, "rejection"), (100, False, "keys"), (10, True, "mixed")],
)
def test_sample_negatives_roughly_uniform(
    num_negatives: int, squeeze_budget: bool, expected_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counts per eligible item over many rows stay within honest binomial bounds, on every sampling path.

    With 196 eligible of 200 items, k=10 is served by rejection sampling and k=100 by random keys; a rejection
    budget just under the expected number of draws makes ~1/3 of rows fail, so the leftover fallback runs too.
    """
    if squeeze_budget:
        monkeypatch.setattr(metrics, "_OVERSAMPLE", 0.95)
        monkeypatch.setattr(metrics, "_EXTRA_DRAWS", 0)
    keys_rows: list[int] = []
    real_keys = metrics._sample_by_keys

    def spy(banned: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
        keys_rows.append(banned.shape[0])
        return real_keys(banned, k, generator)

    monkeypatch.setattr(metrics, "_sample_by_keys", spy)
    num_items, rows = 200, 4000
    targets = torch.ones(rows, dtype=torch.long)
    exclude = torch.tensor([[2, 3, 4, 0]]).expand(rows, 4)
    negatives = sample_negatives(targets, num_items, num_negatives, torch.Generator().manual_seed(3), exclude)

    keys_total = sum(keys_rows)
    if expected_path == "rejection":
        assert keys_total == 0
    elif expected_path == "keys":
        assert keys_total == rows
    else:
        assert 0.05 * rows < keys_total < 0.95 * rows, keys_total

    check_negatives(negatives[:200], targets[:200], exclude[:200], num_items)
    counts = torch.bincount(negatives.flatten(), minlength=num_items + 1).double()
    assert counts[:5].sum() == 0  # padding, target and excluded ids never drawn
    eligible = counts[5:]
    p = num_negatives / eligible.numel()
    # Each eligible item lands in a row's subset with probability p, independently across rows.
    mean, sd = rows * p, math.sqrt(rows * p * (1 - p))
    assert torch.all((eligible - mean).abs() < 5 * sd), (eligible.min(), eligible.max(), mean, sd)
    # Chi-square-like statistic with the per-item binomial variance (~195 degrees of freedom): mean + 6 sd.
    stat = float(((eligible - mean) ** 2 / sd**2).sum())
    dof = eligible.numel() - 1
    assert stat < dof + 6 * math.sqrt(2 * dof), stat
    # A row's first negative is a uniform eligible id (ids 5..200, mean 102.5, sd ~56.6 / sqrt(4000) ~ 0.9):
    # catches output sorted by id, which would bias anything that reads a prefix of the negatives.
    assert abs(float(negatives[:, 0].double().mean()) - 102.5) < 4.5


def test_sample_negatives_too_few_eligible() -> None:
    targets = torch.tensor([1, 1])
    exclude = torch.tensor([[0, 0, 0, 0, 0], [2, 3, 4, 5, 6]])
    with pytest.raises(ValueError, match=r"row 1.*only 4 of num_items=10"):
        sample_negatives(targets, 10, 5, torch.Generator().manual_seed(0), exclude=exclude)
    with pytest.raises(ValueError, match="num_negatives"):
        sample_negatives(targets, 10, 0, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"targets\[0\] = 11"):
        sample_negatives(torch.tensor([11]), 10, 3, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"exclude\[0, 1\] = -1"):
        sample_negatives(torch.tensor([1]), 10, 3, torch.Generator().manual_seed(0), torch.tensor([[2, -1]]))


def test_sample_negatives_chunks_many_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 5 * 101)  # 5 rows per chunk
    g = torch.Generator().manual_seed(4)
    targets = torch.randint(1, 101, (23,), generator=g)
    exclude = torch.randint(0, 101, (23, 20), generator=g)
    negatives = sample_negatives(targets, 100, 50, g, exclude)
    assert negatives.shape == (23, 50)
    check_negatives(negatives, targets, exclude, 100)


# --------------------------------------------------------------------------------------------------------
# Accumulator
# --------------------------------------------------------------------------------------------------------


def test_accumulator_matches_concatenation() -> None:
    g = torch.Generator().manual_seed(5)
    batches = [torch.randint(0, 40, (size,), generator=g) for size in (7, 1, 0, 33, 12)]
    acc = RankingAccumulator((1, 5, 10, 20))
    for ranks in batches:
        acc.add(ranks)
    assert acc.count == 53
    assert acc.ks == (1, 5, 10, 20)
    expected = metrics_from_ranks(torch.cat(batches), (1, 5, 10, 20))
    assert_metrics_close(acc.compute(), expected)
    assert_metrics_close(expected, ref_metrics(torch.cat(batches).tolist(), (1, 5, 10, 20)))


def test_accumulator_defaults_and_empty() -> None:
    acc = RankingAccumulator()
    assert acc.count == 0 and acc.ks == DEFAULT_KS
    with pytest.raises(ValueError, match="before any ranks"):
        acc.compute()


# --------------------------------------------------------------------------------------------------------
# Input errors
# --------------------------------------------------------------------------------------------------------


def test_nan_raises_naming_row() -> None:
    scores = torch.zeros(5, 11)
    scores[3, 7] = float("nan")
    targets = torch.ones(5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"scores row 3 contains NaN"):
        full_ranking_ranks(scores, targets)
    with pytest.raises(ValueError, match=r"scores row 3 contains NaN"):
        target_ranks(scores, targets)
    with pytest.raises(ValueError, match=r"scores_all row 3 contains NaN"):
        sampled_ranking_ranks(scores, targets, torch.full((5, 2), 2))


@pytest.mark.parametrize("bad", [0, 11, -1])
def test_target_out_of_range(bad: int) -> None:
    scores = torch.zeros(3, 11)
    targets = torch.tensor([1, bad, 2])
    with pytest.raises(ValueError, match=rf"targets\[1\] = {bad} is outside the valid item ids 1..10"):
        full_ranking_ranks(scores, targets)
    with pytest.raises(ValueError, match=rf"targets\[1\] = {bad}"):
        sampled_ranking_ranks(scores, targets, torch.full((3, 2), 3))


def test_shape_and_dtype_errors() -> None:
    scores = torch.zeros(3, 11)
    targets = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="targets has 2 rows"):
        full_ranking_ranks(scores, targets[:2])
    with pytest.raises(ValueError, match="targets must be 1-D"):
        full_ranking_ranks(scores, targets[:, None])
    with pytest.raises(ValueError, match="targets must have an integer dtype"):
        full_ranking_ranks(scores, targets.float())
    with pytest.raises(ValueError, match="scores must be 2-D"):
        full_ranking_ranks(torch.zeros(11), targets)
    with pytest.raises(ValueError, match="floating dtype"):
        full_ranking_ranks(torch.zeros(3, 11, dtype=torch.long), targets)
    with pytest.raises(ValueError, match=r"targets\[0\] = 4 is outside the valid column indices 0..3"):
        target_ranks(torch.zeros(3, 4), torch.tensor([4, 0, 0]))
    with pytest.raises(ValueError, match=r"exclude\[2, 0\] = 11"):
        full_ranking_ranks(scores, targets, torch.tensor([[0], [1], [11]]))
    with pytest.raises(ValueError, match="exclude has 1 rows"):
        full_ranking_ranks(scores, targets, torch.tensor([[1]]))
    with pytest.raises(ValueError, match=r"negatives\[0, 1\] = 0"):
        sampled_ranking_ranks(scores, targets, torch.tensor([[4, 0], [4, 5], [4, 5]]))
    with pytest.raises(ValueError, match="negatives row 1 contains that row's target item 2"):
        sampled_ranking_ranks(scores, targets, torch.tensor([[4, 5], [4, 2], [4, 5]]))


def test_metric_input_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        metrics_from_ranks(torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ranks\[1\] = -1"):
        metrics_from_ranks(torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="integer dtype"):
        metrics_from_ranks(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="duplicates"):
        metrics_from_ranks(torch.tensor([0]), ks=(5, 5))
    with pytest.raises(ValueError, match="ks entry"):
        RankingAccumulator((0,))
    with pytest.raises(ValueError, match="at least one cut-off"):
        RankingAccumulator(())
