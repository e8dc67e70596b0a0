"""DP-SGD per-example gradients that touch only the item rows each example reads (``grad_sample_mode=rows``).

An SRM's item table is most of its parameters (12,102 x d on Beauty), yet one user's loss reads a few dozen of
its rows: the user's history, its targets and the loss's negatives. Opacus' hooks and the whole-model
``torch.func`` path both materialise every example's gradient for the **whole** table (``[B, items, d]``,
400 MB per batch of 128 at d = 64), which is what made local DP-SGD rounds minutes long. Here every example
gets its own small table: the distinct item ids it reads (always with the padding id 0 first), gathered from
the real table, and its ids renumbered into it. ``torch.func`` then gives each example's gradient w.r.t. its
own rows and the rest of the model; since those rows are distinct, the norm of the example's table gradient
is exactly the norm of its row gradients, so clipping is exact. The clipped gradients are scattered back
into one dense ``[items, d]`` sum, Gaussian noise of std ``noise_multiplier x clipping_norm`` is added to
**every** coordinate of every trained parameter (the rows nobody read included) and the sum is divided by
the expected batch size: the same mechanism, and so the same accounting, as Opacus' ``DPOptimizer``.

Works for any loss whose item-table reads are module calls on item ids (``sampled_softmax``, ``bce``; the
full softmax reads every row) and any SRM ``torch.func`` can batch (SASRec, DIN, TTT4Rec, GRU4Rec). With the
text part (``model.item_text``: item vector = id row + ``P`` · text vector) each example also gets its own
rows of the frozen text vectors, so ``P``, one matrix every item shares, is trained densely like the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from lsc4rec.models.srm.base import ITEM_TABLE_KEY

#: The text part's buffers as the wrapper names them: the frozen text vectors and the trained-items mask,
#: both indexed by item id, so renumbered per example like the item table.
TEXT_VECTORS_KEY = "model.item_text.vectors"
TEXT_TRAINED_KEY = "model.item_text.trained"
#: SOLID's semantic token of every item (indexed by item id): renumbered per example like the item table.
SEMANTIC_TOKENS_KEY = "model.semantic_tokens"

__all__ = ["ClippedSum", "RowGatherStep", "local_item_tables"]


def local_item_tables(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's distinct item ids and every id renumbered into them.

    ``ids [B, K]`` (each row must hold the padding id 0, so that local id 0 is padding again). Returns
    ``(distinct [B, W], local [B, K])``: ``distinct[b]`` holds row b's distinct ids in ascending order, padded
    with 0 at unused slots (never referenced), W the most distinct ids of any row, and
    ``distinct[b, local[b, k]] == ids[b, k]``. Equal ids stay equal, so accidental-hit masks of the losses
    still see them.
    """
    ordered, order = ids.sort(dim=1)
    is_new = torch.ones_like(ordered, dtype=torch.bool)
    is_new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    rank = is_new.long().cumsum(dim=1) - 1
    local = torch.empty_like(ids).scatter_(1, order, rank)
    distinct = torch.zeros_like(ids).scatter_(1, rank, ordered)
    # Only as wide as the row with the most distinct ids: a row reading the same items many times (the
    # cloud's lists of neighbouring positions overlap) then costs its distinct rows, not its reads.
    return distinct[:, : int(rank.max()) + 1], local


def _ids_read(inputs: Tensor, targets: Tensor, negatives: Tensor | None) -> tuple[Tensor, int, int]:
    """The item ids each row's loss reads, ``[B, K]`` (padding first), and where targets, negatives start."""
    rows = inputs.size(0)
    parts = [inputs.new_zeros(rows, 1), inputs, targets]
    if negatives is not None:
        parts.append(negatives.reshape(rows, -1) if negatives.dim() == 3 else negatives.expand(rows, -1))
    return torch.cat(parts, dim=1), 1 + inputs.size(1), 1 + 2 * inputs.size(1)


@dataclass
class ClippedSum:
    """One batch's per-example-clipped gradient sum: ``{parameter name: tensor}`` and the clipping record."""

    sums: dict[str, Tensor]
    norms: Tensor


class RowGatherStep:
    """Per-example gradients of ``wrapper`` (a module whose forward gives per-row losses ``[B]``), clipped.

    ``names``: the trained parameters as the wrapper names them; the item table (``model.`` +
    ``ITEM_TABLE_KEY``) among them is handled row by row, the rest densely.
    """

    def __init__(self, wrapper: torch.nn.Module, names: list[str]) -> None:
        self.wrapper = wrapper
        self.table_name = f"model.{ITEM_TABLE_KEY}"
        self.dense_names = [n for n in names if n != self.table_name]
        self.train_table = self.table_name in names

    def clipped_sum(
        self, inputs: Tensor, targets: Tensor, negatives: Tensor | None, clipping_norm: float
    ) -> ClippedSum:
        """Σ_b clip(g_b) for the batch, with per-example norms before clipping (exact, see module doc)."""
        named = dict(self.wrapper.named_parameters())
        table = named[self.table_name]
        ids, target_at, negative_at = _ids_read(inputs, targets, negatives)
        distinct, local = local_item_tables(ids)
        width = inputs.size(1)
        local_inputs = local[:, 1:target_at]
        local_targets = local[:, target_at : target_at + width]  # padding targets stay 0
        local_negatives = None
        if negatives is not None:
            local_negatives = local[:, negative_at:]
            if negatives.dim() == 3:
                local_negatives = local_negatives.reshape(negatives.shape)
        rows = table.detach()[distinct]  # [B, K, d]: each example's own table
        dense = {n: named[n].detach() for n in self.dense_names}
        frozen = {n: p.detach() for n, p in named.items() if n not in dense and n != self.table_name}
        buffers = dict(self.wrapper.named_buffers())
        # Buffers indexed by item id, gathered per example: each example's rows of the text part's frozen
        # vectors and of SOLID's semantic tokens.
        own_buffers: dict[str, Tensor] = {}
        own_text = _own_text_rows(buffers, distinct)
        if own_text is not None:
            own_buffers[TEXT_VECTORS_KEY] = own_text
            # Every item of an example's own table is trained (checked there): the mask needs no batching.
            buffers[TEXT_TRAINED_KEY] = torch.ones(distinct.size(1), dtype=torch.bool)
        if SEMANTIC_TOKENS_KEY in buffers:
            own_buffers[SEMANTIC_TOKENS_KEY] = buffers[SEMANTIC_TOKENS_KEY][distinct]
        wrapper, table_name = self.wrapper, self.table_name

        def example_loss(
            params, own_rows: Tensor, own: dict[str, Tensor], x: Tensor, y: Tensor, neg: Tensor | None
        ):
            weights = {**frozen, **params, **buffers, table_name: own_rows, **own}
            batched_neg = None if neg is None else neg.unsqueeze(0) if neg.dim() == 2 else neg
            return functional_call(wrapper, weights, (x.unsqueeze(0), y.unsqueeze(0), batched_neg)).squeeze(0)

        argnums = (0, 1) if self.train_table else 0
        compute = vmap(
            grad(example_loss, argnums=argnums),
            in_dims=(None, 0, 0, 0, 0, None if local_negatives is None else 0),
            randomness="different",
        )
        grads = compute(dense, rows, own_buffers, local_inputs, local_targets, local_negatives)
        dense_grads, row_grads = grads if self.train_table else (grads, None)
        batch = inputs.size(0)
        squares = torch.zeros(batch)
        for g in dense_grads.values():
            squares += g.reshape(batch, -1).pow(2).sum(dim=1)
        if row_grads is not None:
            squares += row_grads.reshape(batch, -1).pow(2).sum(dim=1)
        norms = squares.sqrt()
        # Opacus' DPOptimizer factor, so both engines clip identically.
        factor = (clipping_norm / (norms + 1e-6)).clamp(max=1.0)
        sums = {n: torch.einsum("b,b...->...", factor, g) for n, g in dense_grads.items()}
        if row_grads is not None:
            table_sum = torch.zeros_like(table)
            scaled = (row_grads * factor.view(-1, 1, 1)).reshape(-1, table.size(1))
            table_sum.index_add_(0, distinct.reshape(-1), scaled)
            sums[self.table_name] = table_sum
        return ClippedSum(sums, norms)


def _own_text_rows(buffers: dict[str, Tensor], distinct: Tensor) -> Tensor | None:
    """Each example's rows of the text part's frozen vectors, ``[B, K, D]`` (None: no text part).

    The losses leave items no training sequence holds out of their softmax through a per-item mask; a mask
    renumbered per example would put a data-dependent branch inside ``vmap``, so this engine refuses a model
    with such items (federated nodes treat every item as trained).
    """
    vectors = buffers.get(TEXT_VECTORS_KEY)
    if vectors is None:
        return None
    trained = buffers.get(TEXT_TRAINED_KEY)
    if trained is not None and not bool(trained.all()):
        raise ValueError(
            f"privacy.grad_sample_mode=rows: {int((~trained).sum())} items are marked untrained in the text "
            "part (set_trained_items); use grad_sample_mode=functorch"
        )
    return vectors[distinct]
