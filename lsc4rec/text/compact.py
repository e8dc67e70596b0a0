"""The catalogue's text vectors in a compact form: a residual codebook and one semantic id per item.

Shipping every item's text vector costs ``num_items × D`` numbers per device (9.3 MB for Beauty in float16).
SOLID's idea carries the same knowledge in far fewer bytes: a residual codebook of the vectors (``levels``
levels of ``K_l`` centroids, fitted by residual k-means:
:class:`lsc4rec.codebook.SemanticCodebook`) and, per item, its semantic id (one code per
level); an item's vector is the sum of its codes' centroids. A device receives the codebook (``Σ K_l × D``
numbers, float16) and the ids (one byte per level while ``K_l ≤ 256``), and rebuilds the vectors itself.
:meth:`CompactItemVectors.report` gives the bytes against the full matrix in float32 and float16 and how much
of the vectors the reconstruction keeps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lsc4rec.codebook import SemanticCodebook

__all__ = ["CompactItemVectors"]


@dataclass(frozen=True)
class CompactItemVectors:
    """Item text vectors as ``codebook`` + ``codes [num_items + 1, levels]`` (row 0: padding, no vector).

    ``present [num_items + 1]`` marks the items that have text; the others (and padding) rebuild as zero rows.
    """

    codebook: SemanticCodebook
    codes: Tensor
    present: Tensor

    @classmethod
    def from_vectors(
        cls, vectors: Tensor, sizes: Sequence[int], iterations: int = 50, seed: int = 0
    ) -> CompactItemVectors:
        """Fit a residual codebook of ``sizes`` to the rows of ``vectors [num_items + 1, D]`` with text."""
        if vectors.ndim != 2 or vectors.shape[0] < 2:
            raise ValueError(f"item text vectors must be [num_items + 1, D], got {tuple(vectors.shape)}")
        vectors = vectors.detach().float().cpu()
        present = vectors.norm(dim=1) > 0
        present[0] = False
        if int(present.sum()) < max(int(k) for k in sizes):
            raise ValueError(
                f"text codebook sizes {list(sizes)}: only {int(present.sum())} items have text vectors"
            )
        fitted = SemanticCodebook.fit(vectors[present], sizes, iterations=iterations, seed=seed)
        # The centroids travel in float16: every side rebuilds from the rounded values.
        codebook = SemanticCodebook([c.to(torch.float16).float() for c in fitted.centroids])
        codes = torch.zeros(vectors.shape[0], codebook.levels, dtype=torch.long)
        codes[present] = codebook.assign(vectors[present])
        return cls(codebook=codebook, codes=codes, present=present)

    def vectors(self) -> Tensor:
        """The rebuilt vectors ``[num_items + 1, D]`` (float32): what a device computes from the carrier."""
        rows = self.codebook.reconstruct(self.codes)
        return rows * self.present.unsqueeze(1).to(rows.dtype)

    @property
    def code_bytes(self) -> int:
        """Bytes per item of its semantic id (the smallest unsigned integer that holds each level's codes)."""
        return sum(max(1, math.ceil(math.log2(max(k, 2)) / 8)) for k in self.codebook.sizes)

    @property
    def nbytes(self) -> int:
        """What a device receives: the float16 codebook, every item's id and a bitmap of items with text."""
        rows = int(self.codes.shape[0])
        centroids = sum(self.codebook.sizes) * self.codebook.dim * 2
        return centroids + rows * self.code_bytes + math.ceil(rows / 8)

    def report(self, vectors: Tensor) -> dict[str, float | int | list[int]]:
        """Bytes against the full matrix ``vectors`` and how well the rebuilt vectors keep them (JSON-ready).

        ``cosine``: the mean cosine similarity between each item's vector and its rebuilt one;
        ``relative_error``: ``‖rebuilt − vector‖² / ‖vector‖²`` averaged over items with text.
        """
        original = vectors.detach().float().cpu()[self.present]
        rebuilt = self.vectors()[self.present]
        cosine = torch.nn.functional.cosine_similarity(original, rebuilt, dim=1)
        error = (rebuilt - original).pow(2).sum(dim=1) / original.pow(2).sum(dim=1).clamp(min=1e-12)
        full = int(vectors.shape[0]) * int(vectors.shape[1])
        return {
            "sizes": self.codebook.sizes,
            "bytes": self.nbytes,
            "bytes_float16_matrix": full * 2,
            "bytes_float32_matrix": full * 4,
            "smaller_than_float16": round(full * 2 / self.nbytes, 1),
            "cosine": round(float(cosine.mean()), 4),
            "relative_error": round(float(error.mean()), 4),
        }
