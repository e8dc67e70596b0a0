"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Follows the paper and pmixer/SASRec.pytorch (the widely used PyTorch port): item embeddings scaled by
sqrt(d) plus learned positional embeddings, embedding dropout, ``num_blocks`` blocks of causal self-attention
and a point-wise two-layer ReLU feed-forward network (inner width = d, as in the paper), residual
connections, LayerNorm, and the output scored by a dot product with the tied item embeddings.

Deviations and choices:

* Positions are counted from the right end (most recent item = position 1, the one before = 2, ...;
  padding = position 0, a zero row). With left padding this makes the encoding of a real item independent
  of how much padding precedes it, so histories of any length <= ``max_len`` give the same outputs.
  pmixer counts from the left over histories always padded to ``max_len``; the two coincide there.
* ``norm_first=True`` (default) is pmixer's Pre-LN variant: ``x + Attn(LN(x))``, ``x + FFN(LN(x))`` and
  a final LayerNorm; ``norm_first=False`` is the paper's Post-LN ``LN(x + Attn(x))``, ``LN(x + FFN(x))``
  (pmixer keeps its final LayerNorm in both modes, so we do too).
* Attention is written with ``nn.Linear`` projections and matmul/softmax (with an output projection, as
  ``nn.MultiheadAttention`` in pmixer has) so that Opacus per-sample gradients and ONNX export both work.
  Keys that are padding are masked out; every query may always attend to itself, so rows that are
  entirely padding never produce an all-masked softmax (no NaN) while real queries, whose own key is
  real, are unaffected.
* Initialisation: normal(0, 0.02) for embeddings and linear weights, zero biases (BERT/RecBole style).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lsc4rec.models.srm.base import SequentialRecommender, validate_common_args

__all__ = ["SASRec"]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with key-padding masking, built from plain linear layers."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = nn.Dropout(dropout)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_size).transpose(1, 2)  # [B, H, L, h]

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """Attend over ``x [B, L, d]``; ``allowed [B, 1, L, L]`` is True where query i may see key j."""
        q = self._split_heads(self.query(x))
        k = self._split_heads(self.key(x))
        v = self._split_heads(self.value(x))
        logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)
        weights = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        context = torch.matmul(self.attn_dropout(weights), v)  # [B, H, L, h]
        batch, _, length, _ = context.shape
        return self.output(context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_size))


class PointWiseFeedForward(nn.Module):
    """Position-wise two-layer ReLU network (the paper's FFN; pmixer's pair of 1x1 convolutions)."""

    def __init__(self, hidden_size: int, dropout: float, intermediate_size: int | None = None) -> None:
        super().__init__()
        inner = hidden_size if intermediate_size is None else intermediate_size
        self.net = nn.Sequential(
            nn.Linear(hidden_size, inner),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(inner, hidden_size),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Transform every position of ``x [B, L, d]`` independently."""
        return self.net(x)


class SASRecBlock(nn.Module):
    """One self-attention block: attention + FFN, each with residual, dropout and LayerNorm (pre or post)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dropout: float,
        norm_first: bool,
        intermediate_size: int | None = None,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attention = CausalSelfAttention(hidden_size, num_heads, dropout)
        self.attention_norm = nn.LayerNorm(hidden_size, eps=1e-8)
        self.attention_dropout = nn.Dropout(dropout)
        self.ffn = PointWiseFeedForward(hidden_size, dropout, intermediate_size)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=1e-8)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """Apply the block to ``x [B, L, d]`` under the attention mask ``allowed [B, 1, L, L]``."""
        if self.norm_first:
            x = x + self.attention_dropout(self.attention(self.attention_norm(x), allowed))
            return x + self.ffn(self.ffn_norm(x))
        x = self.attention_norm(x + self.attention_dropout(self.attention(x, allowed)))
        return self.ffn_norm(x + self.ffn(x))


class SASRec(SequentialRecommender):
    """Self-attentive sequential recommender (Kang & McAuley 2018) with tied input/output item embeddings.

    Defaults: ``hidden_size=64``, ``num_blocks=2``, ``num_heads=1`` (the paper uses d=50, 2 blocks, 1 head;
    64 is the common power-of-two choice of RecBole and later benchmarks), ``dropout=0.2`` (paper: 0.2 on
    ML-1M, 0.5 on the sparse Amazon sets), ``max_len=50`` (paper: 200 on ML-1M, 50 elsewhere),
    ``norm_first=True`` (pmixer's Pre-LN). ``scale_embeddings=True`` multiplies item embeddings by sqrt(d)
    as pmixer does (the Transformer convention). ``intermediate_size`` is the feed-forward inner width:
    ``None`` = d, as in the paper; 4d is the Transformer convention (and eSASRec's).
    """

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        num_blocks: int = 2,
        num_heads: int = 1,
        dropout: float = 0.2,
        max_len: int = 50,
        norm_first: bool = True,
        scale_embeddings: bool = True,
        intermediate_size: int | None = None,
    ) -> None:
        validate_common_args(num_items, hidden_size, dropout)
        if int(num_blocks) < 1 or int(num_heads) < 1 or int(max_len) < 1:
            raise ValueError(
                f"num_blocks, num_heads and max_len must be >= 1, got {num_blocks}, {num_heads}, {max_len}"
            )
        if intermediate_size is not None and int(intermediate_size) < 1:
            raise ValueError(f"intermediate_size must be >= 1 or null, got {intermediate_size}")
        self.intermediate_size = None if intermediate_size is None else int(intermediate_size)
        super().__init__(num_items, hidden_size)
        self.max_len = int(max_len)
        self.norm_first = bool(norm_first)
        self.embedding_scale = math.sqrt(hidden_size) if scale_embeddings else 1.0
        # Index 0 = padding; 1 = most recent item, ..., max_len = oldest.
        self.position_embedding = nn.Embedding(self.max_len + 1, hidden_size, padding_idx=0)
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(hidden_size, int(num_heads), dropout, self.norm_first, self.intermediate_size)
            for _ in range(int(num_blocks))
        )
        self.final_norm = nn.LayerNorm(hidden_size, eps=1e-8)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
                with torch.no_grad():
                    module.weight[0].zero_()

    def encode(self, history: Tensor) -> Tensor:
        """Hidden state after each position of ``history [B, L]`` (L <= max_len): ``[B, L, hidden_size]``.

        Padding positions return zeros.
        """
        length = history.size(1)
        if not torch.jit.is_tracing() and length > self.max_len:
            raise ValueError(f"history length {length} exceeds SASRec max_len={self.max_len}")
        is_item = history != 0  # [B, L]
        # Right-aligned positions, 0 at padding so the padding row of the table is used there.
        from_end = torch.arange(length, 0, -1, device=history.device).unsqueeze(0)
        position_ids = from_end * is_item.long()
        x = self.embed_items(history) * self.embedding_scale + self.position_embedding(position_ids)
        x = self.embedding_dropout(x)
        keep = is_item.unsqueeze(-1).to(x.dtype)
        x = x * keep

        # allowed[b, 0, i, j]: key j is not in the future of query i, and is a real item or i itself.
        # Built from arange comparisons: ONNX Runtime lacks bool kernels for EyeLike/Trilu.
        steps = torch.arange(length, device=history.device)
        causal = steps.unsqueeze(1) >= steps.unsqueeze(0)
        diagonal = steps.unsqueeze(1) == steps.unsqueeze(0)
        allowed = (causal & is_item.unsqueeze(1)) | diagonal  # [B, L, L]
        allowed = allowed.unsqueeze(1)
        for block in self.blocks:
            # Zeroing padding positions (as pmixer does) keeps them inert whatever the block computes.
            x = block(x, allowed) * keep
        return self.final_norm(x) * keep
