"""The text part of a device SRM's item representation: the cloud's item knowledge in every score.

Item ``i``'s vector (history input and tied output alike) becomes ``id_row(i) + P · text(i)``: ``text(i)``
is the item's frozen text vector (MiniLM by default, ``conf/text``), ``P`` one learned projection shared by
every item, ``id_row`` the model's ordinary learned item table. This is the cloud LLM's own item
representation (:mod:`lsc4rec.models.llm.item_text_part`) put on the device, so:

* an item the device rarely or never trained on still scores by where its text puts it (``P`` is learned
  from the frequent items);
* the text vectors are public catalogue data: they are not parameters, never leave the device in an update
  and are not in the state dict (a non-persistent buffer); the device receives them once per catalogue
  version;
* only ``P`` (``D × d`` numbers) is added to the model's parameters;
* items the training data never holds (new items; :meth:`ItemTextRows.set_trained_items`) are left out of
  the training losses' softmax: as never-target negatives every step would push them below every other item,
  through their id rows and through ``P`` alike (:func:`lsc4rec.models.srm.losses.full_softmax_loss`). Their
  id rows start at zero and only an objective that names them (distillation from the cloud) moves them, so
  without one they score by their text alone.

At the start the id rows of items with text are zero and ``P`` spans the text vectors' top principal
directions, scaled to the model's own initialisation range, so every item begins as its text.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lsc4rec.models.llm.item_text_part import version_key
from lsc4rec.text.projection import principal_projection

__all__ = ["ITEM_TEXT_MODES", "ItemTextRows"]

#: Values of ``model.item_text``: no text part, or the text part with a learned projection.
ITEM_TEXT_MODES: tuple[str, ...] = ("none", "projected")


class ItemTextRows(nn.Module):
    """``P · text(i)`` for item ids: the additive text part of an SRM's item vectors.

    ``vectors [num_items + 1, D]`` (row 0, padding, and items without text are zero rows, so they get no text
    part); ``hidden_size`` is the SRM's width ``d``; ``scale`` the per-coordinate std the projected rows start
    at (0 skips the principal-direction start, for weights about to be loaded).
    """

    def __init__(self, vectors: Tensor, hidden_size: int, scale: float = 0.02) -> None:
        super().__init__()
        if vectors.ndim != 2 or vectors.shape[0] < 2:
            raise ValueError(f"item text vectors must be [num_items + 1, D], got {tuple(vectors.shape)}")
        if not bool(torch.isfinite(vectors).all()):
            raise ValueError("item text vectors hold non-finite values")
        # Not persistent: public catalogue data, delivered to the device once, never part of an update.
        self.register_buffer("vectors", vectors.detach().float().clone(), persistent=False)
        with torch.no_grad():
            self.vectors[0].zero_()
        self.projection = nn.Linear(vectors.shape[1], int(hidden_size), bias=False)
        if scale > 0:
            with torch.no_grad():
                self.projection.weight.copy_(principal_projection(self.vectors[1:], int(hidden_size), scale))
        else:
            nn.init.zeros_(self.projection.weight)
        # Items the training data holds ([num_items + 1]); every item until set_trained_items.
        self.register_buffer("trained", torch.ones(self.vectors.shape[0], dtype=torch.bool), persistent=False)
        self._cached: tuple[tuple, Tensor] | None = None

    def set_trained_items(self, items: Tensor) -> int:
        """Mark ``items`` (ids the training data holds) as trained; the others are left out of the training
        losses' softmax. Returns how many items are not trained.

        Not part of the state dict: whoever trains the model knows its training data and sets it (a model
        loaded elsewhere treats every item as trained).
        """
        items = torch.as_tensor(items, dtype=torch.long).flatten()
        if items.numel() and (int(items.min()) < 1 or int(items.max()) >= self.num_rows):
            raise ValueError(
                f"item ids must be in [1, {self.num_rows - 1}], got {int(items.min())}..{int(items.max())}"
            )
        trained = torch.zeros_like(self.trained)
        trained[items.to(trained.device)] = True
        trained[0] = True  # padding is no item
        self.trained.copy_(trained)
        return int((~trained).sum())

    def unseen(self) -> Tensor | None:
        """``[num_items + 1]`` True for the items no training sequence holds (None: every item is trained)."""
        return None if bool(self.trained.all()) else ~self.trained

    @property
    def text_dim(self) -> int:
        """Length ``D`` of the text vectors."""
        return int(self.vectors.shape[1])

    @property
    def num_rows(self) -> int:
        """Rows of the table: ``num_items + 1``."""
        return int(self.vectors.shape[0])

    def forward(self, ids: Tensor) -> Tensor:
        """The text part ``[..., d]`` of the items ``ids [...]`` (zero for padding and items without text)."""
        if not _tracing() and ids.numel() >= self.num_rows:
            # More ids than items (candidate lists at every position): project the catalogue once and gather,
            # instead of projecting a D-wide vector per occurrence. Not while a graph is traced (ONNX export):
            # the branch would fix the graph to one side of a size that must stay dynamic. An embedding
            # lookup, not table[ids]: indexing's backward accumulates repeated ids in an order that varies
            # between runs with several CPU threads, the embedding's in a fixed one (same values forward).
            return nn.functional.embedding(ids, self.table())
        return self.projection(self.vectors[ids])

    def table(self) -> Tensor:
        """The text part of every row, ``[num_items + 1, d]``.

        Without gradients (evaluation, serving) it is computed once and reused until ``P`` or the vectors
        change (an optimiser step, a loaded state, a move to another device); never while a graph is being
        traced (ONNX export), whose tensors have no storage to identify.
        """
        if torch.is_grad_enabled() or _tracing():
            return self.projection(self.vectors)
        key = (version_key(self.projection.weight), version_key(self.vectors))
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self.projection(self.vectors))
        return self._cached[1]


def _tracing() -> bool:
    """Whether a graph is being traced (torch.export / ONNX export, torch.compile)."""
    return bool(torch.compiler.is_compiling() or torch.compiler.is_exporting())
