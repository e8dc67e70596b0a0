"""The content term of fusion: how close each candidate's text is to the device's freshest items.

The cloud ranks from a stale copy of the history; the device holds the items the user consumed since. On
sparse catalogues the newest item is the strongest signal, and a cloud that has not seen it cannot use it.
With the catalogue's text vectors on the device, each candidate ``c`` gets

    content(c) = Σ_j w_j · cos(text(c), text(h_j)) / Σ_j w_j,     w_j = decay^j,

over the device's last ``k`` items ``h_0`` (newest), ``h_1``, ... from its own real-time history only. Items
without text contribute nothing (their vector is zero). The fused score adds ``β · norm(content)``
(:func:`lsc4rec.client.collab.fusion.fuse_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["content_scores", "recent_items", "unit_vectors"]

# Users per gather in content_scores (a chunk's [chunk, n, D] stays around a hundred megabytes).
_CHUNK = 1024


def unit_vectors(vectors: Tensor) -> Tensor:
    """``vectors [N + 1, D]`` scaled to unit length row by row (zero rows stay zero)."""
    vectors = vectors.float()
    return vectors / vectors.norm(dim=1, keepdim=True).clamp(min=1e-12)


def recent_items(histories: Sequence[Sequence[int]], k: int) -> Tensor:
    """``[U, k]`` the last ``k`` items of each history, newest first, 0 where a history is shorter."""
    if k < 1:
        raise ValueError(f"collab.content_items must be >= 1, got {k}")
    out = torch.zeros(len(histories), k, dtype=torch.long)
    for row, history in enumerate(histories):
        tail = list(history[-k:])[::-1]
        if tail:
            out[row, : len(tail)] = torch.as_tensor(tail, dtype=torch.long)
    return out


def content_scores(items: Tensor, recent: Tensor, unit: Tensor, decay: float = 1.0) -> Tensor:
    """``[U, n]`` content score of the candidates ``items [U, n]`` against ``recent [U, k]`` (newest first).

    ``unit [N + 1, D]``: the catalogue's unit text vectors (:func:`unit_vectors`; row 0 zero). Empty slots
    (item 0) and devices with no recent item score 0. ``decay`` in (0, 1] weights older items less.
    """
    if items.dim() != 2 or recent.dim() != 2 or items.shape[0] != recent.shape[0]:
        raise ValueError(
            f"items {tuple(items.shape)} and recent {tuple(recent.shape)} must be [U, n] and [U, k]"
        )
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"collab.content_decay must be in (0, 1], got {decay}")
    weights = decay ** torch.arange(recent.shape[1], dtype=torch.float32)
    weights = weights.unsqueeze(0) * (recent > 0).float()  # [U, k]
    total = weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
    profile = (unit[recent] * (weights / total).unsqueeze(-1)).sum(dim=1)  # [U, D]
    scores = torch.empty(items.shape, dtype=torch.float32)
    # In chunks of users: gathering [U, n, D] at once would take gigabytes for a whole catalogue's users.
    for start in range(0, items.shape[0], _CHUNK):
        part = slice(start, start + _CHUNK)
        scores[part] = torch.bmm(unit[items[part]], profile[part].unsqueeze(-1)).squeeze(-1)
    return scores.masked_fill(items == 0, 0.0)
