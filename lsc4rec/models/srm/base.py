"""The interface every small on-device sequential recommender (SRM) implements, with shared scoring code.

Conventions (project-wide): item ids are 1..num_items and 0 is padding; histories are ``LongTensor[B, L]``
left-padded with 0, the most recent item in the last column. Scores are unnormalised logits; the padding
"item" 0 always scores ``-inf`` so it can never be recommended and never takes probability mass.

Opacus note: every parameterised module is called on batch-first tensors (dim 0 = user), and positions
are selected only after the last module call, so Opacus' per-layer hooks attribute every gradient to its
user (``tests/test_srm_models.py`` checks that per-sample gradients add up to the batch gradient). The one
exception is scoring a sequence encoder against the *whole* catalogue (``candidates=None``), which
multiplies by ``item_embedding.weight`` directly for speed; Opacus does not see that use of the tied table.
DP training should therefore use ``sampled_softmax`` or ``bce``; ``sampled_softmax`` with
``num_negatives >= num_items`` is exactly the full softmax and goes through the module call.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

from lsc4rec.models.srm.text_part import ItemTextRows

__all__ = ["ITEM_TABLE_KEY", "SequentialRecommender", "padding_rotations", "validate_common_args"]


def validate_common_args(num_items: int, hidden_size: int, dropout: float) -> None:
    """Raise ``ValueError`` for a catalogue, width or dropout rate no model can be built with."""
    if int(num_items) < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    if int(hidden_size) < 1:
        raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def padding_rotations(history: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(is_item, to_right, to_left)`` for a left-padded ``history [B, L]``: gather indices that move each
    row's padding to its end (``to_right``) and back (``to_left``), for recurrent encoders.

    Written with comparisons instead of ``remainder`` by the symbolic length, which ONNX export cannot
    translate: every index lies in ``[-L, 2L)``, so one conditional wrap is exact.
    """
    length = history.size(1)
    is_item = history != 0
    num_padding = length - is_item.sum(dim=1, keepdim=True)  # [B, 1]
    steps = torch.arange(length, device=history.device).unsqueeze(0)  # [1, L]
    shifted = steps + num_padding
    to_right = shifted - length * (shifted >= length).long()
    back = steps - num_padding
    to_left = back + length * (back < 0).long()
    return is_item, to_right, to_left


# State-dict key of the item table every SRM has (row i = item i): federated row weighting keys on it.
ITEM_TABLE_KEY = "item_embedding.weight"


class SequentialRecommender(nn.Module, abc.ABC):
    """Base class of the SRMs: next-item scores from a left-padded item history.

    The default scoring methods are those of a *sequence encoder*: :meth:`encode` maps the history to one
    hidden state per position, and the score of item ``i`` after position ``t`` is the dot product of that
    state with item ``i``'s embedding (embeddings tied between input and output, as in SASRec and
    RecBole's GRU4Rec). Models that score differently (DIN) override :meth:`position_scores`,
    :meth:`position_scores_with_negatives`, :meth:`score_all` and :meth:`score_candidates` together.

    Shape conventions for ``candidates`` in :meth:`position_scores`: ``[B, L, C]`` gives each position its
    own candidates; a 1-D ``[C]`` tensor is a list shared by every position of every row (the cheap form
    that sampled softmax uses); ``None`` means the whole catalogue, ids 0..num_items.

    Streaming (optional, where :attr:`supports_streaming` is True, as in TTT4Rec): ``prefill(history [B, L])``
    encodes a left-padded history once and returns ``(state, hidden [B, d])`` (zero hidden for empty rows);
    ``step(state, item_ids [B])`` appends one item per row at a cost independent of the history length and
    returns ``(new_state, hidden)``, leaving ``state`` unchanged; ``score_hidden(hidden, candidates=None)``
    scores a hidden state exactly as :meth:`score_all` / :meth:`score_candidates` score the history. The state
    is a tensor, or lists, tuples, dicts and dataclasses of tensors whose dim 0 is the batch (a device serving
    fewer rows keeps the first ones). A model without streaming re-encodes the history at every arrival.

    Implementing one (a model outside the package is named by ``model=custom model.target=<module>.<Class>``;
    docs/custom_model.md has a worked example):

    - **Constructor**: ``__init__(self, num_items, <hyperparameters>)``, ``num_items`` first, the
      hyperparameters keyword arguments (the config's keys); an argument named ``max_len`` receives the run's
      ``data.max_len``. It calls ``super().__init__(num_items, hidden_size)``, which makes the **item table**
      ``item_embedding`` (``nn.Embedding(num_items + 1, hidden_size, padding_idx=0)``, row i = item i, row 0
      padding, kept at zero). Keep that name and shape: federated row weighting, MergeNet, SOLID and the
      text part key on it. Re-initialise it if you like, then zero row 0 again.
    - **Item vectors**: read items through :meth:`embed_items` (ids -> vectors) and :meth:`item_table` (all
      of them), never ``item_embedding`` directly: with ``model.item_text=projected`` each vector is its id
      row plus a text part, and the id rows of items with text start at zero.
    - **Encoder**: :meth:`encode` (the one abstract method): ``history [B, L]`` left-padded -> ``[B, L, d]``;
      causal (position t sees items up to t), independent of the amount of left padding (an exported graph
      pads every history to ``max_len``), batch-first (dim 0 = user: Opacus and federated shards rely on it),
      and traceable by ``torch.export`` for ONNX (tensor operations only: no ``.item()``, ``.tolist()`` or
      Python branches on tensor values).
    - **Scoring**: inherited: the dot product of the encoder's state with the item vectors. A model that
      scores otherwise overrides :meth:`position_scores`, :meth:`position_scores_with_negatives`,
      :meth:`score_all` and :meth:`score_candidates` together (and cannot be SOLID's base).
    - **Optional**: :meth:`auxiliary_loss` (an extra training term), streaming (above), ``dropout`` as a
      constructor argument (SOLID passes ``model.dropout`` to its trunks).
    """

    num_items: int
    hidden_size: int
    item_embedding: nn.Embedding

    def __init__(self, num_items: int, hidden_size: int) -> None:
        super().__init__()
        self.num_items = int(num_items)
        self.hidden_size = int(hidden_size)
        # Row 0 is the padding item: it stays zero and receives no gradient.
        self.item_embedding = nn.Embedding(self.num_items + 1, self.hidden_size, padding_idx=0)
        # The optional text part of every item vector (attach_item_text; lsc4rec/models/srm/text_part.py).
        self.item_text: ItemTextRows | None = None

    # ------------------------------------------------------------------ item vectors
    def attach_item_text(
        self, vectors: Tensor, has_text: Tensor | None = None, *, start: bool = True
    ) -> dict[str, float | int]:
        """Give every item vector a text part: ``id_row(i) + P · vectors[i]`` (:class:`ItemTextRows`).

        ``vectors [num_items + 1, D]`` are the items' frozen text vectors (zero rows for padding and items
        without text); ``has_text [num_items + 1]`` marks the items that have text (default: non-zero rows).
        ``P`` starts as the vectors' principal directions at the id table's own spread, and the id rows of
        items with text start at zero, so each such item begins as its text. ``start=False`` leaves ``P`` at
        zero for weights about to be loaded (the principal directions are an SVD of the whole catalogue's
        vectors, most of a federated node's cost per round when every round rebuilds it). Returns a short
        report.
        """
        if vectors.ndim != 2 or vectors.shape[0] != self.num_items + 1:
            raise ValueError(
                f"item text vectors {tuple(vectors.shape)} do not match the catalogue: expected "
                f"[{self.num_items + 1}, D] (num_items + 1 rows)"
            )
        present = vectors.norm(dim=1) > 0 if has_text is None else has_text.bool().clone()
        present[0] = False
        if not bool(present.any()):
            raise ValueError("no item has a text vector: the text part needs some")
        table = self.item_embedding.weight
        scale = float(table.detach()[1:].std())
        vectors = vectors.detach().float() * present.unsqueeze(1).to(torch.float32)
        text = ItemTextRows(vectors, self.hidden_size, scale=scale if start else 0.0)
        self.item_text = text.to(table.device)
        with torch.no_grad():
            table[present] = 0.0
        return {
            "items_with_text": int(present.sum()),
            "text_dim": int(vectors.shape[1]),
            "row_std": round(scale, 6),
        }

    def embed_items(self, ids: Tensor) -> Tensor:
        """Item vectors ``[..., d]`` of ``ids [...]``: the id rows, plus the text part when attached."""
        vectors = self.item_embedding(ids)
        if self.item_text is not None:
            vectors = vectors + self.item_text(ids)
        return vectors

    def item_table(self) -> Tensor:
        """Every item's vector, ``[num_items + 1, d]`` (row 0 = padding): what full-catalogue scores use."""
        if self.item_text is None:
            return self.item_embedding.weight
        return self.item_embedding.weight + self.item_text.table()

    def set_trained_items(self, items: Tensor) -> int:
        """With the text part attached and before training: ``items`` are those the training data holds.

        Every other item (a new item no training sequence holds) is left out of the training losses' softmax
        (:meth:`unseen_items`) and its id row starts at zero, so it scores by its text alone unless an
        objective that names it (distillation) moves it; see :meth:`ItemTextRows.set_trained_items`.
        Returns how many items are not trained.
        """
        if self.item_text is None:
            raise ValueError("set_trained_items needs the text part (model.item_text=projected)")
        untrained = self.item_text.set_trained_items(items)
        with torch.no_grad():
            self.item_embedding.weight[~self.item_text.trained] = 0.0
        return untrained

    def unseen_items(self) -> Tensor | None:
        """``[num_items + 1]`` True for items no training sequence holds (:meth:`set_trained_items`); None
        when every item is trained.

        The training losses never use such an item as a negative: it is never a target, so every step would
        push it (through the text projection too) below the items the device has seen.
        """
        return None if self.item_text is None else self.item_text.unseen()

    @property
    def supports_streaming(self) -> bool:
        """Whether the model has ``prefill``, ``step`` and ``score_hidden`` (class note); False here."""
        return False

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def encode(self, history: Tensor) -> Tensor:
        """Return per-position hidden states ``[B, L, hidden_size]`` for a left-padded history ``[B, L]``.

        The state at position ``t`` may depend only on ``history[:, :t+1]`` and must not depend on padding.
        """

    def auxiliary_loss(self, inputs: Tensor) -> Tensor | None:
        """An extra training term for the batch ``inputs [B, L]`` (e.g. SOLID's VQ loss); None = nothing.

        Training adds it to the next-item loss of every step; evaluation never calls it.
        """
        return None

    def per_row_auxiliary_loss(self, inputs: Tensor) -> Tensor | None:
        """The :meth:`auxiliary_loss` of each row of ``inputs [B, L]`` alone, ``[B]`` (each row's value
        depends on that row only), for per-example gradients (DP-SGD); None = no auxiliary term.

        A model with an auxiliary term that DP-SGD should train implements both.
        """
        return None

    # ------------------------------------------------------------------ public scoring API
    def position_scores(
        self, inputs: Tensor, candidates: Tensor | None = None, positions: Tensor | None = None
    ) -> Tensor:
        """Causal next-item scores at every position of ``inputs [B, L]``.

        The score at position ``t`` depends only on ``inputs[:, :t+1]``. ``candidates``: ``None`` (all items,
        last dim ``num_items + 1`` with column 0 = ``-inf``), ``[B, L, C]`` per position, or ``[C]`` shared;
        candidate id 0 scores ``-inf``. ``positions`` (bool ``[B, L]``): return only those positions,
        flattened to ``[P, C]`` / ``[P, num_items + 1]`` in row-major order; otherwise ``[B, L, ...]``.
        """
        return self._scores_from_hidden(self.encode(inputs), candidates, positions)

    def selected_position_scores(self, inputs: Tensor, candidates: Tensor, positions: Tensor) -> Tensor:
        """Scores ``[P, C]`` of per-position ``candidates [B, L, C]`` at ``positions`` only (id 0 = -inf).

        The values of ``position_scores(inputs, candidates, positions)``, but only the selected positions'
        candidates are looked up and scored: in a batch of short histories most positions are padding, and
        the full path embeds and back-propagates through all of them. The lookup is not batch-first, so
        Opacus' per-layer hooks cannot attribute it to examples: DP-SGD losses use :meth:`position_scores`.
        """
        return self.score_hidden(self.encode(inputs)[positions], candidates[positions])

    def position_scores_with_negatives(
        self, inputs: Tensor, candidates: Tensor, negatives: Tensor, positions: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Scores of per-position ``candidates [B, L, K]`` and of ``negatives [C]`` shared by all positions.

        Same values as two :meth:`position_scores` calls, but the history is encoded once (sampled softmax
        needs both the target's score and the shared negatives' scores). Returns ``([.., K], [.., C])``
        with leading dims ``[B, L]``, or ``[P]`` when ``positions`` is given.
        """
        hidden = self.encode(inputs)
        return (
            self._scores_from_hidden(hidden, candidates, positions),
            self._scores_from_hidden(hidden, negatives, positions),
        )

    def position_item_logits(self, inputs: Tensor, positions: Tensor) -> Tensor:
        """Scores ``[P, num_items]`` of the real items (ids 1..num_items, column ``i - 1``) at ``positions``.

        The full-softmax training path: the same values as ``position_scores(inputs, positions=positions)``
        without the padding column, so the loss never materialises (and copies) a masked
        ``[P, num_items + 1]`` matrix; on a CPU that copy costs a third of a full-softmax step.
        """
        hidden = self.encode(inputs)[positions]
        return hidden @ self.item_table()[1:].t()

    def score_all(self, history: Tensor) -> Tensor:
        """Next-item scores ``[B, num_items + 1]`` after the full ``history [B, L]``; column 0 = -inf."""
        return self.score_hidden(self.encode(history)[:, -1])

    def score_candidates(self, history: Tensor, candidates: Tensor) -> Tensor:
        """Next-item scores ``[B, C]`` after ``history [B, L]`` for ``candidates [B, C]``; id 0 is -inf."""
        return self.score_hidden(self.encode(history)[:, -1], candidates)

    def score_hidden(self, hidden: Tensor, candidates: Tensor | None = None) -> Tensor:
        """Scores of user vectors ``hidden [B, d]`` against the tied item table.

        ``candidates=None``: every item, ``[B, num_items + 1]`` with column 0 = -inf; ``candidates [B, C]``:
        ``[B, C]`` with id 0 = -inf. :meth:`score_all`, :meth:`score_candidates` and streaming models'
        ``step`` outputs all score through it.
        """
        if candidates is None:
            scores = hidden @ self.item_table().t()
            # In place: a masked_fill would copy the whole [B, num_items + 1] matrix to change one column, and
            # full-ranking evaluation is dominated by such passes. The matmul's backward does not need it.
            scores[:, 0] = float("-inf")
            return scores
        scores = torch.matmul(self.embed_items(candidates), hidden.unsqueeze(-1)).squeeze(-1)
        return scores.masked_fill(candidates == 0, float("-inf"))

    # ------------------------------------------------------------------ helpers for subclasses
    def _mask_padding_column(self, scores: Tensor) -> Tensor:
        """Set the padding column (index 0 of the last dim) of full-catalogue scores to -inf."""
        is_padding = torch.arange(scores.size(-1), device=scores.device) == 0
        return scores.masked_fill(is_padding, float("-inf"))

    def _scores_from_hidden(
        self, hidden: Tensor, candidates: Tensor | None, positions: Tensor | None
    ) -> Tensor:
        """Dot-product scores of ``hidden [B, L, d]`` against the candidates, then the position selection."""
        if candidates is None:
            if positions is not None:
                hidden = hidden[positions]
            # The full-catalogue product uses the weight directly (see the module note on Opacus).
            return self._mask_padding_column(hidden @ self.item_table().t())
        if candidates.dim() == 1:
            # Look the shared list up once per row so the embedding call stays batch-first (Opacus).
            shared = candidates.unsqueeze(0).expand(hidden.size(0), -1)
            scores = torch.matmul(hidden, self.embed_items(shared).transpose(1, 2))  # [B, L, C]
            scores = scores.masked_fill(candidates == 0, float("-inf"))
        else:
            cand_emb = self.embed_items(candidates)  # [B, L, C, d]
            scores = torch.matmul(cand_emb, hidden.unsqueeze(-1)).squeeze(-1)
            scores = scores.masked_fill(candidates == 0, float("-inf"))
        return scores if positions is None else scores[positions]
