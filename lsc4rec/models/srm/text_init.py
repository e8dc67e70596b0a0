"""A device SRM whose item table starts from the items' text: how much text knowledge a device can hold.

Row ``i`` of the item table becomes ``P · text(i)``, with ``P`` the text vectors' top principal directions
scaled so the rows keep the spread of the model's own random initialisation; items without text keep their
random rows. Training then moves every row freely: the text is a starting point, not a constraint. It costs
nothing on the wire (the table has the same shape) and nothing per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lsc4rec.models.srm.base import SequentialRecommender
from lsc4rec.text.projection import principal_projection

__all__ = ["init_item_table_from_vectors"]


def init_item_table_from_vectors(
    model: SequentialRecommender, text_vectors: Tensor, has_text: Tensor
) -> dict[str, float | int]:
    """Overwrite the item rows of ``model`` that have a vector with projected ``text_vectors [N + 1, D]``.

    ``has_text [N + 1]`` marks rows with a vector (row 0, padding, is never touched). The vectors are usually
    item text; any item representation works (e.g. the cloud LLM's item rows). Returns a report: items
    initialised and the per-coordinate std the rows were scaled to.
    """
    table = model.item_embedding.weight
    if (
        text_vectors.ndim != 2
        or text_vectors.shape[0] != table.shape[0]
        or has_text.shape[0] != table.shape[0]
    ):
        raise ValueError(
            f"text vectors {tuple(text_vectors.shape)} / has_text {tuple(has_text.shape)} do not match the "
            f"item table {tuple(table.shape)} (rows = num_items + 1)"
        )
    rows = has_text.clone().bool()
    rows[0] = False
    if not bool(rows.any()):
        raise ValueError("no item has text: a text-initialised item table needs some")
    scale = float(table.detach()[1:].std())
    projection = principal_projection(text_vectors[rows], int(table.shape[1]), scale)
    with torch.no_grad():
        projected = text_vectors[rows].float() @ projection.T
        table[rows] = (projected - projected.mean(dim=0)).to(table.dtype)
    return {"items_from_text": int(rows.sum()), "row_std": round(scale, 6)}
