"""TTT4Rec: sequential recommendation with test-time-training layers (Yang, Wang, Ge 2024).

Architecture, as in ``ZhaoqiZachYang/TTT4Rec`` (``../shared/research/papers.md`` 2A): item embedding ->
dropout -> LayerNorm -> ``num_blocks`` blocks of ``x + TTT(RMSNorm(x))`` then ``x + SwiGLU(RMSNorm(x))`` ->
final RMSNorm; scores are dot products with the tied item embeddings. The TTT layer (``ttt.py``) is TTT-MLP
by default (the paper's main table) or TTT-Linear. There is no position embedding: the only position signal
is the TTT layer's RoPE, with positions modulo the inner mini-batch size. Initialisation: N(0, 0.02) for
embeddings and linear weights (RecBole / ttt-lm), ones/zeros for the norms.

Left padding: our histories are left-padded with 0, while TTT mini-batches must start at each row's first
real item (otherwise both the RoPE positions and the points where the fast weights are carried over would
shift with the amount of padding, and so would the outputs). :meth:`TTT4Rec.encode` therefore rotates every
row so its real items come first, runs the blocks over the right-padded rows (the TTT layer is causal, and
padding tokens get a zero inner learning rate, so trailing padding changes nothing), and rotates back, as
GRU4Rec does. Outputs at real positions are independent of the amount of padding, padding positions are 0.
Histories must be padded on the left only (no zeros between real items), per the project convention.

Streaming on the device: :meth:`TTT4Rec.prefill` encodes a history once and returns a :class:`TTT4RecState`;
:meth:`TTT4Rec.step` appends one interaction per row without re-encoding the history; the hidden state it
returns is scored with :meth:`TTT4Rec.score_hidden`. Norms and the SwiGLU act per position, so the only state
is each TTT layer's :class:`~lsc4rec.models.srm.ttt.TTTState`; a step costs the same at any history length.

Opacus: the TTT layer's fast-weight parameters are used directly (not through standard modules), so Opacus'
per-layer hooks do not cover them; DP training of TTT4Rec is not supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsc4rec.models.srm.base import SequentialRecommender, padding_rotations, validate_common_args
from lsc4rec.models.srm.ttt import TTTMLP, TTTLayer, TTTLinear, TTTState

__all__ = ["TTT_LAYERS", "TTT4Rec", "TTT4RecBlock", "TTT4RecState", "TTTOptions"]

#: Inner-model choices of ``ttt.layer``.
TTT_LAYERS: dict[str, type[TTTLayer]] = {"linear": TTTLinear, "mlp": TTTMLP}
# ttt-lm's RMSNorm epsilon (TTTConfig.rms_norm_eps).
_RMS_EPS = 1e-6


@dataclass(frozen=True)
class TTTOptions:
    """The ``ttt`` settings of TTT4Rec (``model.ttt`` in ``conf/model/ttt4rec.yaml``), checked on creation.

    ``layer``: the inner model, mlp (TTT-MLP) or linear (TTT-Linear); ``mini_batch_size``: the inner
    mini-batch b (gradients within one are taken at the weights it starts from); ``base_lr``: base of the
    inner learning rate (token j's rate is base_lr / head width times a learned gate); ``rope_theta``: RoPE
    base on queries and keys.
    """

    layer: str = "mlp"
    mini_batch_size: int = 8
    base_lr: float = 1.0
    rope_theta: float = 1000.0

    def __post_init__(self) -> None:
        if self.layer not in TTT_LAYERS:
            raise ValueError(f"ttt.layer must be one of {sorted(TTT_LAYERS)}, got {self.layer!r}")
        if self.mini_batch_size < 1:
            raise ValueError(f"ttt.mini_batch_size must be >= 1, got {self.mini_batch_size}")
        if not self.base_lr >= 0.0:
            raise ValueError(f"ttt.base_lr must be >= 0, got {self.base_lr}")
        if not self.rope_theta > 0.0:
            raise ValueError(f"ttt.rope_theta must be > 0, got {self.rope_theta}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> TTTOptions:
        """Defaults overridden by ``values``; ``ValueError`` for an unknown key or an invalid value."""
        values = dict(values or {})
        known = {"layer", "mini_batch_size", "base_lr", "rope_theta"}
        unknown = sorted(str(k) for k in values if k not in known)
        if unknown:
            raise ValueError(f"unknown ttt option(s) {unknown}; accepted: {sorted(known)}")
        return cls(
            layer=str(values.get("layer", cls.layer)),
            mini_batch_size=int(values.get("mini_batch_size", cls.mini_batch_size)),
            base_lr=float(values.get("base_lr", cls.base_lr)),
            rope_theta=float(values.get("rope_theta", cls.rope_theta)),
        )


@dataclass
class TTT4RecState:
    """Streaming state of a batch of users: one :class:`TTTState` per block, and ``length [B]`` items seen."""

    layers: list[TTTState]
    length: Tensor


class SwiGLU(nn.Module):
    """The position-wise SwiGLU feed-forward network of ttt-lm: ``down(silu(gate(x)) * up(x))``, no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Transform every position of ``x [..., d]`` independently."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TTT4RecBlock(nn.Module):
    """``x + TTT(RMSNorm(x))``, then ``x + SwiGLU(RMSNorm(x))`` (ttt-lm's Transformer-backbone block)."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, options: TTTOptions) -> None:
        super().__init__()
        self.seq_norm = nn.RMSNorm(hidden_size, eps=_RMS_EPS)
        self.ttt = TTT_LAYERS[options.layer](
            hidden_size,
            num_heads,
            mini_batch_size=options.mini_batch_size,
            base_lr=options.base_lr,
            rope_theta=options.rope_theta,
        )
        self.ffn_norm = nn.RMSNorm(hidden_size, eps=_RMS_EPS)
        self.ffn = SwiGLU(hidden_size, intermediate_size)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """Apply the block to a right-padded ``x [B, L, d]`` whose real tokens ``valid [B, L]`` marks."""
        x = x + self.ttt(self.seq_norm(x), valid)
        return x + self.ffn(self.ffn_norm(x))

    def forward_with_state(self, x: Tensor, valid: Tensor) -> tuple[Tensor, TTTState]:
        """:meth:`forward`, plus the TTT layer's state after each row's last real token."""
        mixed, state = self.ttt.forward_with_state(self.seq_norm(x), valid)
        x = x + mixed
        return x + self.ffn(self.ffn_norm(x)), state

    def step(self, state: TTTState, x: Tensor) -> tuple[TTTState, Tensor]:
        """One streamed position ``x [B, d]``: ``(new TTT state, block output [B, d])``."""
        state, mixed = self.ttt.step(state, self.seq_norm(x))
        x = x + mixed
        return state, x + self.ffn(self.ffn_norm(x))


class TTT4Rec(SequentialRecommender):
    """TTT4Rec (Yang et al. 2024) with tied input/output item embeddings and streaming device updates.

    Defaults are the paper's: ``hidden_size=64``, ``num_blocks=1``, ``num_heads=4`` (head size 16),
    ``intermediate_size=256`` (SwiGLU), ``dropout=0.2`` (embedding dropout) and ``ttt`` =
    ``{layer: mlp, mini_batch_size: 8, base_lr: 1.0, rope_theta: 1000}``. ``max_len`` is accepted because
    the training code passes the history length to position-aware models; TTT4Rec has no position table and
    encodes histories of any length.
    """

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        num_blocks: int = 1,
        num_heads: int = 4,
        intermediate_size: int = 256,
        dropout: float = 0.2,
        max_len: int = 50,
        ttt: TTTOptions | Mapping[str, Any] | None = None,
    ) -> None:
        validate_common_args(num_items, hidden_size, dropout)
        for name, value in (
            ("num_blocks", num_blocks),
            ("num_heads", num_heads),
            ("intermediate_size", intermediate_size),
            ("max_len", max_len),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if int(hidden_size) % int(num_heads) != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        options = ttt if isinstance(ttt, TTTOptions) else TTTOptions.from_mapping(ttt)
        super().__init__(num_items, hidden_size)
        self.max_len = int(max_len)
        self.ttt_options = options
        self.embedding_dropout = nn.Dropout(dropout)
        # RecBole's LayerNorm epsilon, as TTT4Rec's code uses after the embedding dropout.
        self.embedding_norm = nn.LayerNorm(self.hidden_size, eps=1e-12)
        self.blocks = nn.ModuleList(
            TTT4RecBlock(self.hidden_size, int(num_heads), int(intermediate_size), options)
            for _ in range(int(num_blocks))
        )
        self.final_norm = nn.RMSNorm(self.hidden_size, eps=_RMS_EPS)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
                with torch.no_grad():
                    module.weight[0].zero_()

    # ------------------------------------------------------------------ full-sequence encoding
    def _embed(self, items: Tensor) -> Tensor:
        """Item ids ``[...]`` -> block inputs ``[..., d]``: embedding, dropout, LayerNorm."""
        return self.embedding_norm(self.embedding_dropout(self.embed_items(items)))

    @staticmethod
    def _rotations(history: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(is_item, to_right, to_left)``: gathers moving each row's padding to its end and back."""
        return padding_rotations(history)

    def encode(self, history: Tensor) -> Tensor:
        """Hidden state ``[B, L, hidden_size]`` after each position of ``history [B, L]``, 0 at padding."""
        is_item, to_right, to_left = self._rotations(history)
        right_padded = torch.gather(history, 1, to_right)
        valid = right_padded != 0
        x = self._embed(right_padded)
        for block in self.blocks:
            x = block(x, valid)
        x = self.final_norm(x)
        x = torch.gather(x, 1, to_left.unsqueeze(-1).expand(-1, -1, x.size(-1)))
        return x * is_item.unsqueeze(-1).to(x.dtype)

    # ------------------------------------------------------------------ streaming
    @property
    def supports_streaming(self) -> bool:
        """True: TTT4Rec implements :meth:`prefill`, :meth:`step` and :meth:`score_hidden`."""
        return True

    def init_state(self, batch_size: int = 1) -> TTT4RecState:
        """The streaming state of ``batch_size`` users with no history yet."""
        layers = [block.ttt.init_state(batch_size) for block in self.blocks]
        return TTT4RecState(layers=layers, length=torch.zeros_like(layers[0].count))

    def prefill(self, history: Tensor) -> tuple[TTT4RecState, Tensor]:
        """Encode ``history [B, L]`` (left-padded) once: ``(streaming state, hidden after the last item)``.

        The hidden state is ``[B, d]``; rows without items get the initial state and a zero hidden state.
        """
        _, to_right, _ = self._rotations(history)
        right_padded = torch.gather(history, 1, to_right)
        valid = right_padded != 0
        x = self._embed(right_padded)
        layers = []
        for block in self.blocks:
            x, state = block.forward_with_state(x, valid)
            layers.append(state)
        length = valid.sum(dim=1)
        rows = torch.arange(history.size(0), device=history.device)
        last = self.final_norm(x[rows, (length - 1).clamp_min(0)])
        last = last * (length > 0).unsqueeze(-1).to(last.dtype)
        return TTT4RecState(layers=layers, length=length), last

    def step(self, state: TTT4RecState, item_ids: Tensor) -> tuple[TTT4RecState, Tensor]:
        """Append one interaction per user, ``item_ids [B]`` (ids 1..num_items): ``(state, hidden [B, d])``.

        ``hidden`` equals ``encode(history + [item])[:, -1]``; the history is not re-encoded (each TTT layer
        does one inner gradient step on its fast weights). ``state`` is left unchanged, so a step can be
        retried or discarded. Use eval mode (no dropout) and ``torch.no_grad()`` for serving.
        """
        if item_ids.dim() != 1 or item_ids.size(0) != state.length.size(0):
            raise ValueError(
                f"item_ids must be [B] with B = {state.length.size(0)} (the state's batch), "
                f"got {tuple(item_ids.shape)}"
            )
        if bool(((item_ids < 1) | (item_ids > self.num_items)).any()):
            raise ValueError(f"streamed item ids must be in 1..{self.num_items}, got {item_ids.tolist()}")
        x = self._embed(item_ids)
        layers = []
        for block, layer_state in zip(self.blocks, state.layers, strict=True):
            layer_state, x = block.step(layer_state, x)
            layers.append(layer_state)
        return TTT4RecState(layers=layers, length=state.length + 1), self.final_norm(x)
