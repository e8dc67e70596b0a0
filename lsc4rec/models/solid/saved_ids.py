"""The items' semantic ids saved beside a SOLID model's weights, so a saved model is scored as it was tested.

A SOLID model's state dict holds its weights only: the items' semantic ids come from the codebook version the
server held (they are not trained), so a saved ``model_last.pt`` alone cannot be scored. The ids go to
``model_last.semantic_ids.pt`` beside it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from lsc4rec.models.solid.dual_model import SolidRecommender

__all__ = ["load_semantic_ids", "save_semantic_ids", "semantic_ids_path"]


def semantic_ids_path(weights: Path) -> Path:
    """Where the semantic ids of the model saved at ``weights`` go: ``<stem>.semantic_ids.pt`` beside it."""
    return weights.with_name(f"{weights.stem}.semantic_ids.pt")


def save_semantic_ids(codes: Tensor | None, weights: Path) -> None:
    """Save ``codes`` (``[num_items + 1, levels]``) beside ``weights``; nothing when the model has none."""
    if codes is not None:
        torch.save(codes.cpu(), semantic_ids_path(weights))


def load_semantic_ids(model: SolidRecommender, weights: Path) -> None:
    """Give ``model`` the semantic ids saved beside ``weights``; a clear error when they are missing."""
    path = semantic_ids_path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: a SOLID model's weights ({weights}) are scored with the semantic ids "
            "its run saved beside them (runs before this file existed did not save them)"
        )
    model.set_semantic_ids(torch.load(path, map_location="cpu", weights_only=True))
