"""Intelligent request: a device asks the cloud for a fresh candidate list only when it looks stale.

Each device compares the order the cloud LLM gave its current candidates with the order its own real-time
SRM gives them (LSC4Rec's collaborative decision). When they disagree strongly, the device's recent behaviour
has probably moved on from what the stale cloud list reflects, so it uploads its real-time history and the
cloud regenerates the list. The decision is per device (the released script decides per batch of 16 users;
a device deciding for itself is what the paper describes and what a deployment can do).

Inconsistency scores (higher = more disagreement, all in [0, 1]):

* ``footrule``: Spearman's footrule between the two orders of the list, normalised by its maximum; the
  paper's mean absolute rank displacement. Empty slots count as fully displaced (a short list means the
  cloud had little to offer).
* ``topk``: 1 − |top-k of the LLM order ∩ top-k of the SRM order| / k.
* ``coverage``: 1 − |SRM's top-k over the whole catalogue ∩ the LLM list| / k: how many of the items the
  device itself would recommend the cloud's list does not even contain.
* ``missing_mass``: 1 − Σ_{i in the list} p_SRM(i), with p_SRM the SRM's softmax over the whole catalogue
  (history excluded): the device model's probability that the next item is not in the cloud's list at all,
  i.e. that reranking it cannot help.
* ``uncovered_mass`` (default): Σ p_SRM(i) over the SRM's own top-n items (n = the list's length) that the
  list lacks. A fresh list is the cloud's best n items for the real-time history, which the device's own
  top-n approximates, so this is the probability mass a request could plausibly bring into the list;
  ``missing_mass`` also counts the long tail that no list of n items would hold. On Beauty it predicts where
  a fresh list pays off best of all the scores (README results).

The threshold is calibrated on validation data to a target request ratio (:meth:`RequestPolicy.calibrate`),
with ties at the threshold broken at random in the right proportion, so discrete scores still hit the
ratio. Baselines at the same ratio: ``random`` (a seeded coin per device), plus ``never`` and ``always``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "INCONSISTENCY_SCORES",
    "REQUEST_MODES",
    "RequestPolicy",
    "inconsistency",
    "list_probabilities",
    "top_share",
    "uncovered_by_rank",
]

INCONSISTENCY_SCORES = ("footrule", "topk", "coverage", "missing_mass", "uncovered_mass")
REQUEST_MODES = ("never", "always", "random", "intelligent")


def _positions(scores: Tensor, valid: Tensor) -> Tensor:
    """0-based position of every slot when the row is sorted by ``scores`` (invalid slots last)."""
    order = scores.masked_fill(~valid, float("-inf")).argsort(dim=1, descending=True, stable=True)
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order))
    return position


def inconsistency(
    items: Tensor,
    srm_scores: Tensor,
    method: str = "footrule",
    k: int = 10,
    srm_top_items: Tensor | None = None,
    srm_catalogue_scores: Tensor | None = None,
) -> Tensor:
    """Per-device disagreement ``[B]`` between the LLM list ``items [B, n]`` (in LLM order) and the SRM.

    ``srm_scores [B, n]`` are the SRM's scores of those candidates; ``srm_top_items [B, k]`` (``coverage``
    only) the SRM's own top-k over the whole catalogue; ``srm_catalogue_scores [B, num_items + 1]``
    (``missing_mass`` and ``uncovered_mass``) its scores of every item, -inf for padding and the history.
    """
    if method not in INCONSISTENCY_SCORES:
        raise ValueError(
            f"request.score={method!r} is not one of {INCONSISTENCY_SCORES} (or 'learned': a fitted model)"
        )
    valid = items > 0
    n = items.shape[1]
    if method == "footrule":
        llm_position = torch.arange(n).expand_as(items)
        srm_position = _positions(srm_scores, valid)
        displacement = (llm_position - srm_position).abs().float()
        # Maximum footrule of a permutation of n is floor(n^2 / 2); empty slots count as maximal.
        displacement = torch.where(valid, displacement, torch.full_like(displacement, float(n)))
        return (displacement.sum(dim=1) / max(n * n // 2, 1)).clamp(max=1.0)
    if method in ("missing_mass", "uncovered_mass"):
        if srm_catalogue_scores is None:
            raise ValueError(
                f"request.score={method!r} needs the SRM's catalogue scores (srm_catalogue_scores)"
            )
        probabilities = torch.softmax(srm_catalogue_scores.float(), dim=1)
        if method == "missing_mass":
            return (1.0 - list_probabilities(probabilities, items).sum(dim=1)).clamp(min=0.0, max=1.0)
        return uncovered_by_rank(probabilities, items, n).sum(dim=1).clamp(min=0.0, max=1.0)
    k = min(k, n)
    if method == "topk":
        llm_top = valid & (torch.arange(n) < k)
        srm_top = valid & (_positions(srm_scores, valid) < k)
        return 1.0 - (llm_top & srm_top).sum(dim=1).float() / k
    if srm_top_items is None:
        raise ValueError("request.score='coverage' needs the SRM's own top-k items (srm_top_items)")
    contained = (srm_top_items[:, :k, None] == items[:, None, :]).any(dim=2)
    return 1.0 - contained.sum(dim=1).float() / srm_top_items[:, :k].shape[1]


@dataclass
class RequestPolicy:
    """Per device, whether to request a fresh list: ``never``, ``always``, ``random`` or ``intelligent``."""

    mode: str = "intelligent"
    ratio: float = 0.2
    threshold: float = float("inf")
    tie_probability: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in REQUEST_MODES:
            raise ValueError(f"request.mode={self.mode!r} is not one of {REQUEST_MODES}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"request.target_ratio must be in [0, 1], got {self.ratio}")

    def calibrate(self, validation_scores: Tensor) -> RequestPolicy:
        """Set the threshold so that a fraction ``ratio`` of ``validation_scores`` would request.

        Devices strictly above the threshold request; those exactly at it request with probability
        ``tie_probability``, chosen so the expected ratio on the validation scores is exactly ``ratio``.
        """
        scores = validation_scores.flatten().float()
        if scores.numel() == 0:
            raise ValueError("cannot calibrate the request threshold on an empty set of scores")
        wanted = self.ratio * scores.numel()
        ordered = scores.sort(descending=True).values
        if wanted <= 0:
            self.threshold, self.tie_probability = float(ordered[0]), 0.0
            return self
        threshold = ordered[min(int(torch.tensor(wanted).ceil()) - 1, scores.numel() - 1)]
        above = int((scores > threshold).sum())
        at = int((scores == threshold).sum())
        self.threshold = float(threshold)
        self.tie_probability = float(min(max((wanted - above) / max(at, 1), 0.0), 1.0))
        return self

    def decide(self, scores: Tensor, generator: torch.Generator) -> Tensor:
        """Boolean ``[B]``: which devices request; ``scores`` are their inconsistency scores."""
        batch = scores.shape[0]
        if self.mode == "never":
            return torch.zeros(batch, dtype=torch.bool)
        if self.mode == "always":
            return torch.ones(batch, dtype=torch.bool)
        coin = torch.rand(batch, generator=generator)
        if self.mode == "random":
            return coin < self.ratio
        return (scores > self.threshold) | ((scores == self.threshold) & (coin < self.tie_probability))


def list_probabilities(probabilities: Tensor, items: Tensor) -> Tensor:
    """``[B, n]``: the SRM's probability of each item of the list ``items`` (0 at empty slots)."""
    return probabilities.gather(1, items.clamp(min=0)) * (items > 0)


def uncovered_by_rank(probabilities: Tensor, items: Tensor, depth: int) -> Tensor:
    """``[B, depth]``: the SRM's probability of its r-th best item where the list ``items`` lacks it, else 0.

    ``probabilities [B, num_items + 1]`` is the SRM's next-item distribution; summing the first k columns
    gives the uncovered mass of its top-k (``uncovered_mass`` is k = the list length).
    """
    valid = items > 0
    top = probabilities.topk(min(depth, probabilities.shape[1]), dim=1)
    covered = ((top.indices[:, :, None] == items[:, None, :]) & valid[:, None, :]).any(dim=2)
    return top.values * ~covered


def top_share(scores: Tensor, ratio: float, generator: torch.Generator) -> Tensor:
    """Boolean ``[B]``: exactly ``round(ratio * B)`` devices with the highest scores (ties in random order).

    The budgeted decision of a node that lets a fixed share of its devices request (federated runs), as
    opposed to each device comparing its score with a threshold calibrated beforehand (``RequestPolicy``).
    """
    count = scores.shape[0]
    chosen = torch.zeros(count, dtype=torch.bool)
    budget = round(ratio * count)
    if budget == 0:
        return chosen
    # A stable sort of a random permutation keeps equal scores in random order.
    order = torch.randperm(count, generator=generator)
    chosen[order[scores[order].argsort(descending=True, stable=True)][:budget]] = True
    return chosen
