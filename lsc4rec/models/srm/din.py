"""DIN: Deep Interest Network (Zhou et al., KDD 2018) used as a candidate scorer / re-ranker.

For a candidate item ``c`` and history items ``h_1..h_t``:

* activation unit: ``w_j = MLP_att([e_c, e_h_j, e_c - e_h_j, e_c * e_h_j])`` (hidden sizes (80, 40), Sigmoid,
  as in the authors' code), scalar output;
* user interest ``u_c = sum_j w_j e_h_j`` over real history items only. As in the paper the weights are NOT
  softmax-normalised, so the intensity of interest is kept (the authors' released code adds a softmax;
  we follow the paper);
* score ``MLP_out([u_c, e_c, u_c * e_c])`` with hidden sizes (200, 80) (the paper's "200x80" MLP) and
  PReLU (the paper's baseline activation; Dice is omitted because it uses batch statistics, which break
  per-sample gradients for DP training and make a user's score depend on the rest of the batch). The
  output is a single logit (the paper's 2-way softmax is equivalent to one logit).

Implementation choice: the first dense layer of each MLP sees a concatenation that is linear in its parts,
``W [e_c, e_h, e_c - e_h, e_c * e_h] = (W1 + W3) e_c + (W2 - W3) e_h + W4 (e_c * e_h)``, so it is computed as
three ``nn.Linear`` (candidate term, history term, product term). This is the same function class with
2-4x fewer operations and activations, since the candidate and history terms are computed once per item
instead of once per (candidate, history) pair, and every ``nn.Linear`` is still called as a module on a
batch-first tensor (Opacus-compatible).

Cost: scoring C candidates for one position with history length L evaluates the activation unit on C*L
pairs (~(64*80 + 80*40) MACs each at the defaults) and the output MLP C times (~(64*200 + 200*80) MACs
each). :meth:`DIN.score_all` therefore costs ``B * num_items * L`` activation-unit evaluations: it is
chunked over items (``score_chunk_pairs`` bounds the pairs held at once, ~1.2 KB of activations per pair
in inference), but for large catalogues DIN is meant to re-rank candidate lists
(:meth:`score_candidates`), not to rank the full catalogue. In training, a full softmax costs
``B * num_items * L`` pairs per batch; prefer sampled softmax or BCE. Measured on 2 CPU cores at the
defaults (B=128, L=50, 12k items): sampled softmax with 128 shared negatives ~10 s and ~3 GB per training
step, BCE with 1 negative ~0.5 s; ``score_all`` ~0.7 s per user.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lsc4rec.models.srm.base import SequentialRecommender, validate_common_args

__all__ = ["DIN"]

_ACTIVATIONS = {"prelu": nn.PReLU, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid: {sorted(_ACTIVATIONS)}") from None


class _DenseStack(nn.Module):
    """Hidden layers after the first one of an MLP, then a scalar output layer."""

    def __init__(self, sizes: Sequence[int], activation: str, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [_activation(activation), nn.Dropout(dropout)]
        for size_in, size_out in itertools.pairwise(sizes):
            layers += [nn.Linear(size_in, size_out), _activation(activation), nn.Dropout(dropout)]
        layers.append(nn.Linear(sizes[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Map the first layer's pre-activations ``[..., sizes[0]]`` to scalars ``[...]``."""
        return self.net(x).squeeze(-1)


class ActivationUnit(nn.Module):
    """DIN's local activation unit: a scalar weight for every (candidate, history item) pair."""

    def __init__(self, hidden_size: int, sizes: Sequence[int], activation: str) -> None:
        super().__init__()
        self.candidate_term = nn.Linear(hidden_size, sizes[0])
        self.history_term = nn.Linear(hidden_size, sizes[0], bias=False)
        self.product_term = nn.Linear(hidden_size, sizes[0], bias=False)
        self.rest = _DenseStack(sizes, activation, dropout=0.0)

    def forward(self, candidates: Tensor, history: Tensor) -> Tensor:
        """Weights ``[B, ..., C, L]`` for candidates ``[B, ..., C, d]`` and history ``[B, ..., L, d]``.

        Leading dims broadcast (e.g. candidates ``[B, L, C, d]`` against history ``[B, 1, L, d]``).
        """
        pre = (
            self.candidate_term(candidates).unsqueeze(-2)  # [.., C, 1, k]
            + self.history_term(history).unsqueeze(-3)  # [.., 1, L, k]
            + self.product_term(candidates.unsqueeze(-2) * history.unsqueeze(-3))  # [.., C, L, k]
        )
        return self.rest(pre)


class OutputMLP(nn.Module):
    """Scores a candidate from the user interest it activated: ``MLP([u, e_c, u * e_c])``."""

    def __init__(self, hidden_size: int, sizes: Sequence[int], activation: str, dropout: float) -> None:
        super().__init__()
        self.interest_term = nn.Linear(hidden_size, sizes[0])
        self.candidate_term = nn.Linear(hidden_size, sizes[0], bias=False)
        self.product_term = nn.Linear(hidden_size, sizes[0], bias=False)
        self.rest = _DenseStack(sizes, activation, dropout)

    def forward(self, interest: Tensor, candidates: Tensor) -> Tensor:
        """Logits ``[B, ..., C]`` for interests ``[B, ..., C, d]`` and candidates broadcastable to them."""
        pre = (
            self.interest_term(interest)
            + self.candidate_term(candidates)
            + self.product_term(interest * candidates)
        )
        return self.rest(pre)


class DIN(SequentialRecommender):
    """Deep Interest Network with target attention over the history; scores (history, candidate) pairs.

    Defaults: ``hidden_size=64``, ``attention_sizes=(80, 40)`` and ``output_sizes=(200, 80)`` (paper and
    authors' code), ``activation="prelu"`` for the output MLP (the activation unit uses Sigmoid, as in the
    authors' code), ``dropout=0.2`` on the output MLP's hidden layers (the paper uses none; we add it as
    mild regularisation for small on-device data), ``score_chunk_pairs=2**19`` (history x candidate pairs
    evaluated at once by :meth:`score_all`).
    """

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        attention_sizes: Sequence[int] = (80, 40),
        output_sizes: Sequence[int] = (200, 80),
        activation: str = "prelu",
        dropout: float = 0.2,
        score_chunk_pairs: int = 2**19,
    ) -> None:
        validate_common_args(num_items, hidden_size, dropout)
        attention_sizes = tuple(int(s) for s in attention_sizes)
        output_sizes = tuple(int(s) for s in output_sizes)
        if not attention_sizes or not output_sizes or min(attention_sizes + output_sizes) < 1:
            raise ValueError(
                f"attention_sizes and output_sizes must be non-empty positive sizes, got {attention_sizes}, "
                f"{output_sizes}"
            )
        if int(score_chunk_pairs) < 1:
            raise ValueError(f"score_chunk_pairs must be >= 1, got {score_chunk_pairs}")
        super().__init__(num_items, hidden_size)
        self.score_chunk_pairs = int(score_chunk_pairs)
        self.attention = ActivationUnit(hidden_size, attention_sizes, "sigmoid")
        self.output = OutputMLP(hidden_size, output_sizes, activation, dropout)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.normal_(self.item_embedding.weight, std=0.1)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ core
    def _score(self, cand_emb: Tensor, hist_emb: Tensor, weight_mask: Tensor) -> Tensor:
        """Scores ``[B, .., C]`` of ``cand_emb [B, .., C, d]`` given ``hist_emb [B, .., L, d]``.

        ``weight_mask [B, .., 1, L]`` (float 0/1) keeps the history items each position may attend to.
        """
        weights = self.attention(cand_emb, hist_emb) * weight_mask  # [B, .., C, L]
        interest = torch.matmul(weights, hist_emb)  # [B, .., C, d]
        return self.output(interest, cand_emb)

    def _score_shared(self, inputs: Tensor, shared: Tensor) -> Tensor:
        """Causal scores ``[B, L, C]`` of one candidate list ``shared [C]`` at every position of ``inputs``.

        A candidate's attention weight on history item j does not depend on the position, so the weights
        are computed once per row ([B, C, L]) and the causal pooling is a prefix sum over the history.
        """
        batch = inputs.size(0)
        hist_emb = self.embed_items(inputs)  # [B, L, d]
        cand_emb = self.embed_items(shared.unsqueeze(0).expand(batch, -1))  # [B, C, d], batch-first
        is_item = (inputs != 0).to(hist_emb.dtype)
        weights = self.attention(cand_emb, hist_emb) * is_item.unsqueeze(1)  # [B, C, L]
        weighted = weights.unsqueeze(-1) * hist_emb.unsqueeze(1)  # [B, C, L, d]
        interest = torch.cumsum(weighted, dim=2).transpose(1, 2)  # [B, L, C, d]
        scores = self.output(interest, cand_emb.unsqueeze(1))  # [B, L, C]
        return scores.masked_fill(shared == 0, float("-inf"))

    def _score_per_position(self, inputs: Tensor, candidates: Tensor) -> Tensor:
        """Causal scores ``[B, L, C]`` of per-position ``candidates [B, L, C]``."""
        length = inputs.size(1)
        hist_emb = self.embed_items(inputs)  # [B, L, d]
        cand_emb = self.embed_items(candidates)  # [B, L, C, d]
        steps = torch.arange(length, device=inputs.device)
        causal = steps.unsqueeze(1) >= steps.unsqueeze(0)  # [L(query), L(history)]
        visible = causal.unsqueeze(0) & (inputs != 0).unsqueeze(1)  # [B, L(query), L(history)]
        scores = self._score(cand_emb, hist_emb.unsqueeze(1), visible.unsqueeze(2).to(hist_emb.dtype))
        return scores.masked_fill(candidates == 0, float("-inf"))

    # ------------------------------------------------------------------ public API
    def encode(self, history: Tensor) -> Tensor:
        """History item embeddings ``[B, L, hidden_size]`` (DIN has no sequence encoder); zeros at padding."""
        return self.embed_items(history)

    def position_scores(
        self, inputs: Tensor, candidates: Tensor | None = None, positions: Tensor | None = None
    ) -> Tensor:
        """Causal next-item scores at every position (see :meth:`SequentialRecommender.position_scores`).

        At position t the candidate attends to ``inputs[:, :t+1]`` only. ``candidates=None`` scores the whole
        catalogue (costly: ``B * num_items * L`` activation-unit evaluations, see the module docstring).
        """
        if candidates is None:
            all_items = torch.arange(self.num_items + 1, device=inputs.device)
            scores = self._score_shared(inputs, all_items)
        elif candidates.dim() == 1:
            scores = self._score_shared(inputs, candidates)
        else:
            scores = self._score_per_position(inputs, candidates)
        return scores if positions is None else scores[positions]

    def position_item_logits(self, inputs: Tensor, positions: Tensor) -> Tensor:
        """Scores ``[P, num_items]`` of the real items at ``positions`` (see the base class)."""
        return self.position_scores(inputs, positions=positions)[:, 1:]

    def selected_position_scores(self, inputs: Tensor, candidates: Tensor, positions: Tensor) -> Tensor:
        """Scores ``[P, C]`` at ``positions``: DIN attends per candidate, so the full path's selection."""
        return self.position_scores(inputs, candidates, positions)

    def position_scores_with_negatives(
        self, inputs: Tensor, candidates: Tensor, negatives: Tensor, positions: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Scores of per-position ``candidates [B, L, K]`` and shared ``negatives [C]`` (see base class)."""
        return (
            self.position_scores(inputs, candidates, positions),
            self.position_scores(inputs, negatives, positions),
        )

    def score_candidates(self, history: Tensor, candidates: Tensor) -> Tensor:
        """Scores ``[B, C]`` of ``candidates [B, C]`` after the full ``history [B, L]``; id 0 scores -inf."""
        hist_emb = self.embed_items(history)
        mask = (history != 0).to(hist_emb.dtype).unsqueeze(1)  # [B, 1, L]
        scores = self._score(self.embed_items(candidates), hist_emb, mask)
        return scores.masked_fill(candidates == 0, float("-inf"))

    def score_all(self, history: Tensor) -> Tensor:
        """Scores ``[B, num_items + 1]`` of every item after ``history [B, L]``; column 0 = -inf.

        Evaluated in chunks of items holding at most ``score_chunk_pairs`` (user, item, history-position)
        triples, to bound memory; total cost is ``B * num_items * L`` activation-unit evaluations.
        """
        batch, length = history.shape
        hist_emb = self.embed_items(history)
        mask = (history != 0).to(hist_emb.dtype).unsqueeze(1)
        chunk = max(1, self.score_chunk_pairs // max(1, batch * length))
        parts = [torch.full((batch, 1), float("-inf"), dtype=hist_emb.dtype, device=history.device)]
        for start in range(1, self.num_items + 1, chunk):
            items = torch.arange(start, min(start + chunk, self.num_items + 1), device=history.device)
            cand_emb = self.embed_items(items.unsqueeze(0).expand(batch, -1))
            parts.append(self._score(cand_emb, hist_emb, mask))
        return torch.cat(parts, dim=1)
