"""Ranking metrics for next-item recommendation: target ranks under two protocols, and HR/NDCG/MRR@K.

Conventions (project-wide): item ids are ``1..N``; id 0 is padding and never a valid item. A score matrix over
all items has shape ``[B, N + 1]`` and its column 0 (padding) is always excluded from ranking.

Protocols
---------
* **Full ranking** (:func:`full_ranking_ranks`): the target is ranked against every item. Items in the
  optional ``exclude`` ids (typically the user's history) and column 0 are masked to ``-inf`` first.
* **Sampled ranking** (:func:`sample_negatives` + :func:`sampled_ranking_ranks`): the target is ranked
  against a fixed set of uniformly drawn negatives (e.g. 99), never the target nor an excluded id.

Ranks are 0-based: rank 0 is the top of the list. :func:`metrics_from_ranks` and :class:`RankingAccumulator`
turn ranks into means of ``HR@K = 1[rank < K]``, ``NDCG@K = 1/log2(rank + 2)`` and ``MRR@K = 1/(rank + 1)``
(the latter two are 0 when ``rank >= K``).

Tie policy (pessimistic)
------------------------
A target's rank is the number of columns with a strictly greater score plus the number of *other* columns
with an equal score, i.e. ``(scores >= target_score).sum() - 1``. Ties always place the target *below* the
tied items, so a model that outputs constant scores gets HR@K = 0 (for K < number of candidates), never a
perfect score. An optimistic or "average" tie rule would reward degenerate models, which is why it is not
used.

Special values
--------------
* ``-inf`` is a legitimate score (masked items). A target scoring ``-inf`` ties with every other ``-inf``
  entry and, by the rule above, ranks after all of them: in full ranking that is always rank ``N`` (a miss),
  because the masked padding column and any masked items tie with it.
* NaN anywhere in a score matrix (including column 0 and excluded items) raises :class:`ValueError` naming the
  first offending row: NaN signals a numerically broken model, and comparisons with NaN would silently produce
  arbitrary ranks.
* **Excluded target** (full ranking): if a row's target is among its own ``exclude`` ids, the row counts as
  a miss with rank ``N`` (beyond every cut-off), following RecBole's convention: the target is masked like
  any other history item rather than being silently un-masked.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

DEFAULT_KS: tuple[int, ...] = (5, 10, 20)

# sample_negatives works on row chunks whose dense [rows, N + 1] masks stay below this many elements, so
# memory is bounded even when a caller passes every user at once.
_CHUNK_ELEMENTS = 1 << 22
# Rejection sampling draws this multiple of the expected number of draws (plus a constant) so that almost
# every row collects enough distinct eligible ids in one round; the few that do not fall back to the exact
# random-keys path.
_OVERSAMPLE = 1.5
_EXTRA_DRAWS = 16


# --------------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------------


def _is_integer_dtype(dtype: torch.dtype) -> bool:
    """True for integer tensor dtypes (bool excluded: a mask is never an id)."""
    return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


def _check_scores(name: str, scores: torch.Tensor, min_columns: int) -> None:
    """Require a 2-D floating score matrix with at least ``min_columns`` columns and no NaN."""
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2:
        raise ValueError(f"{name} must be 2-D [batch, columns], got shape {tuple(scores.shape)}")
    if not scores.dtype.is_floating_point:
        raise ValueError(f"{name} must have a floating dtype, got {scores.dtype}")
    if scores.shape[1] < min_columns:
        raise ValueError(f"{name} must have at least {min_columns} columns, got shape {tuple(scores.shape)}")
    nan_rows = torch.isnan(scores).any(dim=1)
    if bool(nan_rows.any()):
        row = int(nan_rows.nonzero()[0, 0])
        col = int(torch.isnan(scores[row]).nonzero()[0, 0])
        count = int(nan_rows.sum())
        raise ValueError(
            f"{name} row {row} contains NaN (first at column {col}; {count} row(s) affected): "
            "refusing to rank NaN scores, check the model for numerical problems"
        )


def _check_ids(name: str, values: torch.Tensor, rows: int, low: int, high: int, what: str) -> torch.Tensor:
    """Require a 1-D integer tensor of length ``rows`` with values in ``low..high``; return it as long."""
    if not isinstance(values, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(values).__name__}")
    if values.dim() != 1:
        raise ValueError(f"{name} must be 1-D [batch], got shape {tuple(values.shape)}")
    if not _is_integer_dtype(values.dtype):
        raise ValueError(f"{name} must have an integer dtype, got {values.dtype}")
    if values.shape[0] != rows:
        raise ValueError(f"{name} has {values.shape[0]} rows but the scores have {rows}")
    values = values.long()
    bad = (values < low) | (values > high)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name}[{i}] = {int(values[i])} is outside the valid {what} {low}..{high}")
    return values


def _check_id_matrix(
    name: str, values: torch.Tensor, rows: int, low: int, high: int, what: str
) -> torch.Tensor:
    """Require a 2-D integer tensor ``[rows, S]`` with values in ``low..high``; return it as long."""
    if not isinstance(values, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(values).__name__}")
    if values.dim() != 2:
        raise ValueError(f"{name} must be 2-D [batch, size], got shape {tuple(values.shape)}")
    if not _is_integer_dtype(values.dtype):
        raise ValueError(f"{name} must have an integer dtype, got {values.dtype}")
    if values.shape[0] != rows:
        raise ValueError(f"{name} has {values.shape[0]} rows but targets have {rows}")
    values = values.long()
    bad = (values < low) | (values > high)
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"{name}[{i}, {j}] = {int(values[i, j])} is outside the valid {what} {low}..{high}")
    return values


def _check_positive_int(name: str, value: int) -> int:
    """Require an integer >= 1 (bools rejected) and return it as a plain int."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {number}")
    return number


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Require a non-empty sequence of distinct positive cut-offs (duplicates would collide as keys)."""
    checked = tuple(_check_positive_int("ks entry", k) for k in ks)
    if not checked:
        raise ValueError("ks must contain at least one cut-off, got an empty sequence")
    if len(set(checked)) != len(checked):
        raise ValueError(f"ks must not contain duplicates, got {list(checked)}")
    return checked


def _check_ranks(ranks: torch.Tensor) -> torch.Tensor:
    """Require a 1-D integer tensor of non-negative ranks; return it as long."""
    if not isinstance(ranks, torch.Tensor):
        raise ValueError(f"ranks must be a torch.Tensor, got {type(ranks).__name__}")
    if ranks.dim() != 1:
        raise ValueError(f"ranks must be 1-D [batch], got shape {tuple(ranks.shape)}")
    if not _is_integer_dtype(ranks.dtype):
        raise ValueError(f"ranks must have an integer dtype (0-based ranks), got {ranks.dtype}")
    ranks = ranks.long()
    negative = ranks < 0
    if bool(negative.any()):
        i = int(negative.nonzero()[0, 0])
        raise ValueError(f"ranks[{i}] = {int(ranks[i])} is negative; ranks are 0-based and >= 0")
    return ranks


# --------------------------------------------------------------------------------------------------------
# Ranks
# --------------------------------------------------------------------------------------------------------


def _pessimistic_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Ranks for validated long column indices: columns scoring >= the target, minus the target itself."""
    target_score = scores.gather(1, targets[:, None])
    # ``>=`` counts strictly greater columns, tied columns and the target itself (x == x for every non-NaN x,
    # including -inf), so subtracting 1 gives exactly the pessimistic rank.
    return (scores >= target_score).sum(dim=1) - 1


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based pessimistic rank of each row's target column among all of that row's columns.

    ``scores`` is ``[B, C]`` float, ``targets`` ``[B]`` integer column indices in ``0..C-1``. Returns a
    LongTensor ``[B]``. Ties rank the target below the tied columns (see the module docstring); NaN raises
    ValueError.
    """
    _check_scores("scores", scores, min_columns=1)
    targets = _check_ids("targets", targets, scores.shape[0], 0, scores.shape[1] - 1, "column indices")
    return _pessimistic_ranks(scores, targets.to(scores.device))


def full_ranking_ranks(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """Full-ranking protocol: 0-based rank of each target among all items ``1..N``.

    ``scores`` is ``[B, N + 1]`` over all items (column 0 is padding and always excluded), ``targets``
    ``[B]`` item ids in ``1..N``, and ``exclude`` an optional ``[B, S]`` integer tensor of item ids to remove
    from each row's ranking (e.g. the user's history; 0 entries are padding and ignored). Column 0 and the
    excluded items never count against the target; the caller's ``scores`` is never modified.

    If a row's target is among its own excluded ids, the row is a miss with rank ``N`` (beyond every cut-off),
    following RecBole's convention. Returns a LongTensor ``[B]`` on ``scores.device``.
    """
    _check_scores("scores", scores, min_columns=2)
    batch, num_items = scores.shape[0], scores.shape[1] - 1
    targets = _check_ids("targets", targets, batch, 1, num_items, "item ids").to(scores.device)

    # One pass over the [B, N + 1] matrix: the pessimistic rank counts the other columns scoring >= the
    # target. The few columns that must not count (padding, excluded items) are then subtracted, instead of
    # masking a copy of the whole matrix: full-ranking evaluation of big catalogues is bound by such passes.
    target_score = scores.gather(1, targets[:, None])
    ranks = (scores >= target_score).sum(dim=1) - 1 - (scores[:, 0] >= target_score[:, 0]).long()
    # A -inf target ties with the masked padding column and every masked item: always a miss (rank N).
    miss = target_score[:, 0] == float("-inf")
    if exclude is not None:
        exclude = _check_id_matrix("exclude", exclude, batch, 0, num_items, "item ids (0 = padding)")
        excluded = _unique_per_row(exclude.to(scores.device))
        is_target = excluded == targets[:, None]
        counted = (excluded != 0) & ~is_target & (scores.gather(1, excluded) >= target_score)
        ranks = ranks - counted.sum(dim=1)
        miss |= is_target.any(dim=1)
    return ranks.masked_fill(miss, num_items)


def _unique_per_row(ids: torch.Tensor) -> torch.Tensor:
    """Copy of ``ids [B, S]`` with repeats within a row replaced by 0 (padding), so each id counts once."""
    ordered = ids.sort(dim=1).values
    repeated = torch.zeros_like(ordered, dtype=torch.bool)
    repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    return ordered.masked_fill(repeated, 0)


def sampled_ranking_ranks(
    scores_all: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """Sampled protocol: 0-based rank of each target among ``[target] + negatives`` (e.g. 1 + 99 candidates).

    ``scores_all`` is the full ``[B, N + 1]`` score matrix, ``targets`` ``[B]`` item ids in ``1..N`` and
    ``negatives`` ``[B, K]`` item ids in ``1..N`` (as drawn by :func:`sample_negatives`). A row whose
    negatives contain its own target raises ValueError, because the duplicate would silently cost the target
    one rank.
    Ties are pessimistic. Returns a LongTensor ``[B]`` on ``scores_all.device``.
    """
    _check_scores("scores_all", scores_all, min_columns=2)
    batch, num_items = scores_all.shape[0], scores_all.shape[1] - 1
    targets = _check_ids("targets", targets, batch, 1, num_items, "item ids").to(scores_all.device)
    negatives = _check_id_matrix("negatives", negatives, batch, 1, num_items, "item ids")
    negatives = negatives.to(scores_all.device)
    clash = (negatives == targets[:, None]).any(dim=1)
    if bool(clash.any()):
        row = int(clash.nonzero()[0, 0])
        raise ValueError(f"negatives row {row} contains that row's target item {int(targets[row])}")
    candidates = torch.cat([targets[:, None], negatives], dim=1)
    candidate_scores = scores_all.gather(1, candidates)
    return _pessimistic_ranks(candidate_scores, torch.zeros_like(targets))


# --------------------------------------------------------------------------------------------------------
# Negative sampling
# --------------------------------------------------------------------------------------------------------


def _sample_by_keys(banned: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Exact uniform k-subsets: give every eligible column an i.i.d. uniform key and keep the k smallest.

    Costs O(rows * (N + 1)), so it is used for rows where rejection would need many draws and for leftovers.
    """
    keys = torch.rand(banned.shape, generator=generator, device=banned.device)
    # Keys live in [0, 1), so 2.0 pushes every banned column behind every eligible one; the caller
    # guarantees at least k eligible columns per row, hence no banned column is ever selected.
    keys.masked_fill_(banned, 2.0)
    return keys.topk(k, dim=1, largest=False).indices


def _sample_chunk(
    banned: torch.Tensor, eligible: torch.Tensor, k: int, generator: torch.Generator
) -> torch.Tensor:
    """Draw k distinct eligible ids for every row of ``banned`` ([rows, N + 1], True = not allowed)."""
    rows, num_items = banned.shape[0], banned.shape[1] - 1
    out = torch.empty(rows, k, dtype=torch.long, device=banned.device)

    # Expected uniform draws over 1..N to collect k distinct ids out of E eligible ones: N * (H_E - H_{E-k}),
    # approximated by N * ln((E + 0.5) / (E - k + 0.5)).
    eligible_f = eligible.to(torch.float64)
    expected = num_items * torch.log((eligible_f + 0.5) / (eligible_f - k + 0.5))
    budget = torch.ceil(expected * _OVERSAMPLE + _EXTRA_DRAWS)
    # Where rejection would draw more than half as many ids as there are columns, random keys are cheaper.
    use_rejection = budget <= (num_items + 1) / 2
    fallback = ~use_rejection

    if bool(use_rejection.any()):
        rej_rows = use_rejection.nonzero().squeeze(1)
        draws = int(budget[rej_rows].max())
        rej_banned = banned[rej_rows]
        cand = torch.randint(
            1, num_items + 1, (rej_rows.numel(), draws), generator=generator, device=banned.device
        )
        ok = ~rej_banned.gather(1, cand)
        # Drop repeats but keep each id's first occurrence, so the kept ids stay in random draw order (keeping
        # the smallest ids instead would bias the subset). A stable sort puts first occurrences first.
        sorted_ids, order = torch.sort(cand, dim=1, stable=True)
        repeat_sorted = torch.zeros_like(ok)
        repeat_sorted[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
        repeat = torch.empty_like(ok).scatter_(1, order, repeat_sorted)
        ok &= ~repeat
        taken = ok.cumsum(dim=1)
        done = taken[:, -1] >= k
        # The first k distinct eligible draws of a row are a uniform k-subset (by symmetry between eligible
        # ids), also conditionally on the row succeeding, so rows resampled below do not bias the rest.
        keep = ok & (taken <= k)
        out[rej_rows[done]] = cand[done][keep[done]].view(-1, k)
        fallback[rej_rows[~done]] = True

    if bool(fallback.any()):
        fb_rows = fallback.nonzero().squeeze(1)
        out[fb_rows] = _sample_by_keys(banned[fb_rows], k, generator)
    return out


def sample_negatives(
    targets: torch.Tensor,
    num_items: int,
    num_negatives: int,
    generator: torch.Generator,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled protocol: for each row draw ``num_negatives`` distinct negative item ids uniformly from 1..N.

    A row's negatives never include its target nor any of its ``exclude`` ids (``[B, S]``; 0 entries are
    padding). The subset is uniform over the row's eligible items. Sampling is vectorised: one round of
    rejection sampling (duplicates and ineligible draws discarded in tensor ops), with an exact random-keys
    method for rows that need many draws or did not collect enough. Deterministic for a given generator state.
    Random numbers are drawn on ``generator.device``; the result is a LongTensor ``[B, num_negatives]`` on
    ``targets.device``.

    Raises ValueError when some row has fewer than ``num_negatives`` eligible items.
    """
    num_items = _check_positive_int("num_items", num_items)
    k = _check_positive_int("num_negatives", num_negatives)
    if not isinstance(targets, torch.Tensor):
        raise ValueError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    batch = targets.shape[0] if targets.dim() >= 1 else -1
    targets_long = _check_ids("targets", targets, batch, 1, num_items, "item ids")
    exclude_long = None
    if exclude is not None:
        exclude_long = _check_id_matrix("exclude", exclude, batch, 0, num_items, "item ids (0 = padding)")

    device = generator.device
    targets_long = targets_long.to(device)
    if exclude_long is not None:
        exclude_long = exclude_long.to(device)
    out = torch.empty(batch, k, dtype=torch.long, device=device)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // (num_items + 1))
    # A loop over row chunks (not rows or items) bounds the dense masks' memory for large user counts.
    for start in range(0, batch, rows_per_chunk):
        stop = min(start + rows_per_chunk, batch)
        banned = torch.zeros(stop - start, num_items + 1, dtype=torch.bool, device=device)
        banned[:, 0] = True
        if exclude_long is not None:
            banned.scatter_(1, exclude_long[start:stop], True)
        banned.scatter_(1, targets_long[start:stop, None], True)
        eligible = num_items + 1 - banned.sum(dim=1)
        short = eligible < k
        if bool(short.any()):
            i = int(short.nonzero()[0, 0])
            raise ValueError(
                f"cannot draw num_negatives={k} distinct negatives for row {start + i}: only "
                f"{int(eligible[i])} of num_items={num_items} items are eligible once the target and "
                "excluded ids are removed"
            )
        out[start:stop] = _sample_chunk(banned, eligible, k, generator)
    return out.to(targets.device)


# --------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------


def _metric_sums(ranks: torch.Tensor, ks: tuple[int, ...]) -> list[float]:
    """Per-cut-off sums [HR@k, NDCG@k, MRR@k, ...] over ``ranks`` in float64, fetched with one device sync."""
    ranks_f = ranks.to(torch.float64)
    gains_ndcg = 1.0 / torch.log2(ranks_f + 2.0)
    gains_mrr = 1.0 / (ranks_f + 1.0)
    parts = []
    for k in ks:
        hit = ranks < k
        parts.append(hit.to(torch.float64).sum())
        parts.append(torch.where(hit, gains_ndcg, 0.0).sum())
        parts.append(torch.where(hit, gains_mrr, 0.0).sum())
    return torch.stack(parts).tolist()


class RankingAccumulator:
    """Accumulates 0-based ranks over batches and returns mean HR/NDCG/MRR@K like :func:`metrics_from_ranks`.

    Only float64 running sums and a count are kept, so memory is O(1) in the number of users.
    """

    def __init__(self, ks: Sequence[int] = DEFAULT_KS) -> None:
        """Start empty for the cut-offs ``ks`` (distinct positive integers)."""
        self._ks = _check_ks(ks)
        self._sums = [0.0] * (3 * len(self._ks))
        self._count = 0

    @property
    def ks(self) -> tuple[int, ...]:
        """The cut-offs this accumulator reports."""
        return self._ks

    @property
    def count(self) -> int:
        """Number of ranks (rows) added so far."""
        return self._count

    def add(self, ranks: torch.Tensor) -> None:
        """Add a batch of 0-based ranks (1-D integer tensor); an empty batch is a no-op."""
        ranks = _check_ranks(ranks)
        if ranks.numel() == 0:
            return
        for i, value in enumerate(_metric_sums(ranks, self._ks)):
            self._sums[i] += value
        self._count += ranks.numel()

    def compute(self) -> dict[str, float]:
        """Mean metrics over all ranks added: keys ``HR@K``, ``NDCG@K``, ``MRR@K`` per K, in ``ks`` order."""
        if self._count == 0:
            raise ValueError("RankingAccumulator.compute() called before any ranks were added")
        result: dict[str, float] = {}
        for i, k in enumerate(self._ks):
            for j, name in enumerate(("HR", "NDCG", "MRR")):
                result[f"{name}@{k}"] = self._sums[3 * i + j] / self._count
        return result


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean HR@K, NDCG@K and MRR@K over 0-based ``ranks`` (1-D integer tensor), keys like ``'HR@5'``.

    ``HR@K = 1[rank < K]``, ``NDCG@K = 1/log2(rank + 2)`` and ``MRR@K = 1/(rank + 1)`` when ``rank < K``,
    else 0. Raises ValueError on empty input.
    """
    ranks = _check_ranks(ranks)
    if ranks.numel() == 0:
        raise ValueError("metrics_from_ranks needs at least one rank, got an empty tensor")
    accumulator = RankingAccumulator(ks)
    accumulator.add(ranks)
    return accumulator.compute()


# Rank given to a target that a ranked list misses: beyond every cut-off.
MISSED_RANK = 1 << 40


def list_ranks(ranked_items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based position of each target in its row of ``ranked_items [B, n]``; ``MISSED_RANK`` if absent.

    This is the protocol for candidate lists (LSC4Rec's collaborative evaluation): the ranked list is what a
    generator retrieved and a reranker ordered, and a target outside the list counts as a miss at every K.
    Padding slots (item 0) never match a target, since targets are >= 1.
    """
    if ranked_items.ndim != 2:
        raise ValueError(f"ranked_items must be 2-D [B, n], got shape {tuple(ranked_items.shape)}")
    targets = _check_ids("targets", targets, ranked_items.shape[0], 1, MISSED_RANK, "item ids")
    hits = ranked_items.long() == targets[:, None]
    first = hits.float().argmax(dim=1)
    return torch.where(hits.any(dim=1), first, torch.full_like(first, MISSED_RANK))


__all__ = [
    "DEFAULT_KS",
    "MISSED_RANK",
    "RankingAccumulator",
    "full_ranking_ranks",
    "list_ranks",
    "metrics_from_ranks",
    "sample_negatives",
    "sampled_ranking_ranks",
    "target_ranks",
]
