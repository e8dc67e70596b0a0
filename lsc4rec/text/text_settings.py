"""The typed settings of item-text encoding (``conf/text/default.yaml``, ``text.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from lsc4rec.data.item_text import DEFAULT_TEXT_FIELDS

__all__ = ["TextSettings"]


@dataclass(frozen=True)
class TextSettings:
    """How item text becomes vectors (:func:`lsc4rec.text.item_vectors.item_text_vectors`).

    ``encoder``: the pretrained sentence encoder (minilm, smollm2, or a local encoder folder); ``fields``:
    the item-text fields joined into one line per item; ``cache_dir``: where vectors are cached by
    (encoder, text) (None = ``$LSC4REC_CACHE_DIR/text_vectors`` or ``~/.cache/lsc4rec/text_vectors``);
    ``batch_size``: texts encoded per batch; ``progress``: show a progress bar while encoding.
    """

    encoder: str = "minilm"
    fields: tuple[str, ...] = DEFAULT_TEXT_FIELDS
    cache_dir: str | None = None
    batch_size: int = 64
    progress: bool = True
