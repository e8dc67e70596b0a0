"""SOLID's semantic codebook: k-means or residual VQ over item representations, versioned and mergeable.

An item's representation ``x`` is quantised level by level: level 0 picks the nearest centroid of ``x``, level
``l`` the nearest centroid of the residual left by levels ``0..l-1``. The tuple of chosen codes is the item's
semantic id (one code for plain k-means, one per level for residual VQ).

The codebook is meant to be a global object owned by a server: :meth:`SemanticCodebook.statistics` condenses
any set of representations into per-code counts, sums and squared-norm sums (all a device ever reveals), and
:meth:`SemanticCodebook.updated` turns the statistics summed over many devices into the next version (a
count-weighted Lloyd step, with dead codes re-seeded by splitting the busiest code). Merging the statistics
of a partition of the data gives exactly the update of the whole data, which is what makes it federated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CodebookStatistics", "SemanticCodebook", "kmeans"]

# Rows per distance block: bounds the [rows, K] distance matrix for large catalogues.
_BLOCK = 8192


def _nearest(points: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (Euclidean) for every row of ``points``; ties go to the lower index."""
    out = torch.empty(points.shape[0], dtype=torch.long)
    squared = (centroids * centroids).sum(dim=1)
    for start in range(0, points.shape[0], _BLOCK):
        block = points[start : start + _BLOCK]
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is the same for every c of a row.
        distances = squared.unsqueeze(0) - 2.0 * block @ centroids.t()
        out[start : start + _BLOCK] = distances.argmin(dim=1)
    return out


def _kmeans_plus_plus(points: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to its squared distance."""
    n = points.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [points[first]]
    closest = ((points - points[first]) ** 2).sum(dim=1)
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0.0:
            # Every point coincides with a centre already: the rest are duplicates of random points.
            index = int(torch.randint(n, (1,), generator=generator))
        else:
            index = int(torch.multinomial(closest / total, 1, generator=generator))
        centres.append(points[index])
        closest = torch.minimum(closest, ((points - points[index]) ** 2).sum(dim=1))
    return torch.stack(centres)


def kmeans(
    points: Tensor, k: int, iterations: int = 50, seed: int = 0, tolerance: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding; returns ``(centroids [k, dim], assignment [n])``.

    A cluster that empties is re-seeded at the point farthest from its centroid, so all ``k`` codes stay in
    use while there are at least ``k`` distinct points. Stops when no centroid moves more than ``tolerance``
    (relative to the data's scale) or after ``iterations`` rounds. Deterministic for a given ``seed``.
    """
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"kmeans needs a non-empty [n, dim] matrix, got shape {tuple(points.shape)}")
    if not 1 <= k <= points.shape[0]:
        raise ValueError(f"kmeans: k must be in 1..{points.shape[0]} (the number of points), got {k}")
    if not bool(torch.isfinite(points).all()):
        raise ValueError("kmeans: the item representations contain NaN or infinite values")
    points = points.detach().to(torch.float32, copy=False).cpu()
    generator = torch.Generator().manual_seed(seed)
    centroids = _kmeans_plus_plus(points, k, generator)
    scale = float(points.pow(2).sum(dim=1).mean().sqrt()) or 1.0
    assignment = _nearest(points, centroids)
    for _ in range(iterations):
        counts = torch.bincount(assignment, minlength=k).to(points.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        updated = sums / counts.clamp(min=1).unsqueeze(1)
        empty = counts == 0
        if bool(empty.any()):
            distance = ((points - centroids[assignment]) ** 2).sum(dim=1)
            far = distance.argsort(descending=True)[: int(empty.sum())]
            updated[empty] = points[far]
        shift = float((updated - centroids).norm(dim=1).max())
        centroids = updated
        assignment = _nearest(points, centroids)
        if shift <= tolerance * scale:
            break
    return centroids, assignment


@dataclass
class CodebookStatistics:
    """Per-level, per-code sufficient statistics of a set of representations (what a device sends).

    ``counts[l] [K_l]``, ``sums[l] [K_l, dim]`` (sum of the level-``l`` residuals assigned to each code) and
    ``squares[l] [K_l]`` (sum of their squared norms). Statistics of disjoint sets add up.
    """

    counts: list[Tensor]
    sums: list[Tensor]
    squares: list[Tensor]

    def __add__(self, other: CodebookStatistics) -> CodebookStatistics:
        if [c.shape for c in self.sums] != [c.shape for c in other.sums]:
            raise ValueError(
                "cannot merge codebook statistics of different shapes: "
                f"{[tuple(s.shape) for s in self.sums]} vs {[tuple(s.shape) for s in other.sums]}"
            )
        return CodebookStatistics(
            counts=[a + b for a, b in zip(self.counts, other.counts, strict=True)],
            sums=[a + b for a, b in zip(self.sums, other.sums, strict=True)],
            squares=[a + b for a, b in zip(self.squares, other.squares, strict=True)],
        )

    @classmethod
    def zeros_like(cls, codebook: SemanticCodebook) -> CodebookStatistics:
        """Empty statistics shaped for ``codebook``."""
        return cls(
            counts=[torch.zeros(c.shape[0], dtype=torch.float64) for c in codebook.centroids],
            sums=[torch.zeros(c.shape, dtype=torch.float64) for c in codebook.centroids],
            squares=[torch.zeros(c.shape[0], dtype=torch.float64) for c in codebook.centroids],
        )


class SemanticCodebook:
    """A versioned residual codebook: ``centroids[l] [K_l, dim]`` per level (one level = plain k-means)."""

    def __init__(self, centroids: Sequence[Tensor], version: int = 0) -> None:
        """Wrap per-level centroid matrices (all with the same ``dim``) as codebook ``version``."""
        if not centroids:
            raise ValueError("a codebook needs at least one level")
        dims = {int(c.shape[1]) for c in centroids if c.ndim == 2}
        if len(dims) != 1 or any(c.ndim != 2 or c.shape[0] < 1 for c in centroids):
            raise ValueError(
                "codebook levels must be [K_l, dim] matrices of one dim, got "
                f"{[tuple(c.shape) for c in centroids]}"
            )
        if version < 0:
            raise ValueError(f"codebook version must be >= 0, got {version}")
        self.centroids = [c.detach().to(torch.float32).cpu().clone() for c in centroids]
        self.version = int(version)

    # ------------------------------------------------------------------ construction
    @classmethod
    def fit(
        cls, features: Tensor, sizes: Sequence[int], iterations: int = 50, seed: int = 0
    ) -> SemanticCodebook:
        """Learn a codebook with ``len(sizes)`` levels of ``sizes[l]`` codes by residual k-means."""
        if not sizes:
            raise ValueError("solid.codebook_sizes must list at least one level size")
        features = cls._check_features(features, None)
        residual = features.clone()
        centroids = []
        for level, k in enumerate(sizes):
            if not 1 <= int(k) <= features.shape[0]:
                raise ValueError(
                    f"codebook level {level}: size {k} must be in 1..{features.shape[0]} (number of items)"
                )
            level_centroids, assignment = kmeans(residual, int(k), iterations, seed + level)
            centroids.append(level_centroids)
            residual = residual - level_centroids[assignment]
        return cls(centroids)

    @staticmethod
    def _check_features(features: Tensor, dim: int | None) -> Tensor:
        if features.ndim != 2:
            raise ValueError(f"item representations must be [num_items, dim], got {tuple(features.shape)}")
        if dim is not None and features.shape[1] != dim:
            raise ValueError(f"item representations have dim {features.shape[1]} but the codebook has {dim}")
        if not bool(torch.isfinite(features).all()):
            raise ValueError("item representations contain NaN or infinite values")
        return features.detach().to(torch.float32).cpu()

    # ------------------------------------------------------------------ properties
    @property
    def sizes(self) -> list[int]:
        """Codes per level."""
        return [int(c.shape[0]) for c in self.centroids]

    @property
    def dim(self) -> int:
        """Dimension of the representations the codebook quantises."""
        return int(self.centroids[0].shape[1])

    @property
    def levels(self) -> int:
        """Number of levels (codes per semantic id)."""
        return len(self.centroids)

    # ------------------------------------------------------------------ quantisation
    def assign(self, features: Tensor) -> Tensor:
        """Semantic ids ``[n, levels]`` (0-based codes) of representations ``[n, dim]``."""
        codes, _ = self._quantise(self._check_features(features, self.dim))
        return codes

    def reconstruct(self, codes: Tensor) -> Tensor:
        """The representation a semantic id stands for: the sum of its codes' centroids ``[n, dim]``."""
        if codes.ndim != 2 or codes.shape[1] != self.levels:
            raise ValueError(f"codes must be [n, {self.levels}], got {tuple(codes.shape)}")
        return sum(self.centroids[level][codes[:, level]] for level in range(self.levels))

    def _quantise(self, features: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Codes per level and the residual each level quantised."""
        residual = features
        codes, residuals = [], []
        for centroids in self.centroids:
            code = _nearest(residual, centroids)
            codes.append(code)
            residuals.append(residual)
            residual = residual - centroids[code]
        return torch.stack(codes, dim=1), residuals

    def quantisation_error(self, features: Tensor) -> float:
        """Mean squared distance between representations and their reconstruction."""
        features = self._check_features(features, self.dim)
        return float(((features - self.reconstruct(self.assign(features))) ** 2).sum(dim=1).mean())

    # ------------------------------------------------------------------ federated updates
    def statistics(self, features: Tensor, weights: Tensor | None = None) -> CodebookStatistics:
        """Per-code counts, residual sums and squared-norm sums of ``features`` under this codebook.

        ``weights [n]`` counts each row that many times (e.g. how often a device interacted with the item).
        """
        features = self._check_features(features, self.dim)
        if weights is None:
            weights = torch.ones(features.shape[0])
        if weights.shape != (features.shape[0],) or bool((weights < 0).any()):
            raise ValueError(f"weights must be [n] and non-negative, got shape {tuple(weights.shape)}")
        weights = weights.to(torch.float64)
        codes, residuals = self._quantise(features)
        stats = CodebookStatistics.zeros_like(self)
        for level, residual in enumerate(residuals):
            residual = residual.to(torch.float64)
            code = codes[:, level]
            stats.counts[level].index_add_(0, code, weights)
            stats.sums[level].index_add_(0, code, residual * weights.unsqueeze(1))
            stats.squares[level].index_add_(0, code, (residual * residual).sum(dim=1) * weights)
        return stats

    def updated(
        self, stats: CodebookStatistics, momentum: float = 0.0, seed: int = 0, reseed_scale: float = 0.5
    ) -> tuple[SemanticCodebook, dict[str, list[int]]]:
        """The next version: every used code moves to the mean of what it was assigned (count-weighted).

        ``momentum`` keeps that share of the old centroid (0 = a plain Lloyd step). A dead code (count 0) is
        re-seeded next to the code with the largest spread (count x variance), displaced along a random
        direction by ``reseed_scale`` times that code's RMS radius, so it can take over part of its items.
        Returns the new codebook and ``{"dead": [...], "reseeded": [...]}`` per level.
        """
        if stats.sums and [tuple(s.shape) for s in stats.sums] != [tuple(c.shape) for c in self.centroids]:
            raise ValueError(
                f"statistics shapes {[tuple(s.shape) for s in stats.sums]} do not match the codebook "
                f"{[tuple(c.shape) for c in self.centroids]}"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"solid.sync_momentum must be in [0, 1), got {momentum}")
        generator = torch.Generator().manual_seed(seed + self.version)
        new_levels: list[Tensor] = []
        report: dict[str, list[int]] = {"dead": [], "reseeded": []}
        for level, old in enumerate(self.centroids):
            counts = stats.counts[level]
            used = counts > 0
            means = (stats.sums[level] / counts.clamp(min=1e-12).unsqueeze(1)).to(torch.float32)
            new = old.clone()
            new[used] = momentum * old[used] + (1.0 - momentum) * means[used]
            dead = (~used).nonzero().flatten().tolist()
            reseeded = 0
            if dead and bool(used.any()):
                variance = (stats.squares[level] / counts.clamp(min=1e-12)).to(torch.float32) - (
                    means * means
                ).sum(dim=1)
                spread = torch.where(used, counts.to(torch.float32) * variance.clamp(min=0.0), -1.0)
                for code in dead:
                    donor = int(spread.argmax())
                    if float(spread[donor]) <= 0.0:
                        break
                    radius = math.sqrt(max(float(variance[donor]), 0.0))
                    direction = torch.randn(old.shape[1], generator=generator)
                    direction = direction / direction.norm().clamp(min=1e-12)
                    new[code] = new[donor] + reseed_scale * radius * direction
                    # The donor gives up half its mass, so the next dead code picks another donor.
                    spread[donor] = spread[donor] / 2.0
                    reseeded += 1
            new_levels.append(new)
            report["dead"].append(len(dead))
            report["reseeded"].append(reseeded)
        return SemanticCodebook(new_levels, version=self.version + 1), report

    # ------------------------------------------------------------------ usage
    def usage(self, codes: Tensor) -> dict[str, list[float]]:
        """Per level: perplexity of the code distribution (exp entropy; = K when uniform) and dead codes."""
        perplexity, dead = [], []
        for level, k in enumerate(self.sizes):
            counts = torch.bincount(codes[:, level], minlength=k).to(torch.float64)
            p = counts / counts.sum().clamp(min=1.0)
            entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
            perplexity.append(round(math.exp(entropy), 3))
            dead.append(int((counts == 0).sum()))
        return {"perplexity": perplexity, "dead_codes": dead}

    # ------------------------------------------------------------------ transport
    def to_arrays(self) -> dict[str, Tensor]:
        """Named tensors for an ``ArrayRecord`` / checkpoint (``level_<l>`` plus ``version``)."""
        arrays = {f"level_{level}": c for level, c in enumerate(self.centroids)}
        arrays["version"] = torch.tensor([self.version], dtype=torch.long)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, Tensor]) -> SemanticCodebook:
        """Inverse of :meth:`to_arrays`; a clear error for a missing level or version."""
        if "version" not in arrays:
            raise ValueError("codebook arrays lack 'version'")
        levels = sorted((int(k.split("_", 1)[1]), v) for k, v in arrays.items() if k.startswith("level_"))
        if not levels or [i for i, _ in levels] != list(range(len(levels))):
            raise ValueError(f"codebook arrays need level_0..level_N, got {sorted(arrays)}")
        return cls([v for _, v in levels], version=int(torch.as_tensor(arrays["version"]).flatten()[0]))
