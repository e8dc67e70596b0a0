"""What a device does with a cloud candidate list: drop what it has seen, score the rest with its SRM.

Shared by the experiments and the device client, so a simulated device and a deployed one rerank the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lsc4rec.client.request_policy import inconsistency
from lsc4rec.models.srm import SequentialRecommender

__all__ = [
    "drop_seen",
    "request_score_table",
    "request_scores",
    "srm_candidate_scores",
    "srm_catalogue_scores",
]


def drop_seen(items: Tensor, histories: Tensor) -> Tensor:
    """``items [B, n]`` with every item of the row's real-time history ``[B, L]`` replaced by 0 (empty)."""
    seen = (items[:, :, None] == histories[:, None, :]).any(dim=2) & (items > 0)
    return items.masked_fill(seen, 0)


@torch.no_grad()
def srm_candidate_scores(srm: SequentialRecommender, histories: Tensor, items: Tensor) -> Tensor:
    """The SRM scores ``[B, n]`` of candidate ``items`` after left-padded ``histories``; empty slots -inf."""
    srm.eval()
    scores = srm.score_candidates(histories, items.clamp(min=1))
    return scores.masked_fill(items == 0, float("-inf"))


@torch.no_grad()
def srm_catalogue_scores(srm: SequentialRecommender, histories: Tensor) -> Tensor:
    """The SRM's scores ``[B, num_items + 1]`` of every item; padding and history items are -inf."""
    srm.eval()
    scores = srm.score_all(histories)
    scores[:, 0] = float("-inf")
    return scores.scatter_(1, histories, float("-inf"))


def request_scores(
    srm: SequentialRecommender, histories: Tensor, items: Tensor, srm_scores: Tensor, method: str, k: int
) -> Tensor:
    """Each device's inconsistency score ``[B]`` for its list ``items`` (see :func:`inconsistency`)."""
    return request_score_table(srm, histories, items, srm_scores, (method,), k)[method]


def request_score_table(
    srm: SequentialRecommender,
    histories: Tensor,
    items: Tensor,
    srm_scores: Tensor,
    methods: Sequence[str],
    k: int,
    catalogue: Tensor | None = None,
) -> dict[str, Tensor]:
    """Several inconsistency scores ``{method: [B]}`` of the same lists; the catalogue is scored once.

    ``catalogue`` may pass the SRM's :func:`srm_catalogue_scores` of ``histories`` when already computed.
    """
    if catalogue is None and any(m in ("missing_mass", "uncovered_mass", "coverage") for m in methods):
        catalogue = srm_catalogue_scores(srm, histories)
    top = catalogue.topk(k, dim=1).indices if "coverage" in methods and catalogue is not None else None
    return {
        method: inconsistency(items, srm_scores, method, k, srm_top_items=top, srm_catalogue_scores=catalogue)
        for method in methods
    }
