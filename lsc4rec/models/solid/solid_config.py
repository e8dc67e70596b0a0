"""Typed settings of SOLID: the dual parameter model's config (``conf/model/solid.yaml``, ``model=solid``)
and the semantic codebook's settings (``conf/solid/default.yaml``, ``solid.*``).

SOLID wraps a base SRM: its ``base_params`` is the base's own config (:mod:`lsc4rec.models.srm.configs`)
with SOLID's ``hidden_size`` and ``dropout`` (a key of ``model.base_params`` overrides them for the trunks).
:func:`lsc4rec.settings.model_config` builds it from the composed ``model:`` section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from lsc4rec.models.solid.dual_model import SolidRecommender, check_base, is_custom_base
from lsc4rec.models.srm import CustomSRMConfig, SASRecConfig, SequentialRecommender, SRMConfig

__all__ = ["FEATURE_SOURCES", "QUANTIZERS", "SolidConfig", "SolidSettings"]

#: Item representations the codebook can quantise (``solid.features``).
FEATURE_SOURCES = ("embedding", "attributes", "text")
#: Codebook quantizers (``solid.quantizer``).
QUANTIZERS = ("kmeans", "rvq")


@dataclass(frozen=True)
class SolidSettings:
    """SOLID's semantic codebook (``solid.*``): what it quantises, how, and how the federation syncs it.

    ``features``: the sources of each item's representation (embedding: a trained SRM's item table,
    attributes: item attributes or genres, text: item-text vectors); ``feature_weights``: relative weight of
    each source after scaling every block to unit mean row norm; ``attribute_dim``: width of the attribute
    block; ``text_model``: the text encoder of the text source (None = minilm); ``text_fields``: item-text
    fields joined into each item's line (None = title, brand, categories); ``unseen_from_text``: with both
    embedding and text, items no training sequence holds get their embedding part predicted from text;
    ``embedding_source``: ``model.pt`` of a trained SRM feeding the embedding source; ``quantizer``: kmeans
    (one level) or rvq (residual VQ, one level per size); ``codebook_sizes``: codes per level;
    ``kmeans_iterations``: Lloyd iterations of each fit; ``sync_momentum``: share of the old centroid kept
    per federated update; ``reseed_scale``: how far a re-seeded dead code moves from its donor (in its RMS
    radius); ``sync_every``: rounds between codebook updates (0 = never after the first version).
    """

    features: tuple[str, ...] = ("attributes",)
    feature_weights: dict[str, float] = field(default_factory=dict)
    attribute_dim: int = 64
    text_model: str | None = None
    text_fields: tuple[str, ...] | None = None
    unseen_from_text: bool = True
    embedding_source: str | None = None
    quantizer: str = "rvq"
    codebook_sizes: tuple[int, ...] = (256, 32)
    kmeans_iterations: int = 50
    sync_momentum: float = 0.0
    reseed_scale: float = 0.5
    sync_every: int = 1


@dataclass(frozen=True)
class SolidConfig(SRMConfig):
    """SOLID (:class:`~lsc4rec.models.solid.dual_model.SolidRecommender`) on a base sequence encoder.

    ``base``: the trunks' architecture (sasrec, gru4rec or ttt4rec, or the dotted path of a user's own
    sequence encoder: docs/custom_model.md); ``hidden_size``: width d of the trunks
    and the generated classifier; ``dropout``: the trunks' dropout; ``codebook_sizes``: the semantic
    codebook's level sizes (``solid.codebook_sizes``); ``trunk_levels``: codes of each semantic id the
    semantic trunk's tokens are made of; ``meta_size``: width of the metacodes the generators read;
    ``generated_layers``: generated classifier layers; ``clip``: bound t on the item-generated parameters;
    ``vq_weight``: weight lambda of the VQ loss; ``use_codebook`` / ``semantic_trunk`` / ``generation``:
    the ablations (False: no semantic ids / no semantic trunk / a static classifier); ``semantic_scores``:
    an item's score adds its semantic token's row; ``base_params``: the base's config (its own keys, e.g.
    ``num_blocks``); ``item_text``: none or projected.
    """

    name: ClassVar[str] = "solid"
    base: str = "sasrec"
    hidden_size: int = 64
    dropout: float = 0.2
    codebook_sizes: tuple[int, ...] = (64,)
    trunk_levels: int = 1
    meta_size: int = 16
    generated_layers: int = 2
    clip: float = 0.01
    vq_weight: float = 0.1
    use_codebook: bool = True
    semantic_trunk: bool = True
    generation: bool = True
    semantic_scores: bool = False
    base_params: SRMConfig = field(default_factory=SASRecConfig)
    item_text: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_base(self.base)
        if is_custom_base(self.base):
            params = self.base_params
            if not isinstance(params, CustomSRMConfig) or params.target != self.base:
                raise ValueError(
                    f"model.base_params is a {params.name} config, but model.base={self.base} "
                    "(a user's class: a custom config with that target)"
                )
        elif self.base_params.name != self.base:
            raise ValueError(
                f"model.base_params is a {self.base_params.name} config, but model.base={self.base}"
            )

    def build(self, num_items: int, max_len: int = 50) -> SequentialRecommender:
        """A :class:`SolidRecommender` whose trunks are ``base_params`` built for ``max_len`` items."""
        return SolidRecommender(
            num_items,
            base=self.base,
            hidden_size=self.hidden_size,
            dropout=self.dropout,
            codebook_sizes=self.codebook_sizes,
            trunk_levels=self.trunk_levels,
            meta_size=self.meta_size,
            generated_layers=self.generated_layers,
            clip=self.clip,
            vq_weight=self.vq_weight,
            use_codebook=self.use_codebook,
            semantic_trunk=self.semantic_trunk,
            generation=self.generation,
            semantic_scores=self.semantic_scores,
            base_params=self.base_params,
            max_len=max_len,
        )
