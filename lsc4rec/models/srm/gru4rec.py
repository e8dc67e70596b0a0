"""GRU4Rec in its sequential form (Hidasi et al., ICLR 2016; Tan et al. 2016), as in RecBole and the
TIGER/P5 baselines: item embedding -> dropout -> GRU -> dense projection back to the embedding size ->
dot product with the tied item embeddings. Trained on full sequences (one prediction per position) rather
than the session-parallel mini-batches of the original paper.

Left padding: a GRU run left to right over ``[0, 0, a, b]`` would start its real items from a hidden state
that the padding steps already moved away from zero (the GRU biases act even on zero inputs). Instead each
row is rotated so its real items come first (right padding), the GRU runs from a zero state, and the outputs
are rotated back. The rotation is a per-row ``gather`` with static shapes, so it exports to ONNX and works
under ``torch.func.vmap``; outputs at real positions are exactly independent of the amount of padding.
Padding must be on the left only (no zeros between real items), per the project convention.

Opacus: ``opacus.validators.ModuleValidator.fix`` swaps the ``nn.GRU`` for Opacus' ``DPGRU`` (same
parameter names), which is what DP training needs; everything else is batch-first.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lsc4rec.models.srm.base import SequentialRecommender, padding_rotations, validate_common_args

__all__ = ["GRU4Rec"]


class GRU4Rec(SequentialRecommender):
    """GRU-based sequential recommender with tied item embeddings.

    Defaults: ``hidden_size=64`` (item embedding size, also the GRU width unless ``gru_size`` is given),
    ``num_layers=1`` and ``dropout=0.3`` on the input embeddings (RecBole's GRU4Rec defaults:
    one layer, ``dropout_prob=0.3``).
    """

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.3,
        gru_size: int | None = None,
    ) -> None:
        validate_common_args(num_items, hidden_size, dropout)
        if int(num_layers) < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        super().__init__(num_items, hidden_size)
        self.gru_size = int(gru_size) if gru_size is not None else self.hidden_size
        self.embedding_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(self.hidden_size, self.gru_size, num_layers=int(num_layers), batch_first=True)
        self.dense = nn.Linear(self.gru_size, self.hidden_size)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # RecBole's GRU4Rec initialisation: xavier for the embedding table and the recurrent weights.
        nn.init.xavier_normal_(self.item_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        for name, param in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(param)
            else:
                nn.init.zeros_(param)
        nn.init.xavier_normal_(self.dense.weight)
        nn.init.zeros_(self.dense.bias)

    def encode(self, history: Tensor) -> Tensor:
        """Hidden state ``[B, L, hidden_size]`` after each position of ``history [B, L]``, 0 at padding."""
        # Rotate left by the padding count: right-padded row. Rotate back by the same amount afterwards.
        is_item, to_right, to_left = padding_rotations(history)
        right_padded = torch.gather(history, 1, to_right)
        x = self.embedding_dropout(self.embed_items(right_padded))
        out, _ = self.gru(x)  # causal: real steps see only earlier real steps and the zero initial state
        out = self.dense(out)
        index = to_left.unsqueeze(-1).expand(-1, -1, out.size(-1))
        out = torch.gather(out, 1, index)
        return out * is_item.unsqueeze(-1).to(out.dtype)
