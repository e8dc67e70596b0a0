"""Collaborative inference: fuse the cloud LLM's initial ranking with the device SRM's reranking scores.

``final = α·norm(LLM score) + (1−α)·norm(SRM score) [+ β·norm(content)]`` per candidate, where ``norm`` puts
the scores on one scale within each user's list and the optional content term is each candidate's text
similarity to the device's own fresh items (:mod:`lsc4rec.client.collab.content`). α = 1 is the LLM's own
order, α = 0 the SRM's rerank. Normalisations:

* ``minmax``: (s − min) / (max − min) within the list (0..1); a constant list maps to 0.
* ``zscore``: (s − mean) / std within the list.
* ``softmax``: the list's softmax probabilities (log-probs and logits become comparable distributions).
* ``rank``: 1 − position / n in the list's own order (the released LSC4Rec script fuses beam ranks this way).

Empty candidate slots (item 0) never rank above a real item.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NORMALIZATIONS", "fuse_scores", "normalize_scores", "rerank"]

NORMALIZATIONS = ("minmax", "zscore", "softmax", "rank")


def normalize_scores(scores: Tensor, valid: Tensor, method: str = "minmax") -> Tensor:
    """Normalise ``scores [B, n]`` row-wise over the ``valid`` slots with ``method`` (invalid slots -> 0)."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"collab.normalization={method!r} is not one of {NORMALIZATIONS}")
    scores = scores.float()
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)
    if method == "minmax":
        low = scores.masked_fill(~valid, float("inf")).min(dim=1, keepdim=True).values
        high = scores.masked_fill(~valid, float("-inf")).max(dim=1, keepdim=True).values
        spread = (high - low).clamp(min=1e-12)
        out = (scores - low) / spread
    elif method == "zscore":
        mean = scores.masked_fill(~valid, 0.0).sum(dim=1, keepdim=True) / count
        var = ((scores - mean) ** 2).masked_fill(~valid, 0.0).sum(dim=1, keepdim=True) / count
        out = (scores - mean) / var.sqrt().clamp(min=1e-12)
    elif method == "softmax":
        out = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=1)
    else:
        order = scores.masked_fill(~valid, float("-inf")).argsort(dim=1, descending=True, stable=True)
        position = torch.empty_like(order)
        position.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order))
        out = 1.0 - position.float() / scores.shape[1]
    return torch.where(valid, torch.nan_to_num(out, nan=0.0), torch.zeros_like(out))


def fuse_scores(
    llm_scores: Tensor,
    srm_scores: Tensor,
    items: Tensor,
    alpha: float,
    method: str = "minmax",
    content: Tensor | None = None,
    content_weight: float = 0.0,
) -> Tensor:
    """Fused scores ``[B, n]`` of the candidate ``items [B, n]``; empty slots (item 0) score ``-inf``.

    ``content [B, n]`` (the candidates' text similarity to the device's fresh items,
    :mod:`lsc4rec.client.collab.content`) adds ``content_weight · norm(content)`` to the fused score.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"collab.alpha must be in [0, 1], got {alpha}")
    if content_weight < 0.0:
        raise ValueError(f"collab.content_weight must be >= 0, got {content_weight}")
    valid = items > 0
    fused = alpha * normalize_scores(llm_scores, valid, method) + (1.0 - alpha) * normalize_scores(
        srm_scores, valid, method
    )
    if content is not None and content_weight > 0.0:
        fused = fused + content_weight * normalize_scores(content, valid, method)
    return fused.masked_fill(~valid, float("-inf"))


def rerank(items: Tensor, scores: Tensor) -> Tensor:
    """``items [B, n]`` sorted by ``scores`` (best first; ties keep the incoming order, i.e. the LLM's)."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    return items.gather(1, order)
