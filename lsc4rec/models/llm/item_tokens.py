"""Items as tokens of a causal LM: every item is a fixed-length tuple of token ids in the model's vocabulary.

Depth 1 is one token per item (the default: ``<item_i>``). Depth > 1 is a semantic id (e.g. the SOLID residual
codebook, one token per level), which lets the LLM and the devices share one item vocabulary. Codes must be
unique per item, so a generated token tuple names exactly one item.

A history is written as ``[bos, codes(i_1)..., codes(i_L)]``; the model predicts the next item token by token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["ItemTokenizer"]

_FILE = "item_tokens.json"


class ItemTokenizer:
    """Maps 1-based item ids to token tuples of a language model's vocabulary and back."""

    def __init__(self, codes: Tensor, bos_token_id: int, pad_token_id: int, vocab_size: int) -> None:
        """``codes [num_items + 1, depth]`` holds item i's token ids in row i (row 0, padding, is ignored)."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.ndim != 2 or codes.shape[0] < 2 or codes.shape[1] < 1:
            raise ValueError(
                f"codes must be [num_items + 1, depth] with num_items, depth >= 1, got {tuple(codes.shape)}"
            )
        items = codes[1:]
        if int(items.min()) < 0 or int(items.max()) >= vocab_size:
            raise ValueError(
                f"item token ids must lie in 0..{vocab_size - 1}, got {int(items.min())}..{int(items.max())}"
            )
        special = {bos_token_id, pad_token_id}
        clash = [t for t in special if bool((items == t).any())]
        if clash:
            raise ValueError(f"item tokens reuse the special token id(s) {clash} (bos/pad)")
        if len({tuple(row) for row in items.tolist()}) != items.shape[0]:
            raise ValueError("two items share a token tuple; every item needs a unique code")
        self.codes = codes.clone()
        self.codes[0] = pad_token_id
        self.bos_token_id = int(bos_token_id)
        self.pad_token_id = int(pad_token_id)
        self.vocab_size = int(vocab_size)
        # Item tokens per level, for masks over the vocabulary.
        self._level_tokens = [torch.unique(items[:, d]) for d in range(self.depth)]
        # Depth 1: a direct token -> item table (0 = not an item token).
        self._token_to_item = torch.zeros(self.vocab_size, dtype=torch.long)
        if self.depth == 1:
            self._token_to_item[items[:, 0]] = torch.arange(1, items.shape[0] + 1)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def one_token_per_item(
        cls, num_items: int, first_item_token: int, bos_token_id: int, pad_token_id: int
    ) -> ItemTokenizer:
        """Item i is the single token ``first_item_token + i - 1`` (the vocabulary ends at the last item)."""
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        codes = torch.zeros(num_items + 1, 1, dtype=torch.long)
        codes[1:, 0] = torch.arange(first_item_token, first_item_token + num_items)
        return cls(codes, bos_token_id, pad_token_id, first_item_token + num_items)

    @classmethod
    def from_semantic_ids(
        cls,
        semantic_ids: Tensor,
        sizes: Sequence[int],
        first_token: int,
        bos_token_id: int,
        pad_token_id: int,
    ) -> ItemTokenizer:
        """Item i is its semantic id ``semantic_ids[i]`` (0-based code per level), one token per level.

        Level ``l`` code ``c`` is token ``first_token + sum(sizes[:l]) + c``: levels never share a token, so
        the vocabulary is ``first_token + sum(sizes)`` and the trie of valid codes is the catalogue. Ids must
        be unique per item (see :func:`lsc4rec.models.solid.disambiguate`).
        """
        semantic_ids = torch.as_tensor(semantic_ids, dtype=torch.long)
        if semantic_ids.ndim != 2 or semantic_ids.shape[1] != len(sizes):
            raise ValueError(
                f"semantic ids must be [num_items + 1, {len(sizes)}] for sizes {list(sizes)}, "
                f"got {tuple(semantic_ids.shape)}"
            )
        items = semantic_ids[1:]
        for level, k in enumerate(sizes):
            if int(items[:, level].min()) < 0 or int(items[:, level].max()) >= int(k):
                raise ValueError(f"semantic id level {level}: codes must lie in 0..{int(k) - 1}")
        offsets = torch.tensor([0, *torch.cumsum(torch.tensor([int(k) for k in sizes]), 0)[:-1].tolist()])
        codes = semantic_ids + first_token + offsets
        return cls(codes, bos_token_id, pad_token_id, first_token + sum(int(k) for k in sizes))

    # ------------------------------------------------------------------ properties
    @property
    def num_items(self) -> int:
        """Number of items (valid ids 1..num_items)."""
        return int(self.codes.shape[0] - 1)

    @property
    def depth(self) -> int:
        """Tokens per item."""
        return int(self.codes.shape[1])

    def level_token_mask(self, level: int) -> Tensor:
        """Boolean ``[vocab_size]``: True for tokens that appear at ``level`` of some item's code."""
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        mask[self._level_tokens[level]] = True
        return mask

    # ------------------------------------------------------------------ encoding
    def check_items(self, items: Tensor, what: str) -> None:
        """Raise ValueError naming ``what`` when an id is outside 0..num_items (0 = padding)."""
        if items.numel() and (int(items.min()) < 0 or int(items.max()) > self.num_items):
            bad = items[(items < 0) | (items > self.num_items)][0]
            raise ValueError(f"{what}: item id {int(bad)} is outside 1..{self.num_items} (0 = padding)")

    def encode_histories(self, histories: Tensor) -> tuple[Tensor, Tensor]:
        """Left-padded item histories ``[B, L]`` -> ``(tokens, attention_mask)`` each ``[B, 1 + L * depth]``.

        Every row becomes ``[pad..., bos, codes(i_1)..., codes(i_L)]``: the bos sits right before the first
        real item, so a model can predict the first item too, and padding stays on the left.
        """
        self.check_items(histories, "history")
        batch, length = histories.shape
        tokens = self.codes[histories].reshape(batch, length * self.depth)
        mask = (histories > 0).repeat_interleave(self.depth, dim=1)
        tokens = torch.cat([torch.full((batch, 1), self.pad_token_id, dtype=torch.long), tokens], dim=1)
        mask = torch.cat([torch.zeros(batch, 1, dtype=torch.bool), mask], dim=1)
        # The bos goes in the column just left of the first real token (column 0 for an empty history).
        first_real = torch.where(
            mask.any(dim=1), mask.float().argmax(dim=1), torch.full((batch,), mask.shape[1])
        )
        bos_column = first_real - 1
        tokens[torch.arange(batch), bos_column] = self.bos_token_id
        mask[torch.arange(batch), bos_column] = True
        return tokens, mask

    def items_from_codes(self, codes: Tensor) -> Tensor:
        """Item ids for token tuples ``[..., depth]``; 0 where a tuple is no item's code."""
        if self.depth == 1:
            return self._token_to_item[codes.squeeze(-1).clamp(0, self.vocab_size - 1)] * (
                (codes.squeeze(-1) >= 0) & (codes.squeeze(-1) < self.vocab_size)
            )
        flat = codes.reshape(-1, self.depth)
        match = (flat[:, None, :] == self.codes[None, 1:, :]).all(dim=-1)  # [M, num_items]
        found = match.any(dim=1)
        items = torch.where(found, match.float().argmax(dim=1) + 1, torch.zeros_like(found, dtype=torch.long))
        return items.reshape(codes.shape[:-1])

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``item_tokens.json`` into ``directory``."""
        path = Path(directory) / _FILE
        path.write_text(
            json.dumps(
                {
                    "bos_token_id": self.bos_token_id,
                    "pad_token_id": self.pad_token_id,
                    "vocab_size": self.vocab_size,
                    "codes": self.codes[1:].tolist(),
                }
            )
        )
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ItemTokenizer:
        """Read what :meth:`save` wrote, with a clear error for a missing or malformed file."""
        path = Path(directory) / _FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no item token table (was the model saved with save_pretrained?)"
            )
        try:
            data = json.loads(path.read_text())
            codes: Sequence[Sequence[int]] = data["codes"]
            table = torch.tensor([[0] * len(codes[0]), *codes], dtype=torch.long)
            return cls(table, int(data["bos_token_id"]), int(data["pad_token_id"]), int(data["vocab_size"]))
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: malformed item token table ({exc})") from exc
