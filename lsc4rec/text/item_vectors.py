"""One vector per catalogue item from its text (title | brand | categories), encoded once and cached."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lsc4rec.data.item_text import DEFAULT_TEXT_FIELDS, ItemText
from lsc4rec.text.cache import TextVectorCache, default_cache_dir
from lsc4rec.text.encoders import TextEncoder, build_text_encoder, encoder_key
from lsc4rec.text.text_settings import TextSettings

logger = logging.getLogger(__name__)

__all__ = ["ItemTextVectors", "item_text_vectors", "item_text_vectors_from_config"]


@dataclass
class ItemTextVectors:
    """Row ``i`` of ``vectors [num_items + 1, D]`` is item ``i``'s text vector; ``has_text[i]``: it had text.

    Row 0 (padding) and items without text are zero vectors.
    """

    vectors: Tensor
    has_text: Tensor
    encoder: str

    @property
    def dim(self) -> int:
        """Vector length."""
        return int(self.vectors.shape[1])

    @property
    def num_items(self) -> int:
        """Catalogue size (rows minus padding)."""
        return int(self.vectors.shape[0] - 1)


def item_text_vectors(
    item_text: Mapping[int, ItemText],
    num_items: int,
    encoder: str | TextEncoder = "minilm",
    fields: Sequence[str] = DEFAULT_TEXT_FIELDS,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> ItemTextVectors:
    """Encode each item's rendered text (keyed by internal id 1..num_items) with ``encoder``, via the cache.

    ``encoder`` is a name for :func:`~lsc4rec.text.encoders.build_text_encoder` (loaded only when some text is
    not cached yet) or a loaded encoder. ``cache_dir`` defaults to
    :func:`~lsc4rec.text.cache.default_cache_dir`.
    """
    bad = [item for item in item_text if not 1 <= item <= num_items]
    if bad:
        raise ValueError(f"item text for ids {bad[:5]} outside 1..{num_items}")
    rendered = {item: text.render(fields) for item, text in item_text.items()}
    items = sorted(item for item, line in rendered.items() if line)
    if not items:
        raise ValueError(f"no item has text in the fields {list(fields)}: nothing to encode")
    key = encoder_key(encoder) if isinstance(encoder, str) else encoder.key
    cache = TextVectorCache(cache_dir or default_cache_dir(), key)

    def encode(texts: list[str]) -> np.ndarray:
        # Say so before the wait: a first run encodes every item once (about a minute on 2 CPU cores).
        logger.info(
            "encoding %d item texts with %s (cached in %s for later runs)", len(texts), key, cache.path
        )
        model = build_text_encoder(encoder) if isinstance(encoder, str) else encoder
        return model.encode(texts, batch_size=batch_size, progress=progress)

    found, encoded = cache.get_or_encode([rendered[i] for i in items], encode)

    logger.info(
        "item text vectors (%s): %d of %d items have text, %d encoded now, %d from %s",
        key,
        len(items),
        num_items,
        encoded,
        len(items) - encoded,
        cache.path,
    )
    vectors = torch.zeros(num_items + 1, found.shape[1])
    has_text = torch.zeros(num_items + 1, dtype=torch.bool)
    vectors[items] = torch.from_numpy(np.ascontiguousarray(found))
    has_text[items] = True
    return ItemTextVectors(vectors=vectors, has_text=has_text, encoder=key)


def item_text_vectors_from_config(
    item_text: Mapping[int, ItemText], num_items: int, text_cfg: TextSettings
) -> ItemTextVectors:
    """:func:`item_text_vectors` with the ``text.*`` settings (``conf/text``)."""
    return item_text_vectors(
        item_text,
        num_items,
        encoder=text_cfg.encoder,
        fields=text_cfg.fields,
        cache_dir=text_cfg.cache_dir or None,
        batch_size=text_cfg.batch_size,
        progress=text_cfg.progress,
    )
