"""MergeNet's parameter adapter: knowledge transfer layers between a target matrix and a source's factors.

The source parameter matrix ``S [p, q]`` enters only through low-rank factors ``U [p, r]``, ``V [q, r]``
(``S ≈ U Vᵀ``: a truncated SVD, or learned LoRA factors), so the adapter's cost grows with the rank, not with
the source's size. Each knowledge transfer layer (papers.md §4.2) lets the target's rows (``m`` tokens of
width ``n``) and columns (``n`` tokens of width ``m``) attend to the source's factor tokens (the ``r`` columns
of ``U`` and of ``V``), averages the four cross-attentions (rows/columns × U/V), then applies a spectrally
normalised feed-forward part; residuals and LayerNorm around both. Source and target shapes may differ.

Choices where the paper is silent, written down here: the adapter works on RMS-normalised copies of the
matrices and returns ``target + max_change · scale · tanh(out(h))`` with ``out`` initialised to zero, so at
the start it returns the target unchanged and learns a correction of at most ``max_change`` times the
target's RMS per entry. The bound matters: the adapter learns from the target's own (tiny) step, but its Adam
step is scale-free, and an unbounded correction rewrote 20-30% of an SRM item table per transfer and diverged
on Beauty. (The released code overwrites the target with a LayerNorm output, which rescales it arbitrarily at
the first transfer.) The released code's attention between full matrices is replaced by attention to factor
tokens, the "low-rank re-encoding" the paper describes.

Row-aligned pairs (``aligned``: the LLM's item-token rows and the SRM's item table index the same items) get
a row-wise path instead: item ``i``'s target row attends to item ``i``'s own source components. The generic
path can only pass item-specific knowledge through the column attentions' projections, which squeeze the
whole catalogue through ``attention_dim`` numbers (and hold most of the adapter's parameters).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["KnowledgeTransferLayer", "ParameterAdapter", "low_rank_factors"]


def low_rank_factors(matrix: Tensor, rank: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(U·√Σ, V·√Σ)`` of the rank-``rank`` truncated SVD of ``matrix [p, q]`` (so ``U Vᵀ ≈ matrix``)."""
    if matrix.ndim != 2:
        raise ValueError(f"a source parameter must be a matrix, got shape {tuple(matrix.shape)}")
    rank = int(rank)
    if not 1 <= rank <= min(matrix.shape):
        raise ValueError(
            f"mergenet.rank must be in 1..{min(matrix.shape)} for a {tuple(matrix.shape)} matrix"
        )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    u, s, v = torch.svd_lowrank(matrix.detach().float(), q=rank, niter=4)
    torch.random.set_rng_state(generator_state)
    root = s.sqrt()
    return u * root, v * root


class _AttentionProjections(nn.Module):
    """Query/key/value/output projections and attention dropout shared by the attentions below."""

    def __init__(self, query_dim: int, key_dim: int, attention_dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if attention_dim % heads != 0:
            raise ValueError(f"mergenet.attention_dim ({attention_dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.query = nn.Linear(query_dim, attention_dim)
        self.key = nn.Linear(key_dim, attention_dim)
        self.value = nn.Linear(key_dim, attention_dim)
        self.out = nn.Linear(attention_dim, query_dim)
        self.dropout = nn.Dropout(dropout)


class _CrossAttention(_AttentionProjections):
    """Multi-head attention of ``queries [M, dq]`` over ``keys [R, dk]``; output ``[M, dq]``."""

    def forward(self, queries: Tensor, keys: Tensor) -> Tensor:
        """Attend every query to every key."""
        m, r, h = queries.shape[0], keys.shape[0], self.heads
        q = self.query(queries).view(m, h, -1).transpose(0, 1)  # [h, M, a]
        k = self.key(keys).view(r, h, -1).transpose(0, 1)  # [h, R, a]
        v = self.value(keys).view(r, h, -1).transpose(0, 1)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        mixed = (self.dropout(weights) @ v).transpose(0, 1).reshape(m, -1)
        return self.out(mixed)


class _RowComponentAttention(_AttentionProjections):
    """Target row ``i`` attends to the ``r`` rank-1 components ``u[i, k] · v[:, k]`` of source row ``i``.

    For row-aligned matrices (both index the same items). A component's key/value projection is
    ``u[i, k] · (W v_k) + b``, so the logits and the mixed values factor through ``[m, heads, r]`` tensors
    and the ``[m, r, q]`` components are never built.
    """

    def forward(self, queries: Tensor, u: Tensor, v: Tensor) -> Tensor:
        """``queries [m, n]`` over their own rows' components of ``u [m, r]``, ``v [q, r]``; ``[m, n]``."""
        m, h, r = queries.shape[0], self.heads, u.shape[1]
        q = self.query(queries).view(m, h, -1)  # [m, h, d]
        key_dirs = (v.t() @ self.key.weight.t()).view(r, h, -1)  # W_k v_k: [r, h, d]
        value_dirs = (v.t() @ self.value.weight.t()).view(r, h, -1)
        # q · (u_ik W_k v_k + b_k) = u_ik (q · W_k v_k) + q · b_k
        logits = u.unsqueeze(1) * torch.einsum("mhd,rhd->mhr", q, key_dirs)
        logits = logits + torch.einsum("mhd,hd->mh", q, self.key.bias.view(h, -1)).unsqueeze(-1)
        weights = self.dropout(torch.softmax(logits / math.sqrt(q.shape[-1]), dim=-1))  # [m, h, r]
        # Σ_k w_k (u_ik W_v v_k + b_v) = Σ_k (w_k u_ik) W_v v_k + (Σ_k w_k) b_v
        mixed = torch.einsum("mhr,rhd->mhd", weights * u.unsqueeze(1), value_dirs)
        mixed = mixed + weights.sum(-1, keepdim=True) * self.value.bias.view(1, h, -1)
        return self.out(mixed.reshape(m, -1))


class KnowledgeTransferLayer(nn.Module):
    """One KTL: target rows/columns attend to the source factor tokens; spectral-norm FFN; residual + norm.

    ``aligned`` (source and target rows index the same things, e.g. two item tables): each target row
    attends to its own source row's rank-1 components and to the ``v`` factor tokens, and the column
    attentions (whose projections are as wide as the catalogue) are left out.
    """

    def __init__(
        self,
        target_shape: tuple[int, int],
        source_shape: tuple[int, int],
        attention_dim: int = 64,
        heads: int = 4,
        dropout: float = 0.1,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        m, n = target_shape
        p, q = source_shape
        if aligned and m != p:
            raise ValueError(f"aligned transfer needs as many source rows as target rows, got {p} and {m}")
        self.aligned = aligned
        self.row_v = _CrossAttention(n, q, attention_dim, heads, dropout)
        if aligned:
            self.row_own = _RowComponentAttention(n, q, attention_dim, heads, dropout)
        else:
            self.row_u = _CrossAttention(n, p, attention_dim, heads, dropout)
            self.col_u = _CrossAttention(m, p, attention_dim, heads, dropout)
            self.col_v = _CrossAttention(m, q, attention_dim, heads, dropout)
        self.attention_norm = nn.LayerNorm(n)
        self.ffn = nn.Sequential(
            spectral_norm(nn.Linear(n, 2 * n)),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout),
            spectral_norm(nn.Linear(2 * n, n)),
        )
        self.ffn_norm = nn.LayerNorm(n)

    def forward(self, x: Tensor, u: Tensor, v: Tensor) -> Tensor:
        """``x [m, n]`` re-encoded with the source factors ``u [p, r]``, ``v [q, r]``."""
        u_tokens, v_tokens = u.t(), v.t()  # r tokens of width p and q
        if self.aligned:
            mixed = (self.row_own(x, u, v) + self.row_v(x, v_tokens)) / 2.0
        else:
            rows = self.row_u(x, u_tokens) + self.row_v(x, v_tokens)
            columns = (self.col_u(x.t(), u_tokens) + self.col_v(x.t(), v_tokens)).t()
            mixed = (rows + columns) / 4.0
        x = self.attention_norm(x + mixed)
        return self.ffn_norm(x + self.ffn(x))


class ParameterAdapter(nn.Module):
    """Stacked KTLs mapping (target matrix, source factors) to the target's new parameters, same shape."""

    def __init__(
        self,
        target_shape: tuple[int, int],
        source_shape: tuple[int, int],
        num_layers: int = 2,
        attention_dim: int = 64,
        heads: int = 4,
        dropout: float = 0.1,
        max_change: float = 0.05,
        aligned: bool = False,
    ) -> None:
        """Adapter for a ``target_shape`` matrix fed by factors of a ``source_shape`` matrix.

        ``aligned``: source and target rows index the same things (see :class:`KnowledgeTransferLayer`).
        """
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"mergenet.num_layers must be >= 1, got {num_layers}")
        if max_change <= 0:
            raise ValueError(f"mergenet.max_change must be > 0, got {max_change}")
        self.max_change = float(max_change)
        self.target_shape = tuple(int(d) for d in target_shape)
        self.source_shape = tuple(int(d) for d in source_shape)
        self.aligned = bool(aligned)
        self.layers = nn.ModuleList(
            KnowledgeTransferLayer(
                self.target_shape, self.source_shape, attention_dim, heads, dropout, self.aligned
            )
            for _ in range(num_layers)
        )
        self.out = nn.Linear(self.target_shape[1], self.target_shape[1])
        # Zero output projection: the adapter starts as the identity on the target.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, target: Tensor, u: Tensor, v: Tensor) -> Tensor:
        """New parameters ``[m, n]`` for ``target [m, n]`` given source factors ``u [p, r]``, ``v [q, r]``."""
        if tuple(target.shape) != self.target_shape:
            raise ValueError(f"adapter built for a {self.target_shape} target, got {tuple(target.shape)}")
        if (
            u.shape[0] != self.source_shape[0]
            or v.shape[0] != self.source_shape[1]
            or u.shape[1] != v.shape[1]
        ):
            raise ValueError(
                f"source factors must be [{self.source_shape[0]}, r] and [{self.source_shape[1]}, r], "
                f"got {tuple(u.shape)} and {tuple(v.shape)}"
            )
        scale = target.detach().pow(2).mean().sqrt().clamp(min=1e-8)
        source_scale = (
            (u.detach().pow(2).mean().sqrt() * v.detach().pow(2).mean().sqrt()).sqrt().clamp(min=1e-8)
        )
        x = target / scale
        u, v = u / source_scale, v / source_scale
        for layer in self.layers:
            x = layer(x, u, v)
        return target + self.max_change * scale * torch.tanh(self.out(x))
