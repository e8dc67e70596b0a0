"""SOLID (semantic codebook learning for dynamic recommendation models): codebook, semantic ids, dual model.

- :mod:`~lsc4rec.codebook` (below models and text, shared with the compact text carrier): k-means / residual
  VQ codebook, versioned, updated from statistics.
- :mod:`~lsc4rec.models.solid.item_features`: item representations (SRM embeddings, attributes, title text).
- :mod:`~lsc4rec.models.solid.semantic`: semantic tokens and semantic sequences.
- :mod:`~lsc4rec.models.solid.dual_model`: the dual parameter model on top of a base SRM.
- :mod:`~lsc4rec.models.solid.pipeline`: config -> representations -> codebook -> semantic ids.
"""

from lsc4rec.codebook import CodebookStatistics, SemanticCodebook, kmeans
from lsc4rec.models.solid.dual_model import SolidRecommender
from lsc4rec.models.solid.semantic import (
    disambiguate,
    semantic_sequences,
    semantic_token_table,
    semantic_vocabulary_size,
)

__all__ = [
    "CodebookStatistics",
    "SemanticCodebook",
    "SolidRecommender",
    "disambiguate",
    "kmeans",
    "semantic_sequences",
    "semantic_token_table",
    "semantic_vocabulary_size",
]
