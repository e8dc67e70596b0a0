"""The compact text carrier: a residual codebook plus one semantic id per item (lsc4rec/text/compact.py)."""

from __future__ import annotations

import pytest
import torch

from lsc4rec.text.compact import CompactItemVectors


def _vectors(items: int = 300, dim: int = 24) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    # Clustered vectors, as text vectors of a catalogue are: 12 topics plus item-level detail.
    topics = torch.randn(12, dim, generator=generator) * 3
    rows = topics[torch.randint(0, 12, (items,), generator=generator)] + torch.randn(
        items, dim, generator=generator
    )
    vectors = torch.cat([torch.zeros(1, dim), rows])
    vectors[7] = 0.0  # an item without text
    return vectors


def test_more_levels_rebuild_the_vectors_better_and_bytes_are_counted_exactly() -> None:
    vectors = _vectors()
    one = CompactItemVectors.from_vectors(vectors, [16], seed=0)
    three = CompactItemVectors.from_vectors(vectors, [16, 16, 16], seed=0)
    assert three.report(vectors)["relative_error"] < one.report(vectors)["relative_error"] < 1.0
    assert three.report(vectors)["cosine"] > one.report(vectors)["cosine"] > 0.5
    rebuilt = three.vectors()
    assert rebuilt.shape == vectors.shape
    assert torch.count_nonzero(rebuilt[0]) == 0 and torch.count_nonzero(rebuilt[7]) == 0
    # 3 levels of 16 float16 centroids of 24 numbers, one byte per level and item, a bitmap of 301 rows.
    assert three.nbytes == 3 * 16 * 24 * 2 + 301 * 3 + 38
    report = three.report(vectors)
    assert report["bytes_float16_matrix"] == 301 * 24 * 2 and report["bytes_float32_matrix"] == 301 * 24 * 4
    # Seeded: the same codes again.
    assert torch.equal(CompactItemVectors.from_vectors(vectors, [16, 16, 16], seed=0).codes, three.codes)


def test_ids_wider_than_a_byte_and_bad_input() -> None:
    vectors = _vectors(items=600)
    wide = CompactItemVectors.from_vectors(vectors, [300], iterations=5, seed=0)
    assert wide.code_bytes == 2
    with pytest.raises(ValueError, match=r"only 599 items have text"):
        CompactItemVectors.from_vectors(vectors, [1000])
    with pytest.raises(ValueError, match=r"must be \[num_items \+ 1, D\]"):
        CompactItemVectors.from_vectors(torch.zeros(5), [2])
