"""The fresh-popularity prior: what items the devices are consuming now, as a term of every ranking.

Each device contributes the items among its last ``recent`` distinct interactions; summed over the devices,
those counts say what is popular *now*, which a model trained by DP-SGD barely learns (the noise buries the
few devices that read any one item row; docs/results/privacy.md). A ranking then adds
``weight x log(1 + max(count, 0))`` to every item's score.

Privacy: one device adds 1 to at most ``recent`` counts, so the count vector's L2 sensitivity to a device is
``sqrt(recent)`` and Gaussian noise of std ``noise_multiplier x sqrt(recent)`` on every count is the Gaussian
mechanism with that noise multiplier (user-level, the unit of local DP-SGD). The weight is chosen from the
devices' per-weight sums of their validation NDCG@10, each in [0, 1], so the vector of sums moves by at most
``sqrt(len(weights))`` per device and is released the same way. The federated run's components
(:mod:`lsc4rec.client.fresh_prior_on_node`, :mod:`lsc4rec.server.components.fresh_prior`) make and account
the releases; this module holds the arithmetic and the ranking wrapper.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from lsc4rec.metrics import full_ranking_ranks
from lsc4rec.torch_device import model_device

__all__ = [
    "PriorRanking",
    "fresh_item_counts",
    "gains_by_weight",
    "log_prior",
    "noised",
    "per_device_ndcg",
    "release_std",
]


def fresh_item_counts(sequences: Sequence[Sequence[int]], num_items: int, recent: int) -> Tensor:
    """``[num_items + 1]``: how many of the ``sequences`` (one per device) hold each item among their last
    ``recent`` distinct items (padding 0 never counts)."""
    if recent < 1:
        raise ValueError(f"the fresh prior counts each device's last recent >= 1 items, got {recent}")
    counts = torch.zeros(num_items + 1, dtype=torch.float64)
    for sequence in sequences:
        distinct: list[int] = []
        for item in reversed(sequence):
            if item > 0 and item not in distinct:
                distinct.append(item)
                if len(distinct) == recent:
                    break
        if distinct:
            counts[torch.tensor(distinct)] += 1.0
    return counts


def noised(values: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    """``values`` plus Gaussian noise of ``std`` on every entry (``std`` 0: unchanged), as float64."""
    values = values.to(torch.float64)
    if std == 0:
        return values.clone()
    return values + std * torch.randn(values.shape, generator=generator, dtype=torch.float64)


def log_prior(counts: Tensor) -> Tensor:
    """``log(1 + max(count, 0))`` per item, padding 0: the term a ranking adds, times its weight (float32)."""
    prior = torch.log1p(counts.to(torch.float64).clamp(min=0.0)).to(torch.float32)
    prior[0] = 0.0
    return prior


def per_device_ndcg(ranks: Tensor, k: int = 10) -> Tensor:
    """Each device's NDCG@k from its target's 0-based rank: ``1 / log2(rank + 2)`` in the top k, else 0."""
    gains = 1.0 / torch.log2(ranks.to(torch.float64) + 2.0)
    return torch.where(ranks < k, gains, torch.zeros_like(gains))


@torch.no_grad()
def gains_by_weight(
    scorer: nn.Module, batches: Iterable, prior: Tensor, weights: Sequence[float], k: int = 10
) -> dict[float, float]:
    """``{weight: sum over the rows of NDCG@k}`` when ``weight x prior`` is added to ``scorer``'s
    full-catalogue scores; ``batches`` are an :class:`~lsc4rec.training.EvalSet`'s (each history scored once
    for all weights, its consumed items excluded as in :func:`~lsc4rec.training.evaluate`)."""
    was_training = scorer.training
    scorer.eval()
    device = model_device(scorer)
    term = prior.to(device)
    sums = dict.fromkeys((float(w) for w in weights), 0.0)
    for batch in batches:
        scores = scorer.score_all(batch.history.to(device))
        seen = None if batch.seen is None else batch.seen.to(device)
        for weight in sums:
            ranks = full_ranking_ranks(scores + weight * term, batch.targets.to(device), exclude=seen)
            sums[weight] += float(per_device_ndcg(ranks.cpu(), k).sum())
    scorer.train(was_training)
    return sums


class PriorRanking(nn.Module):
    """A scorer (an SRM, or its ONNX graph) whose rankings add a fixed per-item ``term`` to every score.

    ``score_all`` and ``score_candidates`` answer like the wrapped scorer's plus ``term[item]`` (padding and
    empty slots stay -inf); anything else is the wrapped scorer's. Training never sees the term: the models
    train through their own scoring methods, and only rankings go through this wrapper.
    """

    def __init__(self, scorer: nn.Module, term: Tensor) -> None:
        """``term [num_items + 1]`` (already weighted; row 0 is ignored) added to ``scorer``'s scores."""
        super().__init__()
        self.scorer = scorer
        if term.dim() != 1:
            raise ValueError(f"a ranking term is one value per item, got shape {tuple(term.shape)}")
        self.register_buffer("term", term.detach().to(torch.float32).clone(), persistent=False)

    def __getattr__(self, name: str):
        """The wrapped scorer's attribute where the wrapper has none (``num_items``, ``max_len``, ...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("scorer"), name)

    def score_all(self, history: Tensor) -> Tensor:
        """The scorer's ``[B, num_items + 1]`` scores plus the term (column 0 stays -inf)."""
        scores = self.scorer.score_all(history)
        return scores + self.term.to(scores.device, scores.dtype)

    def score_candidates(self, history: Tensor, candidates: Tensor) -> Tensor:
        """The scorer's ``[B, C]`` scores of ``candidates`` plus their terms (id 0 stays -inf)."""
        scores = self.scorer.score_candidates(history, candidates)
        term = self.term.to(scores.device, scores.dtype)[candidates.long().clamp(min=0)]
        return scores + term


def release_std(noise_multiplier: float, sensitivity_terms: int) -> float:
    """The Gaussian mechanism's std for an L2 sensitivity of ``sqrt(sensitivity_terms)``."""
    return noise_multiplier * math.sqrt(sensitivity_terms)
