"""Test-time-training (TTT) sequence layers: TTT-Linear and TTT-MLP (Sun et al., "Learning to (Learn at Test
Time): RNNs with Expressive Hidden States", 2024), the sequence-modelling layer of TTT4Rec.

Written from the equations of ``test-time-training/ttt-lm-pytorch`` (``../shared/research/papers.md`` 2C).
Per head ``h`` (head width ``f``) the hidden state is a small model ``f_W`` (the *fast weights*) whose
initial value ``W_0`` is an outer (trained) parameter. Each token ``t`` of the layer input ``x_t`` gives

* a query, key and value ``q_t, k_t, v_t`` (bias-free projections; RoPE on ``q`` and ``k`` with position
  ``t mod b``, ``b`` = inner mini-batch size);
* a self-supervised loss ``ℓ_t(W) = ½‖LN_h(g_W(k_t)) − (v_t − k_t)‖²``, i.e. the residual model
  ``f_W(x) = x + LN_h(g_W(x))`` learns to reconstruct ``v_t`` from ``k_t``; ``LN_h`` is a per-head LayerNorm
  with learned scale and shift, ``g_W(x) = xW + b`` (TTT-Linear) or ``GELU(xW1 + b1)W2 + b2`` with hidden
  width ``4f`` (TTT-MLP). The ½ makes ``∂ℓ/∂LN = LN − target``, exactly ttt-lm's gradient;
* a learning rate ``η_{ij} = c_i · lr_j`` for query position ``i`` and key position ``j ≤ i`` inside the
  mini-batch (1-based), with ``lr_j = (base_lr / f) · sigmoid(x_j·w_h + β_h)`` and
  ``c_i = max(0, 1/i + κ_i)`` (``κ`` learned, initialised to 0).

Mini-batch TTT: all gradients of a mini-batch are taken at the weights ``W_0`` it starts from, and the
weights used for the output at position ``i`` are ``W_i = W_0 − Σ_{j≤i} η_ij ∇ℓ_j(W_0)``; the output is
``o_i = q_i + LN_h(g_{W_i}(q_i))``, and the next mini-batch starts from ``W_b``. Heads are concatenated,
then post-LayerNorm and an output projection.

Three implementations of the same function:

* :meth:`TTTLayer.forward` — the **dual form** used for training and encoding. Per mini-batch the token
  gradients with respect to the *pre-activations* ``z`` of each inner linear layer are computed in closed
  form (``∇_W ℓ_j = a_jᵀ g_j``, ``∇_b ℓ_j = g_j`` for layer input ``a_j``, output gradient ``g_j``), so for
  the query ``ā_i`` entering that layer
  ``ā_i W_i + b_i = ā_i W_0 + b_0 − Σ_{j≤i} η_ij (ā_i·a_j + 1) g_j``: one masked ``[b, b]`` matrix product
  instead of materialising ``W_i`` per token. For TTT-MLP this is applied layer by layer: the hidden query
  ``ā_i = GELU(z̄_i)`` of the second layer is built from the *updated* first layer, and the keys' ``a_j, g_j``
  all come from the forward/backward pass at ``W_0``: ``g2_j = ∂ℓ/∂z2_j`` (closed-form LayerNorm + L2
  backward) and ``g1_j = (g2_j W2_0ᵀ) ⊙ GELU'(z1_j)``. The result is exact, not an approximation.
* :meth:`TTTLayer.forward_primal` — the **primal reference**: token by token, gradients by autograd at the
  mini-batch's starting weights, the weights ``W_i`` materialised. Slow; tests compare it with the dual form.
* :meth:`TTTLayer.step` — **streaming**, one token at a time from a :class:`TTTState`.

Layout: :meth:`TTTLayer.forward` takes a RIGHT-padded batch (each row's real tokens first, ``valid`` marks
them). Mini-batches then start at each row's first real token, and because the layer is causal the trailing
padding cannot change any real output; padding tokens also get ``lr = 0`` so they never enter a state.
The recommender (``ttt4rec.py``) rotates its left-padded histories into this layout.

Streaming state (:class:`TTTState`), per row and head: the fast weights at the start of the current inner
mini-batch, the running sum ``S = Σ_j lr_j ∇ℓ_j(W_0)`` over the tokens of the current mini-batch seen so far,
and their count. Since ``W_i = W_0 − c_i S_i`` this sum replaces buffering the ≤ b−1 tokens themselves: a new
token costs one inner forward/backward at ``W_0`` and one inner forward at ``W_i`` (``O(f²)`` per head,
independent of both the history length and ``b``); when the mini-batch fills, ``W_i`` becomes the new ``W_0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TTTMLP",
    "TTTLayer",
    "TTTLinear",
    "TTTState",
    "apply_rope",
    "gelu_tanh",
    "gelu_tanh_grad",
    "layer_norm_l2_grad",
    "per_head_layer_norm",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715
# The inner LayerNorm and the post-norm use ttt-lm's epsilon.
_LN_EPS = 1e-6


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU with the tanh approximation (ttt-lm's inner activation)."""
    return F.gelu(x, approximate="tanh")


def gelu_tanh_grad(x: Tensor) -> Tensor:
    """Exact derivative of :func:`gelu_tanh` at ``x``."""
    inner = _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x.pow(3))
    tanh = torch.tanh(inner)
    d_inner = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_CUBIC * x * x)
    return 0.5 * (1.0 + tanh) + 0.5 * x * (1.0 - tanh * tanh) * d_inner


def per_head_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = _LN_EPS) -> Tensor:
    """LayerNorm over the last dim of ``x [B, H, K, f]`` with per-head ``weight``/``bias [H, 1, f]``."""
    mean = x.mean(dim=-1, keepdim=True)
    centred = x - mean
    inv_std = torch.rsqrt(centred.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * (centred * inv_std) + bias


def layer_norm_l2_grad(
    z: Tensor, target: Tensor, weight: Tensor, bias: Tensor, eps: float = _LN_EPS
) -> Tensor:
    """Closed-form ``∂/∂z`` of ``½‖LN(z) − target‖²`` (LayerNorm over the last dim, per-head affine)."""
    mean = z.mean(dim=-1, keepdim=True)
    centred = z - mean
    inv_std = torch.rsqrt(centred.pow(2).mean(dim=-1, keepdim=True) + eps)
    normed = centred * inv_std
    grad_normed = (weight * normed + bias - target) * weight
    return inv_std * (
        grad_normed
        - grad_normed.mean(dim=-1, keepdim=True)
        - normed * (grad_normed * normed).mean(dim=-1, keepdim=True)
    )


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair ``(x[2k], x[2k+1])`` of the last dim by the angle with ``cos``/``sin`` ``[..., k]``.

    This pairing is what ttt-lm computes (its permute / rotate-half / un-permute sequence).
    """
    pairs = x.unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


@dataclass
class TTTState:
    """Streaming state of one TTT layer for a batch of ``B`` sequences (see the module docstring).

    ``weights``: the fast weights at the start of each row's current inner mini-batch, by name
    (``W1, b1[, W2, b2]``), shaped ``[B, H, in, out]`` / ``[B, H, 1, out]``. ``grad_sums``: the same shapes,
    ``Σ_j lr_j ∇ℓ_j(weights)`` over the tokens of the current mini-batch seen so far. ``count``: ``[B]`` long,
    how many tokens of the current mini-batch have been seen (``0 .. b-1``); it is also the RoPE position
    and the ``c_i`` index of the next token.
    """

    weights: dict[str, Tensor]
    grad_sums: dict[str, Tensor]
    count: Tensor


class TTTLayer(nn.Module):
    """A TTT layer whose inner model is a stack of linear layers with GELU between them.

    Subclasses fix the stack through ``inner_expansions`` (the hidden widths as multiples of the head
    width): ``()`` is TTT-Linear, ``(4,)`` TTT-MLP. Inner weights are named ``W1, b1, W2, b2, ...``.
    """

    inner_expansions: tuple[int, ...] = ()

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mini_batch_size: int = 8,
        base_lr: float = 1.0,
        rope_theta: float = 1000.0,
    ) -> None:
        super().__init__()
        if int(num_heads) < 1 or int(hidden_size) % int(num_heads) != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        head_size = int(hidden_size) // int(num_heads)
        if head_size % 2 != 0:
            raise ValueError(
                f"the TTT head size hidden_size / num_heads = {head_size} must be even (RoPE rotates pairs)"
            )
        if int(mini_batch_size) < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
        if not float(base_lr) >= 0.0:
            raise ValueError(f"base_lr must be >= 0, got {base_lr}")
        if not float(rope_theta) > 0.0:
            raise ValueError(f"rope_theta must be > 0, got {rope_theta}")
        self.hidden_size = int(hidden_size)
        self.num_heads = int(num_heads)
        self.head_size = head_size
        self.mini_batch_size = int(mini_batch_size)
        self.base_lr = float(base_lr)
        self.rope_theta = float(rope_theta)

        self.q_proj = nn.Linear(self.hidden_size, self.hidden_size, bias=False)
        self.k_proj = nn.Linear(self.hidden_size, self.hidden_size, bias=False)
        self.v_proj = nn.Linear(self.hidden_size, self.hidden_size, bias=False)
        self.o_proj = nn.Linear(self.hidden_size, self.hidden_size, bias=False)
        # Per-head token gate of the inner learning rate: sigmoid(x · w_h + β_h).
        self.lr_weight = nn.Parameter(torch.empty(self.num_heads, self.hidden_size))
        self.lr_bias = nn.Parameter(torch.zeros(self.num_heads))
        # c_i = 1/i + κ_i for the i-th (1-based) query of a mini-batch.
        self.register_buffer(
            "token_idx",
            1.0 / torch.arange(1, self.mini_batch_size + 1, dtype=torch.float32),
            persistent=False,
        )
        self.learnable_token_idx = nn.Parameter(torch.zeros(self.mini_batch_size))
        self.ttt_norm_weight = nn.Parameter(torch.ones(self.num_heads, 1, self.head_size))
        self.ttt_norm_bias = nn.Parameter(torch.zeros(self.num_heads, 1, self.head_size))
        self.post_norm = nn.LayerNorm(self.hidden_size, eps=_LN_EPS)
        exponents = torch.arange(0, self.head_size, 2, dtype=torch.float32) / self.head_size
        self.register_buffer("inv_freq", 1.0 / (self.rope_theta**exponents), persistent=False)

        widths = [self.head_size, *(e * self.head_size for e in self.inner_expansions), self.head_size]
        self.num_inner_layers = len(widths) - 1
        self.weight_names: list[tuple[str, str]] = []
        for index in range(self.num_inner_layers):
            w_name, b_name = f"W{index + 1}", f"b{index + 1}"
            self.register_parameter(
                w_name, nn.Parameter(torch.empty(self.num_heads, widths[index], widths[index + 1]))
            )
            self.register_parameter(b_name, nn.Parameter(torch.zeros(self.num_heads, 1, widths[index + 1])))
            self.weight_names.append((w_name, b_name))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ttt-lm's initialisation: N(0, 0.02) for projections, initial fast weights and the lr gate."""
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            nn.init.normal_(linear.weight, std=0.02)
        nn.init.normal_(self.lr_weight, std=0.02)
        nn.init.zeros_(self.lr_bias)
        nn.init.zeros_(self.learnable_token_idx)
        nn.init.ones_(self.ttt_norm_weight)
        nn.init.zeros_(self.ttt_norm_bias)
        for w_name, b_name in self.weight_names:
            nn.init.normal_(getattr(self, w_name), std=0.02)
            nn.init.zeros_(getattr(self, b_name))
        self.post_norm.reset_parameters()

    # ------------------------------------------------------------------ shared pieces
    def token_scale(self) -> Tensor:
        """``c_i = max(0, 1/i + κ_i)`` for the mini-batch positions ``i = 1..b``: ``[b]``."""
        return torch.clamp_min(self.token_idx + self.learnable_token_idx, 0.0)

    def initial_weights(self, batch_size: int) -> dict[str, Tensor]:
        """The learned initial fast weights, expanded (not copied) to ``[batch_size, H, ...]``."""
        weights = {}
        for w_name, b_name in self.weight_names:
            for name in (w_name, b_name):
                param = getattr(self, name)
                weights[name] = param.unsqueeze(0).expand(batch_size, *param.shape)
        return weights

    def _qkv(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-head queries, keys, values ``[B, H, L, f]`` of ``x [B, L, d]``, RoPE at ``positions``.

        ``positions``: ``[L]`` shared by all rows, or ``[B, L]``; already reduced modulo ``b``.
        """
        batch, length, _ = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(batch, length, self.num_heads, self.head_size).transpose(1, 2)

        angles = positions.unsqueeze(-1).to(x.dtype) * self.inv_freq.to(x.dtype)  # [(B,) L, f/2]
        if angles.dim() == 3:
            angles = angles.unsqueeze(1)  # broadcast over heads
        cos, sin = angles.cos(), angles.sin()
        query = apply_rope(heads(self.q_proj(x)), cos, sin)
        key = apply_rope(heads(self.k_proj(x)), cos, sin)
        return query, key, heads(self.v_proj(x))

    def _token_lr(self, x: Tensor) -> Tensor:
        """``lr_j = (base_lr / f) · sigmoid(x_j · w_h + β_h)`` for ``x [B, L, d]``: ``[B, H, L]``."""
        gate = torch.einsum("bld,hd->bhl", x, self.lr_weight) + self.lr_bias.view(1, -1, 1)
        return (self.base_lr / self.head_size) * torch.sigmoid(gate)

    def _inner_forward(self, weights: dict[str, Tensor], x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Run the inner stack ``g_W`` on ``x [B, H, K, f]``: (each layer's input, each pre-activation)."""
        inputs, pre = [], []
        layer_input = x
        for index, (w_name, b_name) in enumerate(self.weight_names):
            inputs.append(layer_input)
            z = layer_input @ weights[w_name] + weights[b_name]
            pre.append(z)
            if index + 1 < self.num_inner_layers:
                layer_input = gelu_tanh(z)
        return inputs, pre

    def _inner_grads(self, weights: dict[str, Tensor], pre: list[Tensor], target: Tensor) -> list[Tensor]:
        """Per-token ``∂ℓ/∂z`` for every inner layer's pre-activation ``z`` (closed-form backward)."""
        grad = layer_norm_l2_grad(pre[-1], target, self.ttt_norm_weight, self.ttt_norm_bias)
        grads = [grad]
        for index in range(self.num_inner_layers - 2, -1, -1):
            next_w = weights[self.weight_names[index + 1][0]]
            grad = (grad @ next_w.transpose(-1, -2)) * gelu_tanh_grad(pre[index])
            grads.insert(0, grad)
        return grads

    def _grad_sums(self, inputs: list[Tensor], grads: list[Tensor], lr: Tensor) -> dict[str, Tensor]:
        """``Σ_j lr_j ∇ℓ_j`` over the tokens (dim -2) of every inner weight: ``∇W = aᵀg``, ``∇b = g``."""
        sums = {}
        for (w_name, b_name), layer_input, grad in zip(self.weight_names, inputs, grads, strict=True):
            weighted = lr.unsqueeze(-1) * grad
            sums[w_name] = layer_input.transpose(-1, -2) @ weighted
            sums[b_name] = weighted.sum(dim=-2, keepdim=True)
        return sums

    def _reconstruct(self, weights: dict[str, Tensor], query: Tensor) -> Tensor:
        """``f_W(q) = q + LN_h(g_W(q))`` with per-row weights, for ``query [B, H, K, f]``."""
        _, pre = self._inner_forward(weights, query)
        return query + per_head_layer_norm(pre[-1], self.ttt_norm_weight, self.ttt_norm_bias)

    def _merge_heads(self, heads: Tensor) -> Tensor:
        """Concatenate heads ``[B, H, L, f] -> [B, L, d]``, then post-LayerNorm and output projection."""
        batch, _, length, _ = heads.shape
        merged = heads.transpose(1, 2).reshape(batch, length, self.hidden_size)
        return self.o_proj(self.post_norm(merged))

    # ------------------------------------------------------------------ dual form
    def _dual_mini_batch(
        self,
        weights: dict[str, Tensor],
        query: Tensor,
        key: Tensor,
        value: Tensor,
        lr: Tensor,
        scale: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Outputs ``[B, H, K, f]`` of one mini-batch and its ``Σ_j lr_j ∇ℓ_j(W_0)`` (module docstring)."""
        inputs, pre = self._inner_forward(weights, key)
        grads = self._inner_grads(weights, pre, value - key)
        length = query.size(-2)
        # eta[i, j] = c_i · lr_j for j <= i, 0 above the diagonal (causality inside the mini-batch).
        eta = torch.tril(scale[:length].unsqueeze(-1) * lr.unsqueeze(-2))  # [B, H, K, K]
        layer_query = query
        z = query
        for index, (w_name, b_name) in enumerate(self.weight_names):
            # ā_i W_i + b_i = ā_i W_0 + b_0 − Σ_j η_ij (ā_i · a_j + 1) g_j.
            coeff = eta * (layer_query @ inputs[index].transpose(-1, -2) + 1.0)
            z = layer_query @ weights[w_name] + weights[b_name] - coeff @ grads[index]
            if index + 1 < self.num_inner_layers:
                layer_query = gelu_tanh(z)
        out = query + per_head_layer_norm(z, self.ttt_norm_weight, self.ttt_norm_bias)
        return out, self._grad_sums(inputs, grads, lr)

    def _run_dual(self, x: Tensor, valid: Tensor | None, with_state: bool) -> tuple[Tensor, TTTState | None]:
        """The dual form over whole mini-batches; ``with_state``: also each row's final streaming state."""
        batch, length, _ = x.shape
        b = self.mini_batch_size
        steps = torch.arange(length, device=x.device)
        query, key, value = self._qkv(x, steps % b)
        lr = self._token_lr(x)
        if valid is not None:
            lr = lr * valid.unsqueeze(1).to(lr.dtype)
        # Pad to whole mini-batches; the extra tokens come after every real one and have lr = 0.
        extra = (-length) % b
        if extra:
            query, key, value = (F.pad(t, (0, 0, 0, extra)) for t in (query, key, value))
            lr = F.pad(lr, (0, extra))
        scale = self.token_scale()
        weights = self.initial_weights(batch)
        outputs, starts, sums_seen = [], [], []
        for start in range(0, length + extra, b):
            chunk = slice(start, start + b)
            out, sums = self._dual_mini_batch(
                weights, query[..., chunk, :], key[..., chunk, :], value[..., chunk, :], lr[..., chunk], scale
            )
            outputs.append(out)
            if with_state:
                starts.append(weights)
                sums_seen.append(sums)
            # W_b = W_0 − c_b Σ_j lr_j ∇ℓ_j(W_0) starts the next mini-batch.
            weights = {name: w - scale[-1] * sums[name] for name, w in weights.items()}
        heads = torch.cat(outputs, dim=-2)[..., :length, :]
        result = self._merge_heads(heads)
        if not with_state:
            return result, None
        starts.append(weights)
        sums_seen.append({name: torch.zeros_like(w) for name, w in weights.items()})
        return result, self._select_state(starts, sums_seen, valid, batch, length, x.device)

    def _select_state(
        self,
        starts: list[dict[str, Tensor]],
        sums_seen: list[dict[str, Tensor]],
        valid: Tensor | None,
        batch: int,
        length: int,
        device: torch.device,
    ) -> TTTState:
        """Each row's state after its last real token, from the per-mini-batch starts and gradient sums."""
        if valid is None:
            seen = torch.full((batch,), length, dtype=torch.long, device=device)
        else:
            seen = valid.sum(dim=1)
        chunk = seen // self.mini_batch_size  # the mini-batch the next token falls in
        rows = torch.arange(batch, device=device)
        weights, grad_sums = {}, {}
        for name in starts[0]:
            weights[name] = torch.stack([s[name] for s in starts])[chunk, rows]  # from [C+1, B, ...]
            grad_sums[name] = torch.stack([s[name] for s in sums_seen])[chunk, rows]
        return TTTState(weights=weights, grad_sums=grad_sums, count=seen % self.mini_batch_size)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """Dual-form TTT of a right-padded ``x [B, L, d]`` -> ``[B, L, d]``; ``valid [B, L]``: real tokens."""
        return self._run_dual(x, valid, with_state=False)[0]

    def forward_with_state(self, x: Tensor, valid: Tensor | None = None) -> tuple[Tensor, TTTState]:
        """:meth:`forward`, plus each row's streaming state after its last real token (for :meth:`step`).

        ``valid`` must mark a prefix of each row (right padding); ``None`` means every token is real.
        """
        out, state = self._run_dual(x, valid, with_state=True)
        assert state is not None
        return out, state

    # ------------------------------------------------------------------ primal reference
    def _autograd_token_grads(
        self, weights: dict[str, Tensor], key: Tensor, value: Tensor, create_graph: bool
    ) -> dict[str, Tensor]:
        """``∇_W ℓ(W)`` for one token per row and head, by autograd (independent of the closed form)."""
        with torch.enable_grad():
            if create_graph:
                leaves = {
                    n: w if w.requires_grad else w.detach().clone().requires_grad_()
                    for n, w in weights.items()
                }
            else:
                leaves = {n: w.detach().clone().requires_grad_() for n, w in weights.items()}
                key, value = key.detach(), value.detach()
            _, pre = self._inner_forward(leaves, key)
            normed = per_head_layer_norm(pre[-1], self.ttt_norm_weight, self.ttt_norm_bias)
            # Summing over rows and heads keeps each (row, head) gradient separate: they own their weights.
            loss = 0.5 * (normed - (value - key)).pow(2).sum()
            names = list(leaves)
            grads = torch.autograd.grad(loss, [leaves[n] for n in names], create_graph=create_graph)
        return dict(zip(names, grads, strict=True))

    def forward_primal(self, x: Tensor, valid: Tensor | None = None, create_graph: bool = False) -> Tensor:
        """Reference: the same function as :meth:`forward`, token by token in the primal form.

        Within each mini-batch, the gradient of every token is taken by autograd at the mini-batch's
        starting weights ``W_0``, accumulated as ``S_i = Σ_{j≤i} lr_j ∇ℓ_j(W_0)``, and the output of token
        ``i`` uses the materialised ``W_i = W_0 − c_i S_i``. ``create_graph=True`` keeps the graph so outer
        gradients flow (for comparing them with the dual form's); otherwise only values are meaningful.
        """
        batch, length, _ = x.shape
        b = self.mini_batch_size
        query, key, value = self._qkv(x, torch.arange(length, device=x.device) % b)
        lr = self._token_lr(x)
        if valid is not None:
            lr = lr * valid.unsqueeze(1).to(lr.dtype)
        scale = self.token_scale()
        weights = self.initial_weights(batch)
        outputs = []
        for start in range(0, length, b):
            accumulated = {name: torch.zeros_like(w) for name, w in weights.items()}
            current = weights
            for t in range(start, min(start + b, length)):
                grads = self._autograd_token_grads(
                    weights, key[..., t : t + 1, :], value[..., t : t + 1, :], create_graph
                )
                token_lr = lr[..., t].view(batch, self.num_heads, 1, 1)
                accumulated = {name: accumulated[name] + token_lr * grads[name] for name in weights}
                current = {name: weights[name] - scale[t - start] * accumulated[name] for name in weights}
                outputs.append(self._reconstruct(current, query[..., t : t + 1, :]))
            weights = current
        return self._merge_heads(torch.cat(outputs, dim=-2))

    # ------------------------------------------------------------------ streaming
    def init_state(self, batch_size: int) -> TTTState:
        """The state before any token: the learned initial weights, empty gradient sums, count 0."""
        weights = self.initial_weights(int(batch_size))
        return TTTState(
            weights=weights,
            grad_sums={name: torch.zeros_like(w) for name, w in weights.items()},
            count=torch.zeros(int(batch_size), dtype=torch.long, device=self.lr_bias.device),
        )

    def step(self, state: TTTState, x: Tensor) -> tuple[TTTState, Tensor]:
        """Consume one token per row, ``x [B, d]``: ``(new state, output [B, d])``; ``state`` is not modified.

        The output equals :meth:`forward`'s at that position of the full sequence. Run it under
        ``torch.no_grad()`` on a device, or the states keep growing an autograd graph.
        """
        batch = x.size(0)
        tokens = x.unsqueeze(1)
        query, key, value = self._qkv(tokens, state.count.unsqueeze(1))
        lr = self._token_lr(tokens)  # [B, H, 1]
        inputs, pre = self._inner_forward(state.weights, key)
        grads = self._inner_grads(state.weights, pre, value - key)
        new_sums = self._grad_sums(inputs, grads, lr)
        accumulated = {name: state.grad_sums[name] + new_sums[name] for name in state.weights}
        scale = self.token_scale()[state.count].view(batch, 1, 1, 1)
        current = {name: state.weights[name] - scale * accumulated[name] for name in state.weights}
        out = self._merge_heads(self._reconstruct(current, query))[:, 0]
        # A full mini-batch: its last weights start the next one.
        full = (state.count + 1 == self.mini_batch_size).view(batch, 1, 1, 1)
        new_state = TTTState(
            weights={name: torch.where(full, current[name], w) for name, w in state.weights.items()},
            grad_sums={name: torch.where(full, torch.zeros_like(s), s) for name, s in accumulated.items()},
            count=torch.where(full.view(batch), torch.zeros_like(state.count), state.count + 1),
        )
        return new_state, out


class TTTLinear(TTTLayer):
    """TTT-Linear: inner model ``x + LN(xW + b)`` per head, ``W [f, f]``."""

    inner_expansions = ()


class TTTMLP(TTTLayer):
    """TTT-MLP: inner model ``x + LN(GELU(xW1 + b1)W2 + b2)`` per head, hidden width ``4f``."""

    inner_expansions = (4,)
