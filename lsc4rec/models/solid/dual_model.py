"""SOLID's dual parameter model on top of any sequence-encoder SRM (SASRec, GRU4Rec, TTT4Rec).

Two trunks of the base architecture read the same history: the *item trunk* over item ids and the *semantic
trunk* over the items' semantic tokens (their codebook codes, :mod:`lsc4rec.models.solid.semantic`). A
generator turns both trunks' states into the parameters of a small classifier applied to the item state, per
user and per position (papers.md §3.2):

    W_l = clip(z_item·A_l + a_l, -t, t) + (z_sem·C_l + c_l),   b_l likewise,   l = 1..generated_layers
    u   = s_item + W_L tanh(... tanh(W_1 s_item + b_1) ...) + b_L

so semantic parameters dominate and item parameters are a personalised residual bounded by ``t``. The user
vector ``u`` scores items against the tied item table, so every loss, evaluation protocol and the federated
code work unchanged. Choices where the paper/code is silent, written down here:

- The residual ``s_item + ...`` (SOLID's released classifier has none) keeps the base model's state as the
  starting point; the generated layers learn a correction, so SOLID starts no worse than its base.
- The codebook in model space is the semantic trunk's token-embedding table. The VQ loss pulls each history
  item's embedding and its semantic token's embedding together, ``λ·mean‖e_i − s_tok(i)‖²`` (gradient to
  both: SOLID's MSE term plus the codebook's own update), which ties rare items to their semantic cluster.
- Generation happens only at real (non-padding) positions, and full-catalogue scoring generates only at the
  last position, so the ``[P, d, d]`` generated matrices stay small.

``semantic_scores=True`` puts the semantic ids into every item's *score*, not only into the user vector: an
item's output vector becomes its id row plus its semantic token's row of the semantic trunk's table (the
codebook in model space), so rare and never-trained items score by the items that share their code.

Ablations: ``use_codebook=False`` (no semantic ids at all: no semantic trunk, no VQ loss: a DUET-style dynamic
model), ``semantic_trunk=False`` (generation from the item trunk only, VQ loss kept), ``generation=False``
(static classifier; the semantic state joins by a learned projection).

Streaming: on a base that streams (TTT4Rec), :meth:`SolidRecommender.prefill` and
:meth:`SolidRecommender.step` carry both trunks' states in a :class:`SolidStreamState` and apply the
classifier to the newest position only, so appending an item costs the same at any history length.

A user's own SRM can be the base (``model.base=my_srm.TinyRec``, its dotted path; docs/custom_model.md): it
must be a sequence encoder (scored through :meth:`~SequentialRecommender.encode` and its item table, no
scoring method of its own) whose constructor takes ``hidden_size`` (SOLID's width) and ``dropout`` (SOLID's,
unless ``model.dropout=0``); :func:`custom_trunk_config` checks that.

Semantic ids are data, not parameters: :meth:`SolidRecommender.set_semantic_ids` installs them (a
non-persistent buffer), so a codebook update reaches a model without touching its weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lsc4rec.models.solid.semantic import semantic_token_table, semantic_vocabulary_size
from lsc4rec.models.srm import SRM_CONFIGS, CustomSRMConfig, SequentialRecommender, SRMConfig
from lsc4rec.models.srm.custom import (
    check_constructor_params,
    load_srm_class,
    overrides_scoring,
    takes_argument,
)

__all__ = [
    "ENCODER_BASES",
    "SolidRecommender",
    "SolidStreamState",
    "check_base",
    "custom_trunk_config",
    "is_custom_base",
]

#: The built-in bases SOLID can wrap (``model.base``): sequence encoders. A dotted path names a user's own.
ENCODER_BASES = ("sasrec", "gru4rec", "ttt4rec")


def is_custom_base(base: str) -> bool:
    """Whether ``model.base`` names a user's class by its dotted path rather than a built-in encoder."""
    return "." in str(base)


def check_base(base: str, key: str = "model.base") -> None:
    """Raise ``ValueError`` unless ``base`` is a built-in encoder or the dotted path of a user's sequence
    encoder (a :class:`SequentialRecommender` that scores through ``encode``, not by methods of its own)."""
    if not is_custom_base(base):
        if base not in ENCODER_BASES:
            raise ValueError(
                f"{key} must be one of {list(ENCODER_BASES)} (a sequence encoder) or the dotted path of "
                f"your own (docs/custom_model.md), got {base!r}"
            )
        return
    cls = load_srm_class(base, key)
    own = overrides_scoring(cls)
    if own:
        raise ValueError(
            f"{key}={base}: SOLID wraps sequence encoders, scored through encode() and the item table, "
            f"but {cls.__name__} has its own {', '.join(own)}"
        )


def custom_trunk_config(
    base: str, hidden_size: int, dropout: float, params: Mapping[str, Any], prefix: str = "model.base_params"
) -> CustomSRMConfig:
    """The config of SOLID's trunks on the user's class ``base``: its own keys ``params`` (``prefix`` names
    them in errors) with SOLID's ``hidden_size`` and ``dropout`` unless ``params`` sets them.

    The trunks must be SOLID's width, so the class must take ``hidden_size``; SOLID's dropout is its trunks'
    only, so a class without a ``dropout`` argument needs ``model.dropout=0`` (else the key is not honoured).
    """
    check_base(base)
    cls = load_srm_class(base, "model.base")
    common: dict[str, Any] = {}
    if "hidden_size" not in params:
        if not takes_argument(cls, "hidden_size"):
            raise ValueError(
                f"model.base={base}: SOLID's trunks are model.hidden_size={hidden_size} wide, but "
                f"{cls.__name__}'s constructor takes no hidden_size argument"
            )
        common["hidden_size"] = hidden_size
    if "dropout" not in params:
        if takes_argument(cls, "dropout"):
            common["dropout"] = dropout
        elif float(dropout) != 0.0:
            raise ValueError(
                f"model.dropout={dropout} is SOLID's trunks' dropout, but {cls.__name__}'s constructor takes "
                "no dropout argument: set model.dropout=0"
            )
    merged = {**common, **params}
    # Checked here with SOLID's key names first: the config's own check names model.params.
    try:
        check_constructor_params(cls, merged, prefix, f"model.base={base}")
    except ValueError as error:
        if not str(error).startswith("unknown key"):
            raise
        # The usual cause: a preset's keys for its built-in base (solid_ttt4rec's num_blocks, ttt, ...).
        raise ValueError(
            f"{error}; keys a preset sets for its built-in base are dropped with ~{prefix}"
        ) from None
    return CustomSRMConfig(target=base, params=merged)


def _adopt_item_table(trunk: SequentialRecommender) -> nn.Embedding:
    """Take ``trunk``'s item table (initialised the base model's way) so the wrapper registers it once.

    Registered in both modules, the table would be in the state dict twice (twice the bytes every federated
    round); as a plain attribute of the trunk it has one owner while the trunk's ``encode`` still finds it.
    """
    table = trunk._modules.pop("item_embedding")
    object.__setattr__(trunk, "item_embedding", table)
    return table


@dataclass(frozen=True)
class SolidStreamState:
    """Streaming state of SOLID: the item trunk's state and the semantic trunk's (None without that trunk)."""

    item: Any
    semantic: Any | None


class _Generator(nn.Module):
    """One classifier layer's parameters from a metacode: ``z·A + a`` as ``[.., d, d]`` and ``[.., d]``."""

    def __init__(self, meta_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.weight = nn.Linear(meta_size, hidden_size * hidden_size)
        self.bias = nn.Linear(meta_size, hidden_size)
        # Generated entries ~ N(0, 1/d) at start (z is a tanh output, so |z_m| <= 1): a Xavier-scaled layer.
        nn.init.normal_(self.weight.weight, std=1.0 / math.sqrt(meta_size * hidden_size))
        nn.init.normal_(self.weight.bias, std=1.0 / math.sqrt(hidden_size))
        nn.init.normal_(self.bias.weight, std=1.0 / math.sqrt(meta_size * hidden_size))
        nn.init.zeros_(self.bias.bias)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``([P, d, d], [P, d])`` for metacodes ``z [P, meta]``."""
        d = self.hidden_size
        return self.weight(z).view(-1, d, d), self.bias(z)


class SolidRecommender(SequentialRecommender):
    """SOLID: dual-trunk SRM whose classifier parameters are generated from item and semantic states."""

    def __init__(
        self,
        num_items: int,
        base: str = "sasrec",
        hidden_size: int = 64,
        dropout: float = 0.2,
        codebook_sizes: Sequence[int] = (64,),
        trunk_levels: int = 1,
        meta_size: int = 16,
        generated_layers: int = 2,
        clip: float = 0.01,
        vq_weight: float = 0.1,
        use_codebook: bool = True,
        semantic_trunk: bool = True,
        generation: bool = True,
        semantic_scores: bool = False,
        base_params: SRMConfig | Mapping[str, Any] | None = None,
        max_len: int = 50,
    ) -> None:
        super().__init__(num_items, hidden_size)
        check_base(base)
        if int(generated_layers) < 1:
            raise ValueError(f"model.generated_layers must be >= 1, got {generated_layers}")
        if clip <= 0:
            raise ValueError(f"model.clip (t) must be > 0, got {clip}")
        if vq_weight < 0:
            raise ValueError(f"model.vq_weight (lambda) must be >= 0, got {vq_weight}")
        self.base = base
        self.codebook_sizes = [int(k) for k in codebook_sizes]
        self.trunk_levels = int(trunk_levels)
        self.use_codebook = bool(use_codebook)
        self.use_semantic_trunk = bool(semantic_trunk) and self.use_codebook
        self.generation = bool(generation)
        # Semantic ids in every item's score: its vector adds its code's row of the semantic table.
        self.semantic_scores = bool(semantic_scores) and self.use_codebook
        self.clip = float(clip)
        # Set by the per-example gradient engines of DP-SGD (lsc4rec.client.private_training): generate at
        # every position instead of selecting the real ones (same values at real positions).
        self.generate_everywhere = False
        self.vq_weight = float(vq_weight) if self.use_codebook else 0.0
        # The trunks' config: the base's own keys, with SOLID's width and dropout unless they override them.
        if isinstance(base_params, SRMConfig):
            trunk = base_params
        elif is_custom_base(base):
            trunk = custom_trunk_config(base, hidden_size, dropout, base_params or {})
        else:
            params = {"hidden_size": hidden_size, "dropout": dropout, **(base_params or {})}
            trunk = SRM_CONFIGS[base](**params)

        self.item_trunk = trunk.build(num_items, max_len)
        if self.item_trunk.hidden_size != self.hidden_size:
            # The generated classifier and the adopted item table are SOLID's width: a narrower or wider
            # trunk would fail at the first forward pass, far from its cause.
            raise ValueError(
                f"SOLID's trunks must be model.hidden_size={hidden_size} wide, but the base built one "
                f"{self.item_trunk.hidden_size} wide (a hidden_size under model.base_params?)"
            )
        self.item_embedding = _adopt_item_table(self.item_trunk)
        self.semantic_vocabulary = semantic_vocabulary_size(self.codebook_sizes, self.trunk_levels)
        # Token 0 is padding; the table is filled by set_semantic_ids (all padding until then).
        self.register_buffer(
            "semantic_tokens", torch.zeros(num_items + 1, dtype=torch.long), persistent=False
        )
        self.semantic_codes: Tensor | None = None
        if self.use_codebook:
            # Its token table is the codebook in model space (VQ loss) as well as the semantic trunk's input.
            self.semantic_trunk = trunk.build(self.semantic_vocabulary, max_len)
        self.item_meta = nn.Sequential(nn.Linear(hidden_size, meta_size), nn.Tanh())
        layers = int(generated_layers)
        if self.generation:
            self.item_generators = nn.ModuleList(_Generator(meta_size, hidden_size) for _ in range(layers))
            if self.use_semantic_trunk:
                self.semantic_meta = nn.Sequential(nn.Linear(hidden_size, meta_size), nn.Tanh())
                self.semantic_generators = nn.ModuleList(
                    _Generator(meta_size, hidden_size) for _ in range(layers)
                )
        else:
            self.static_layers = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(layers))
            if self.use_semantic_trunk:
                self.semantic_projection = nn.Linear(hidden_size, hidden_size)

    def embed_items(self, ids: Tensor) -> Tensor:
        """Item vectors: id row (+ text part), plus the semantic code's row with ``semantic_scores``.

        With the code's row, an item the model never trained on scores by the items that share its code.
        """
        vectors = super().embed_items(ids)
        if self.semantic_scores:
            vectors = vectors + self.semantic_trunk.item_embedding(self.semantic_tokens[ids])
        return vectors

    def item_table(self) -> Tensor:
        """Every item's vector ``[num_items + 1, d]`` as :meth:`embed_items` gives it."""
        table = super().item_table()
        if self.semantic_scores:
            # An embedding lookup: its backward sums repeated codes in a fixed order (indexing's varies
            # between runs with several CPU threads).
            codes = self.semantic_trunk.item_embedding.weight
            table = table + nn.functional.embedding(self.semantic_tokens, codes)
        return table

    def attach_item_text(
        self, vectors: Tensor, has_text: Tensor | None = None, *, start: bool = True
    ) -> dict[str, float | int]:
        """The base class's text part, shared with the item trunk (it encodes histories with it)."""
        report = super().attach_item_text(vectors, has_text, start=start)
        # A plain attribute of the trunk, like the item table: one owner in the state dict.
        object.__setattr__(self.item_trunk, "item_text", self.item_text)
        return report

    # ------------------------------------------------------------------ semantic ids
    def set_semantic_ids(self, codes: Tensor) -> None:
        """Install the items' semantic ids ``[num_items + 1, levels]`` (0-based codes, row 0 = padding)."""
        if not self.use_codebook:
            return
        codes = torch.as_tensor(codes, dtype=torch.long).cpu()
        if codes.shape[0] != self.num_items + 1:
            raise ValueError(
                f"semantic ids cover {codes.shape[0] - 1} items but the model has {self.num_items}"
            )
        table = semantic_token_table(codes, self.codebook_sizes, self.trunk_levels)
        self.semantic_tokens.copy_(table.to(self.semantic_tokens.device))
        self.semantic_codes = codes.clone()

    def _require_semantic_ids(self) -> None:
        if self.use_codebook and self.semantic_codes is None:
            raise RuntimeError(
                "SOLID model has no semantic ids yet: call set_semantic_ids(codebook.assign(features)) "
                "before training or scoring"
            )

    # ------------------------------------------------------------------ encoding
    def encode(self, history: Tensor) -> Tensor:
        """User vectors after every position of ``history [B, L]``: ``[B, L, d]`` (zeros at padding)."""
        return self._encode(history, history != 0)

    def _encode(self, history: Tensor, where: Tensor) -> Tensor:
        """User vectors at the positions ``where [B, L]`` selects (zeros elsewhere)."""
        self._require_semantic_ids()
        state = self.item_trunk.encode(history)
        semantic = None
        if self.use_semantic_trunk:
            semantic = self.semantic_trunk.encode(self.semantic_tokens[history])
        if self.generate_everywhere:
            # Static shapes for per-example gradients (torch.func cannot batch a boolean-mask selection):
            # the classifier runs at every position and padding is zeroed afterwards.
            flat = state.reshape(-1, state.size(-1))
            flat_semantic = None if semantic is None else semantic.reshape(-1, semantic.size(-1))
            generated = (flat + self._classifier(flat, flat_semantic)).view_as(state)
            return torch.where(where.unsqueeze(-1), generated, torch.zeros_like(generated))
        out = torch.zeros_like(state)
        s = state[where]  # [P, d]
        out[where] = s + self._classifier(s, None if semantic is None else semantic[where])
        return out

    def _classifier(self, s: Tensor, semantic: Tensor | None) -> Tensor:
        """The (generated or static) classifier's correction to item states ``s [P, d]``."""
        h = s
        if not self.generation:
            for index, layer in enumerate(self.static_layers):
                h = layer(h) if index == 0 else layer(torch.tanh(h))
            if semantic is not None:
                h = h + self.semantic_projection(semantic)
            return h
        z_item = self.item_meta(s)
        z_semantic = self.semantic_meta(semantic) if semantic is not None else None
        for index in range(len(self.item_generators)):
            weight, bias = self.item_generators[index](z_item)
            weight, bias = weight.clamp(-self.clip, self.clip), bias.clamp(-self.clip, self.clip)
            if z_semantic is not None:
                semantic_weight, semantic_bias = self.semantic_generators[index](z_semantic)
                weight, bias = weight + semantic_weight, bias + semantic_bias
            h_in = h if index == 0 else torch.tanh(h)
            h = torch.bmm(weight, h_in.unsqueeze(-1)).squeeze(-1) + bias
        return h

    def _last_state(self, history: Tensor) -> Tensor:
        """User vector after the full history ``[B, d]`` (generating only at the last position)."""
        where = torch.zeros_like(history, dtype=torch.bool)
        where[:, -1] = True
        return self._encode(history, where)[:, -1]

    def score_all(self, history: Tensor) -> Tensor:
        """Next-item scores ``[B, num_items + 1]`` after ``history``; column 0 = -inf."""
        return self.score_hidden(self._last_state(history))

    def score_candidates(self, history: Tensor, candidates: Tensor) -> Tensor:
        """Next-item scores ``[B, C]`` of ``candidates [B, C]``; id 0 is -inf."""
        return self.score_hidden(self._last_state(history), candidates)

    # ------------------------------------------------------------------ streaming
    @property
    def supports_streaming(self) -> bool:
        """Whether the item trunk streams (the semantic trunk, when used, is the same architecture)."""
        return self.item_trunk.supports_streaming

    def _require_streaming(self) -> None:
        if not self.supports_streaming:
            raise ValueError(
                f"SOLID streaming needs a base model that streams (model.base = 'ttt4rec'); "
                f"model.base = {self.base!r} does not"
            )

    def init_state(self, batch_size: int = 1) -> SolidStreamState:
        """The streaming state of ``batch_size`` users with no history yet (both trunks' initial states)."""
        self._require_streaming()
        semantic = self.semantic_trunk.init_state(batch_size) if self.use_semantic_trunk else None
        return SolidStreamState(item=self.item_trunk.init_state(batch_size), semantic=semantic)

    def prefill(self, history: Tensor) -> tuple[SolidStreamState, Tensor]:
        """Encode ``history [B, L]`` (left-padded) once: ``(streaming state, user vector [B, d])``.

        For a row with items the user vector is the one :meth:`score_all` scores. Rows without items get the
        initial state and a zero vector, as the base's ``prefill`` does and as :meth:`encode` gives at
        padding (``score_all`` on an all-padding row instead applies the classifier to zero states).
        """
        self._require_streaming()
        self._require_semantic_ids()
        item_state, s = self.item_trunk.prefill(history)
        semantic_state, semantic = None, None
        if self.use_semantic_trunk:
            semantic_state, semantic = self.semantic_trunk.prefill(self.semantic_tokens[history])
        # Generate only for rows with items, as _encode generates only at real positions.
        has_items = (history != 0).any(dim=1)
        hidden = torch.zeros_like(s)
        kept = s[has_items]
        hidden[has_items] = kept + self._classifier(kept, None if semantic is None else semantic[has_items])
        return SolidStreamState(item=item_state, semantic=semantic_state), hidden

    def step(self, state: SolidStreamState, item_ids: Tensor) -> tuple[SolidStreamState, Tensor]:
        """Append one interaction per user, ``item_ids [B]`` (ids 1..num_items): ``(state, user vector)``.

        The user vector ``[B, d]`` equals :meth:`score_all`'s after ``history + [item]`` without re-encoding
        the history; ``state`` is left unchanged. Use eval mode and ``torch.no_grad()`` for serving.
        """
        self._require_streaming()
        self._require_semantic_ids()
        if item_ids.dim() != 1:
            raise ValueError(f"item_ids must be [B], got {tuple(item_ids.shape)}")
        # Checked here, before the semantic-token lookup would fail on an out-of-range id with an IndexError.
        if bool(((item_ids < 1) | (item_ids > self.num_items)).any()):
            raise ValueError(f"streamed item ids must be in 1..{self.num_items}, got {item_ids.tolist()}")
        item_state, s = self.item_trunk.step(state.item, item_ids)
        semantic_state, semantic = None, None
        if self.use_semantic_trunk:
            semantic_state, semantic = self.semantic_trunk.step(
                state.semantic, self.semantic_tokens[item_ids]
            )
        hidden = s + self._classifier(s, semantic)
        return SolidStreamState(item=item_state, semantic=semantic_state), hidden

    # ------------------------------------------------------------------ training
    def auxiliary_loss(self, inputs: Tensor) -> Tensor | None:
        """λ · MSE between history items' embeddings and their semantic tokens' ones (SOLID's VQ loss)."""
        if self.vq_weight == 0.0:
            return None
        self._require_semantic_ids()
        items = inputs[inputs != 0]
        if items.numel() == 0:
            return None
        # The id (and text) part only: the code's own row is what it is pulled towards.
        item_vectors = SequentialRecommender.embed_items(self, items)
        code_vectors = self.semantic_trunk.item_embedding(self.semantic_tokens[items])
        return self.vq_weight * ((item_vectors - code_vectors) ** 2).mean()

    def per_row_auxiliary_loss(self, inputs: Tensor) -> Tensor | None:
        """The VQ term of each row alone ``[B]``: λ · mean over the row's history items of ‖e_i − s_tok(i)‖²
        / d (a row without items gives 0), so one device's term depends on its own sequence only."""
        if self.vq_weight == 0.0:
            return None
        self._require_semantic_ids()
        item_vectors = SequentialRecommender.embed_items(self, inputs)  # [B, L, d]
        code_vectors = self.semantic_trunk.item_embedding(self.semantic_tokens[inputs])
        squared = ((item_vectors - code_vectors) ** 2).mean(dim=-1)  # [B, L]
        real = (inputs != 0).to(squared.dtype)
        return self.vq_weight * (squared * real).sum(dim=-1) / real.sum(dim=-1).clamp(min=1.0)
