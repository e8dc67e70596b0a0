"""The text part of the cloud LLM's item tokens: projected item-text vectors added to the learned id rows.

Item ``i``'s token embedding (input and tied output) is ``id_row(i) + P · text(i)``: ``text`` holds the frozen
vectors of a pretrained text encoder, ``P`` is one learned projection shared by every item. Items the model
rarely sees still sit where their text puts them (the projection is learned from the frequent ones), and an
item without text is its id row alone. At initialisation the id rows of items are zero and ``P`` spans the
text vectors' principal directions, so every item token starts as its text.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lsc4rec.text.projection import principal_projection

__all__ = ["ItemTextPart", "version_key"]


class ItemTextPart(nn.Module):
    """``rows(vocab_size)`` gives the additive ``[vocab, d]`` table: ``P · text(i)`` at item i's token row."""

    def __init__(
        self, text_vectors: Tensor, item_token_ids: Tensor, hidden_size: int, scale: float = 0.02
    ) -> None:
        """``text_vectors [num_items + 1, D]`` (row 0 unused); ``item_token_ids [num_items]``: item i's token.

        ``P`` starts as the top ``hidden_size`` principal directions of the text vectors, scaled so projected
        rows have per-coordinate std ``scale`` (the initializer range of the id rows); ``scale=0`` skips that
        start (the weights are about to be loaded).
        """
        super().__init__()
        if text_vectors.ndim != 2 or text_vectors.shape[0] != item_token_ids.numel() + 1:
            raise ValueError(
                f"text vectors must be [num_items + 1, D] = [{item_token_ids.numel() + 1}, D], "
                f"got {tuple(text_vectors.shape)}"
            )
        self.register_buffer("text_vectors", text_vectors[1:].float().clone())
        self.register_buffer("item_token_ids", item_token_ids.long().clone())
        self.projection = nn.Linear(text_vectors.shape[1], hidden_size, bias=False)
        # (what the table was computed from, the table): see rows().
        self._cached: tuple[tuple, Tensor] | None = None
        if scale > 0:
            with torch.no_grad():
                self.projection.weight.copy_(principal_projection(self.text_vectors, hidden_size, scale))

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> ItemTextPart:
        """The part a saved ``state_dict`` describes (no fresh principal-direction start computed)."""
        vectors = state["text_vectors"]
        part = cls(
            torch.cat([vectors.new_zeros(1, vectors.shape[1]), vectors]),
            state["item_token_ids"],
            int(state["projection.weight"].shape[0]),
            scale=0.0,
        )
        part.load_state_dict(state)
        return part

    @property
    def text_dim(self) -> int:
        """Length of the text vectors."""
        return int(self.text_vectors.shape[1])

    def rows(self, vocab_size: int) -> Tensor:
        """The additive embedding table ``[vocab_size, d]`` (zero outside the item tokens).

        Without gradients (serving, evaluation) the table is computed once and reused until the projection
        or the text vectors change (an optimiser step, a loaded state, a move to another device): projecting
        every item's text costs more than the whole forward pass of a short history.
        """
        if torch.is_grad_enabled():
            return self._table(vocab_size)
        key = (vocab_size, *(version_key(t) for t in (self.projection.weight, self.text_vectors)))
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self._table(vocab_size))
        return self._cached[1]

    def _table(self, vocab_size: int) -> Tensor:
        projected = self.projection(self.text_vectors)
        table = projected.new_zeros(vocab_size, projected.shape[1])
        return table.index_copy(0, self.item_token_ids, projected)


def version_key(tensor: Tensor) -> tuple[int, int, str]:
    """Identifies a tensor's current contents: its storage, in-place version counter and device.

    In-place updates (optimiser steps, ``load_state_dict``'s copies) bump ``_version``; ``.to()`` and
    re-assignment change the storage.
    """
    return (tensor.data_ptr(), tensor._version, str(tensor.device))
