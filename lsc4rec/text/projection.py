"""Text vectors into a model's embedding space: their principal directions, scaled to an init range."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["principal_projection"]


def principal_projection(vectors: Tensor, hidden_size: int, scale: float) -> Tensor:
    """``[hidden_size, D]``: the top principal directions of the non-zero rows of ``vectors [n, D]``.

    Scaled so projected rows have per-coordinate standard deviation ``scale``; directions past the data's
    rank stay zero. Deterministic (an SVD, no random start).
    """
    present = vectors[vectors.norm(dim=1) > 0].float()
    weight = torch.zeros(hidden_size, vectors.shape[1])
    if present.shape[0] < 2:
        return weight
    centred = present - present.mean(dim=0)
    _, _, directions = torch.linalg.svd(centred, full_matrices=False)
    rank = min(hidden_size, directions.shape[0])
    weight[:rank] = directions[:rank]
    spread = (present @ weight.T).std().clamp(min=1e-8)
    return weight * (scale / spread)
