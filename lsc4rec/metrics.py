"""Ranking metrics for next-item recommendation: HR@K, NDCG@K and MRR@K, full-ranking and sampled protocols.

Conventions: item ids are 1..N; a score matrix over all items is ``[B, N + 1]`` with column 0 the padding
"item", which is never ranked. Ranks are 0-based (rank 0 = top of the list).

Ties are pessimistic: a target's rank is the number of columns scoring strictly higher plus the number of
*other* columns scoring exactly the same. A model that gives every item the same score therefore ranks every
target last among its ties and scores zero, never a perfect HR. (``torch.topk``-based code breaks ties by
index, which silently rewards constant or heavily quantised scores.) ``-inf`` is a legitimate score (masked
items); a target scoring ``-inf`` ranks after every other column, i.e. it is a miss. NaN scores are an error.

Full ranking (:func:`full_ranking_ranks`) may exclude items from the ranking, normally the user's history
(RecBole / S3-Rec convention). If the target itself is among the excluded items (a repeat consumption), the
row counts as a miss (rank N), as in RecBole: excluding the target's competitors while keeping the target
would leak the answer.

Sampled protocol (:func:`sample_negatives`, :func:`sampled_ranking_ranks`): the target is ranked among
itself and ``n`` (usually 99) uniformly drawn items the user never interacted with, with fixed seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_KS: tuple[int, ...] = (5, 10, 20)


def _check_scores_targets(scores: torch.Tensor, targets: torch.Tensor, what: str) -> None:
    if scores.dim() != 2:
        raise ValueError(f"{what}: scores must be 2-D [B, C], got shape {tuple(scores.shape)}")
    if targets.dim() != 1 or targets.numel() != scores.size(0):
        raise ValueError(
            f"{what}: targets must be 1-D with {scores.size(0)} rows (one per score row), "
            f"got shape {tuple(targets.shape)}"
        )
    nan_rows = torch.isnan(scores).any(dim=1).nonzero().flatten()
    if nan_rows.numel():
        raise ValueError(f"{what}: scores of row {int(nan_rows[0])} contain NaN; cannot rank")


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based pessimistic rank of each row's target column among that row's columns.

    ``scores [B, C]``, ``targets [B]`` column indices. Returns a LongTensor ``[B]``.
    """
    _check_scores_targets(scores, targets, "target_ranks")
    targets = targets.long()
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= scores.size(1)):
        bad = targets[(targets < 0) | (targets >= scores.size(1))][0]
        raise ValueError(f"target_ranks: target column {int(bad)} outside 0..{scores.size(1) - 1}")
    target_scores = scores.gather(1, targets[:, None])
    higher = (scores > target_scores).sum(dim=1)
    # Equal scores include the target itself, hence the -1; -inf == -inf, so a -inf target ranks last.
    ties = (scores == target_scores).sum(dim=1) - 1
    return higher + ties


def _excluded_mask(num_columns: int, exclude: torch.Tensor, rows: int) -> torch.Tensor:
    if exclude.dim() != 2 or exclude.size(0) != rows:
        raise ValueError(f"exclude must be [B, S] with B={rows}, got shape {tuple(exclude.shape)}")
    if exclude.numel() and (int(exclude.min()) < 0 or int(exclude.max()) >= num_columns):
        raise ValueError(f"exclude holds item ids outside 0..{num_columns - 1}")
    mask = torch.zeros(rows, num_columns, dtype=torch.bool, device=exclude.device)
    mask.scatter_(1, exclude.long(), True)
    return mask


def full_ranking_ranks(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """Full-ranking protocol: 0-based rank of each target among all items 1..N.

    ``scores [B, N + 1]`` (column 0 = padding, never ranked), ``targets [B]`` ids in 1..N, ``exclude``:
    optional ``[B, S]`` item ids removed from the ranking (0 entries are padding). A row whose target is
    excluded gets rank N (a miss at every cut-off). The caller's ``scores`` are not modified.
    """
    _check_scores_targets(scores, targets, "full_ranking_ranks")
    num_items = scores.size(1) - 1
    targets = targets.long()
    if targets.numel() and (int(targets.min()) < 1 or int(targets.max()) > num_items):
        bad = targets[(targets < 1) | (targets > num_items)][0]
        raise ValueError(f"full_ranking_ranks: target item {int(bad)} outside 1..{num_items}")
    removed = torch.zeros_like(scores, dtype=torch.bool)
    removed[:, 0] = True
    if exclude is not None:
        removed |= _excluded_mask(scores.size(1), exclude, scores.size(0))
    target_removed = removed.gather(1, targets[:, None]).squeeze(1)
    masked = scores.masked_fill(removed, float("-inf"))
    # Rank among items only: drop the padding column so a -inf target still ranks below every real item.
    ranks = target_ranks(masked[:, 1:], targets - 1)
    return torch.where(target_removed, torch.full_like(ranks, num_items), ranks)


def sample_negatives(
    targets: torch.Tensor,
    num_items: int,
    num_negatives: int,
    generator: torch.Generator,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw ``num_negatives`` distinct items per row uniformly from 1..num_items, never target or ``exclude``.

    Returns a LongTensor ``[B, num_negatives]``; deterministic for a given generator state. Raises ValueError
    when a row has fewer eligible items than requested.
    """
    targets = targets.long().flatten()
    rows = targets.numel()
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    if targets.numel() and (int(targets.min()) < 1 or int(targets.max()) > num_items):
        raise ValueError(f"sample_negatives: targets must be item ids in 1..{num_items}")
    out = torch.empty(rows, num_negatives, dtype=torch.long)
    # Random keys for every item, +inf for forbidden ones: the num_negatives smallest keys are a uniform draw
    # without replacement from the eligible items. Row chunks bound memory on big catalogues.
    chunk = max(1, 2**24 // (num_items + 1))
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        forbidden = torch.zeros(stop - start, num_items + 1, dtype=torch.bool)
        forbidden[:, 0] = True
        forbidden[torch.arange(stop - start), targets[start:stop]] = True
        if exclude is not None:
            forbidden |= _excluded_mask(num_items + 1, exclude[start:stop].cpu(), stop - start)
        eligible = num_items + 1 - forbidden.sum(dim=1)
        short = (eligible < num_negatives).nonzero().flatten()
        if short.numel():
            row = int(short[0])
            raise ValueError(
                f"sample_negatives: row {start + row} has only {int(eligible[row])} eligible items "
                f"for {num_negatives} negatives"
            )
        keys = torch.rand(stop - start, num_items + 1, generator=generator)
        keys.masked_fill_(forbidden, float("inf"))
        out[start:stop] = keys.topk(num_negatives, dim=1, largest=False).indices
    return out


def sampled_ranking_ranks(
    scores_all: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """Sampled protocol: 0-based rank of each target among ``[target] + negatives`` (``negatives [B, n]``)."""
    _check_scores_targets(scores_all, targets, "sampled_ranking_ranks")
    if negatives.dim() != 2 or negatives.size(0) != targets.numel():
        raise ValueError(f"negatives must be [B, n] with B={targets.numel()}, got {tuple(negatives.shape)}")
    candidates = torch.cat([targets.long()[:, None], negatives.long()], dim=1)
    if int(candidates.min()) < 1 or int(candidates.max()) >= scores_all.size(1):
        raise ValueError(f"sampled_ranking_ranks: candidate ids must lie in 1..{scores_all.size(1) - 1}")
    return target_ranks(scores_all.gather(1, candidates), torch.zeros_like(targets, dtype=torch.long))


def _per_row_metrics(ranks: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ranks = ranks.to(torch.float64)
    hit = ranks < k
    ndcg = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
    mrr = torch.where(hit, 1.0 / (ranks + 1.0), torch.zeros_like(ranks))
    return hit.to(torch.float64), ndcg, mrr


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean HR@K, NDCG@K and MRR@K over rows for 0-based ``ranks`` (keys ``"HR@10"``, ``"NDCG@10"``, ...)."""
    accumulator = RankingAccumulator(ks)
    accumulator.add(ranks)
    return accumulator.compute()


class RankingAccumulator:
    """Sums per-row HR/NDCG/MRR@K over batches (O(1) memory in users) and reports their means."""

    def __init__(self, ks: Sequence[int] = DEFAULT_KS) -> None:
        """Track the cut-offs ``ks`` (each >= 1)."""
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"cut-offs must be positive integers, got {list(ks)}")
        self.ks = tuple(int(k) for k in ks)
        self._sums = {f"{name}@{k}": 0.0 for k in self.ks for name in ("HR", "NDCG", "MRR")}
        self._count = 0

    @property
    def count(self) -> int:
        """Number of rows added so far."""
        return self._count

    def add(self, ranks: torch.Tensor) -> None:
        """Add a batch of 0-based ranks."""
        ranks = ranks.flatten()
        if ranks.numel() and int(ranks.min()) < 0:
            raise ValueError(f"ranks must be >= 0, got {int(ranks.min())}")
        for k in self.ks:
            hit, ndcg, mrr = _per_row_metrics(ranks, k)
            self._sums[f"HR@{k}"] += float(hit.sum())
            self._sums[f"NDCG@{k}"] += float(ndcg.sum())
            self._sums[f"MRR@{k}"] += float(mrr.sum())
        self._count += ranks.numel()

    def compute(self) -> dict[str, float]:
        """Mean of every metric over all rows added; ValueError when nothing was added."""
        if self._count == 0:
            raise ValueError("no ranks to average: the evaluation set is empty")
        return {name: total / self._count for name, total in self._sums.items()}
