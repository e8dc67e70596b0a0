"""Item text as vectors: the offline MiniLM encoder, the (encoder, text) cache, and per-item vector tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lsc4rec.data import ItemText
from lsc4rec.text import TextVectorCache, build_text_encoder, item_text_vectors
from lsc4rec.text.encoders import TextEncoder, encoder_key


class CountingEncoder(TextEncoder):
    """A deterministic stand-in that records which texts it was asked to encode."""

    key = "counting-v1"

    def __init__(self) -> None:  # no transformers model behind it
        self.calls: list[list[str]] = []

    @property
    def dim(self) -> int:
        return 3

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([[len(t), t.count("a"), 1.0] for t in texts], dtype=np.float32)


def test_cache_encodes_each_text_once_across_runs(tmp_path: Path) -> None:
    encoder = CountingEncoder()
    first, encoded = TextVectorCache(tmp_path, encoder.key).get_or_encode(["ab", "b", "ab"], encoder.encode)
    assert encoded == 2 and encoder.calls == [["ab", "b"]]
    assert first.tolist() == [[2, 1, 1], [1, 0, 1], [2, 1, 1]]
    # A new cache object (a second run) reads the file: only the new text is encoded.
    again, encoded = TextVectorCache(tmp_path, encoder.key).get_or_encode(["b", "aaa"], encoder.encode)
    assert encoded == 1 and encoder.calls[-1] == ["aaa"]
    assert again.tolist() == [[1, 0, 1], [3, 3, 1]]
    # Another encoder has its own file.
    other = TextVectorCache(tmp_path, "other-model")
    assert len(other) == 0 and other.path != TextVectorCache(tmp_path, encoder.key).path


def test_a_damaged_cache_is_rebuilt_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    encoder = CountingEncoder()
    cache = TextVectorCache(tmp_path, encoder.key)
    cache.path.parent.mkdir(parents=True, exist_ok=True)
    cache.path.write_bytes(b"not an npz file")
    vectors, encoded = cache.get_or_encode(["x"], encoder.encode)
    assert encoded == 1 and vectors.tolist() == [[1, 0, 1]]
    assert "unreadable" in caplog.text
    assert len(TextVectorCache(tmp_path, encoder.key)) == 1


def test_cache_refuses_vectors_of_another_width(tmp_path: Path) -> None:
    encoder = CountingEncoder()
    cache = TextVectorCache(tmp_path, encoder.key)
    cache.get_or_encode(["x"], encoder.encode)
    with pytest.raises(ValueError, match="cached vectors have 3 dimensions, the encoder gives 2"):
        cache.get_or_encode(["y"], lambda texts: np.zeros((len(texts), 2)))


def test_item_vectors_put_each_item_in_its_row(tmp_path: Path) -> None:
    texts = {1: ItemText(title="aa"), 3: ItemText(brand="b"), 4: ItemText()}
    vectors = item_text_vectors(texts, 4, CountingEncoder(), cache_dir=tmp_path, progress=False)
    assert vectors.vectors.shape == (5, 3)
    assert vectors.has_text.tolist() == [False, True, False, True, False]
    assert vectors.vectors[1].tolist() == [2, 2, 1] and vectors.vectors[3].tolist() == [1, 0, 1]
    assert vectors.vectors[[0, 2, 4]].abs().sum() == 0
    with pytest.raises(ValueError, match=r"ids \[9\] outside 1..4"):
        item_text_vectors({9: ItemText(title="x")}, 4, CountingEncoder(), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no item has text"):
        item_text_vectors({1: ItemText()}, 4, CountingEncoder(), cache_dir=tmp_path)


def test_minilm_runs_offline_and_knows_what_products_are_alike(tmp_path: Path) -> None:
    encoder = build_text_encoder("minilm")
    assert encoder.key == encoder_key("minilm") and encoder.dim == 384
    texts = [
        "OPI Nail Lacquer, Red | OPI | Beauty > Makeup > Nails > Nail Polish",
        "Essie Nail Polish, Pink | Essie | Beauty > Makeup > Nails > Nail Polish",
        "Maybelline Volum' Express Mascara | Maybelline | Beauty > Makeup > Eyes > Mascara",
        "Neutrogena Oil-Free Acne Wash | Neutrogena | Beauty > Skin Care > Face > Cleansers",
    ]
    vectors = encoder.encode(texts, batch_size=2, progress=False)
    assert vectors.shape == (4, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.1 and similarity[0, 1] > similarity[0, 3] + 0.1
    # Batching and length-sorting never change a text's vector.
    alone = encoder.encode(texts[2:3], progress=False)
    assert np.allclose(alone[0], vectors[2], atol=1e-5)


def test_unknown_encoder_is_named() -> None:
    with pytest.raises(ValueError, match=r"text\.encoder='bert-huge': use one of minilm, smollm2"):
        build_text_encoder("bert-huge")
