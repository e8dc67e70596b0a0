"""Item representations a semantic codebook is learned from: SRM item embeddings, attributes, item text.

Every builder returns ``[num_items, dim]`` rows in internal item order (row ``i - 1`` = item ``i``), so blocks
from different sources can be combined with :func:`combine_features`. Items a source says nothing about get a
zero row (and are counted in the returned report), never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from lsc4rec.data.item_text import DEFAULT_TEXT_FIELDS, ItemText

__all__ = [
    "attribute_features",
    "combine_features",
    "embedding_features",
    "text_predicted_rows",
    "text_vector_features",
]


def embedding_features(item_table: Tensor) -> Tensor:
    """Rows 1..N of an SRM's item-embedding table ``[N + 1, d]`` (row 0 is padding)."""
    if item_table.ndim != 2 or item_table.shape[0] < 2:
        raise ValueError(f"an item table must be [num_items + 1, dim], got {tuple(item_table.shape)}")
    return item_table[1:].detach().to(torch.float32).cpu().clone()


def attribute_features(
    item_attributes: Mapping[int, Sequence[int]], num_items: int, dim: int = 64, seed: int = 0
) -> tuple[Tensor, dict[str, int]]:
    """TF-IDF of each item's attribute set, reduced to ``dim`` columns by truncated SVD.

    ``item_attributes`` maps internal item ids (1..num_items) to attribute ids. Rare attributes weigh more
    (idf), rows are L2-normalised before the SVD, so items with many attributes do not dominate.
    """
    vocabulary: dict[int, int] = {}
    rows, cols = [], []
    for item, attrs in item_attributes.items():
        if not 1 <= item <= num_items:
            raise ValueError(f"attribute table names item {item}, outside 1..{num_items}")
        for attr in set(attrs):
            rows.append(item - 1)
            cols.append(vocabulary.setdefault(int(attr), len(vocabulary)))
    if not vocabulary:
        raise ValueError("no item has any attribute: the attribute table is empty")
    matrix = torch.zeros(num_items, len(vocabulary))
    matrix[torch.tensor(rows), torch.tensor(cols)] = 1.0
    document_frequency = matrix.sum(dim=0)
    idf = torch.log((1.0 + num_items) / (1.0 + document_frequency)) + 1.0
    matrix = matrix * idf
    matrix = matrix / matrix.norm(dim=1, keepdim=True).clamp(min=1e-12)
    rank = min(dim, *matrix.shape)
    torch.manual_seed(seed)
    u, s, _ = torch.svd_lowrank(matrix, q=rank, niter=6)
    features = u * s
    if rank < dim:
        features = torch.cat([features, torch.zeros(num_items, dim - rank)], dim=1)
    report = {
        "items_with_attributes": int((matrix.abs().sum(dim=1) > 0).sum()),
        "items_without_attributes": int((matrix.abs().sum(dim=1) == 0).sum()),
        "attributes": len(vocabulary),
    }
    return features, report


def text_vector_features(
    item_text: Mapping[int, ItemText],
    num_items: int,
    model: str | Path = "minilm",
    fields: Sequence[str] = DEFAULT_TEXT_FIELDS,
) -> tuple[Tensor, dict[str, int]]:
    """L2-normalised text vectors of each item's ``fields`` (internal ids), ``[num_items, D]``; zero rows for
    items without text (counted in the report)."""
    from lsc4rec.text import item_text_vectors

    vectors = item_text_vectors(
        item_text, num_items, encoder=str(model), fields=tuple(fields), progress=False
    )
    with_text = int(vectors.has_text[1:].sum())
    report = {
        "items_with_text": with_text,
        "items_without_text": num_items - with_text,
        "fields": list(fields),
    }
    return vectors.vectors[1:], report


def text_predicted_rows(text: Tensor, embedding: Tensor, seen: Tensor, ridge: float = 1.0) -> Tensor:
    """``embedding [N, d]`` with the rows of unseen items (``seen [N]`` False) predicted from ``text [N, D]``.

    A ridge regression (with intercept) from text to embedding, fitted on the seen items that have text;
    unseen items without text get the seen items' mean row. The seen rows are returned unchanged.
    """
    if text.shape[0] != embedding.shape[0] or seen.shape[0] != embedding.shape[0]:
        raise ValueError(
            f"text {tuple(text.shape)}, embedding {tuple(embedding.shape)} and seen {tuple(seen.shape)} must "
            "have one row per item"
        )
    seen = seen.bool()
    if bool(seen.all()):
        return embedding
    has_text = text.norm(dim=1) > 0
    fit_rows = seen & has_text
    out = embedding.clone()
    mean_row = embedding[seen].mean(dim=0) if bool(seen.any()) else torch.zeros(embedding.shape[1])
    out[~seen] = mean_row
    if int(fit_rows.sum()) < 2:
        return out
    x = text[fit_rows].double()
    y = embedding[fit_rows].double()
    x_mean, y_mean = x.mean(dim=0), y.mean(dim=0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc + ridge * torch.eye(x.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, xc.T @ yc)
    predict = ~seen & has_text
    out[predict] = ((text[predict].double() - x_mean) @ weights + y_mean).to(embedding.dtype)
    return out


def combine_features(blocks: Mapping[str, Tensor], weights: Mapping[str, float] | None = None) -> Tensor:
    """Concatenate representation blocks, each scaled to unit mean row norm and then by its weight.

    Equalising the blocks' scales first keeps one source (e.g. 384-d text) from drowning another.
    """
    if not blocks:
        raise ValueError("no item representation to build the codebook from (solid.features is empty)")
    sizes = {name: int(block.shape[0]) for name, block in blocks.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"item representation blocks disagree on the number of items: {sizes}")
    parts = []
    for name, block in blocks.items():
        norm = float(block.norm(dim=1).mean())
        weight = 1.0 if weights is None else float(weights.get(name, 1.0))
        parts.append(block / (norm if norm > 0 else 1.0) * weight)
    return torch.cat(parts, dim=1)
