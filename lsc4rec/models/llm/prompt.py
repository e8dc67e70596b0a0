"""Histories written as item titles in a prompt (P5 / TALLRec style) for a pretrained language model.

``llm.history_format=titles``: instead of a stream of item tokens, the LLM reads

    "A shopper bought, oldest first: <title 1>; <title 2>; ...; <title L>. Next they buy:"

in its own word vocabulary and predicts the next item as one item token right after the prompt (the item
tokens are new vocabulary rows, started from the item text with ``llm.item_init=text``), so the constrained
beam search and the candidate service work unchanged. Older items are dropped first when the prompt would
exceed ``max_tokens``. Meant for a GPU cloud: every history is a few hundred word tokens instead of a few
dozen item tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoTokenizer, PreTrainedTokenizerBase

__all__ = ["TitlePrompt"]

_FILE = "title_prompt.json"
_TOKENIZER_DIR = "prompt_tokenizer"


class TitlePrompt:
    """Turns left-padded item histories into left-padded prompt token rows of a word tokenizer."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        titles: Sequence[str],
        pad_token_id: int,
        header: str = "A shopper bought, oldest first:",
        footer: str = "Next they buy:",
        max_title_tokens: int = 24,
        max_tokens: int = 512,
    ) -> None:
        """``titles[i]`` is item ``i``'s text (``titles[0]``, padding, is unused; ``""`` = no text).

        Titles are tokenised once, cut at ``max_title_tokens``; ``max_tokens`` bounds a whole prompt.
        """
        if max_title_tokens < 1 or max_tokens < 8:
            raise ValueError(
                f"prompt sizes too small: max_title_tokens={max_title_tokens}, max_tokens={max_tokens}"
            )
        self.tokenizer = tokenizer
        self.titles = [str(t) for t in titles]
        self.pad_token_id = int(pad_token_id)
        self.header, self.footer = header, footer
        self.max_title_tokens, self.max_tokens = int(max_title_tokens), int(max_tokens)

        def ids(text: str) -> list[int]:
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

        # Pieces are tokenised apart, so each carries its leading space (byte-level BPE vocabularies such as
        # SmolLM2's spell " word" and "word" differently; WordPiece ignores it).
        self._header, self._footer, self._separator = ids(header), ids(" " + footer), ids(";")
        # Item i's title tokens followed by the separator; an item without text is written as "item <i>".
        self._item_tokens = [[]] + [
            ids(" " + (title or f"item {i}"))[: self.max_title_tokens] + self._separator
            for i, title in enumerate(self.titles[1:], start=1)
        ]
        if len(self._header) + len(self._footer) >= self.max_tokens:
            raise ValueError(f"the prompt's header and footer alone exceed max_tokens={self.max_tokens}")

    @property
    def num_items(self) -> int:
        """Items with a title row (ids 1..num_items)."""
        return len(self.titles) - 1

    def prompt_ids(self, history: Sequence[int]) -> list[int]:
        """Token ids of one history's prompt (most recent items kept when it is too long)."""
        budget = self.max_tokens - len(self._header) - len(self._footer)
        body: list[int] = []
        for item in reversed([int(i) for i in history if int(i) > 0]):
            if not 1 <= item <= self.num_items:
                raise ValueError(f"history: item id {item} is outside 1..{self.num_items} (0 = padding)")
            tokens = self._item_tokens[item]
            if len(body) + len(tokens) > budget:
                break
            body = tokens + body
        return self._header + body + self._footer

    def encode(self, histories: Tensor) -> tuple[Tensor, Tensor]:
        """``(tokens, attention_mask)`` ``[B, T]``, left-padded, for left-padded item ``histories [B, L]``."""
        rows = [self.prompt_ids(h) for h in histories.tolist()]
        width = max(len(r) for r in rows) if rows else 1
        tokens = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for index, row in enumerate(rows):
            tokens[index, width - len(row) :] = torch.as_tensor(row, dtype=torch.long)
            mask[index, width - len(row) :] = True
        return tokens, mask

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Write the prompt settings, the titles and the word tokenizer into ``directory``."""
        directory = Path(directory)
        settings = {
            "pad_token_id": self.pad_token_id,
            "header": self.header,
            "footer": self.footer,
            "max_title_tokens": self.max_title_tokens,
            "max_tokens": self.max_tokens,
            "titles": self.titles,
        }
        (directory / _FILE).write_text(json.dumps(settings))
        self.tokenizer.save_pretrained(directory / _TOKENIZER_DIR)

    @classmethod
    def load(cls, directory: str | Path) -> TitlePrompt | None:
        """The prompt saved in ``directory``, or None when the model reads item tokens."""
        directory = Path(directory)
        if not (directory / _FILE).is_file():
            return None
        settings = json.loads((directory / _FILE).read_text())
        tokenizer = AutoTokenizer.from_pretrained(directory / _TOKENIZER_DIR, local_files_only=True)
        titles = settings.pop("titles")
        return cls(tokenizer, titles, **settings)
