"""Item text as vectors: pretrained text encoders (offline, from PyPI wheels) with an on-disk cache."""

from lsc4rec.text.cache import TextVectorCache, default_cache_dir
from lsc4rec.text.encoders import (
    ENCODERS,
    CausalLMTextEncoder,
    SentenceTextEncoder,
    TextEncoder,
    build_text_encoder,
)
from lsc4rec.text.item_vectors import ItemTextVectors, item_text_vectors, item_text_vectors_from_config
from lsc4rec.text.projection import principal_projection

__all__ = [
    "ENCODERS",
    "CausalLMTextEncoder",
    "ItemTextVectors",
    "SentenceTextEncoder",
    "TextEncoder",
    "TextVectorCache",
    "build_text_encoder",
    "default_cache_dir",
    "item_text_vectors",
    "item_text_vectors_from_config",
    "principal_projection",
]
