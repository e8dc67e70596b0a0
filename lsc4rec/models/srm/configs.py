"""Typed configs of the SRMs, one frozen dataclass per model (in the style of Hugging Face's ``*Config``).

A config holds a model's hyperparameters (the keys of ``model:`` in ``conf/model/*.yaml``, ``name`` aside)
with the model class's constructor defaults, and builds the model: ``SASRecConfig(num_blocks=1).build(
num_items, max_len)``. The history length is the run's (``data.max_len``), not the model's, so it is an
argument of :meth:`SRMConfig.build`. :func:`lsc4rec.settings.model_config` builds a config from the
composed ``model:`` section, refusing an unknown key and a value of the wrong type.

Adding a model: its config here (one field per constructor argument, same defaults, ``name`` the value of
``model.name``, ``build`` calling the constructor), one entry in :data:`SRM_CONFIGS`, and a
``conf/model/<name>.yaml``. A model outside the package needs none of that: :class:`CustomSRMConfig`
(``model=custom``) names its class by its dotted path (docs/custom_model.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from lsc4rec.models.srm.base import SequentialRecommender
from lsc4rec.models.srm.custom import (
    check_built_model,
    check_constructor_params,
    load_srm_class,
    takes_argument,
)
from lsc4rec.models.srm.din import DIN
from lsc4rec.models.srm.gru4rec import GRU4Rec
from lsc4rec.models.srm.sasrec import SASRec
from lsc4rec.models.srm.text_part import ITEM_TEXT_MODES
from lsc4rec.models.srm.ttt4rec import TTT4Rec, TTTOptions

__all__ = [
    "SRM_CONFIGS",
    "CustomSRMConfig",
    "DINConfig",
    "GRU4RecConfig",
    "SASRecConfig",
    "SRMConfig",
    "TTT4RecConfig",
    "TTTOptions",
]


@dataclass(frozen=True)
class SRMConfig:
    """The config of a sequential recommender: what every model config shares.

    ``name`` (a class attribute) is the model's value of ``model.name``; every subclass has an
    ``item_text`` field: ``none``, or ``projected`` (each item vector = its learned id row + P · its frozen
    text vector, :meth:`SequentialRecommender.attach_item_text`).
    """

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        mode = getattr(self, "item_text", "none")
        if mode not in ITEM_TEXT_MODES:
            raise ValueError(f"model.item_text={mode!r} is not one of {list(ITEM_TEXT_MODES)}")

    def build(self, num_items: int, max_len: int = 50) -> SequentialRecommender:
        """The model for a catalogue of ``num_items`` items and histories of at most ``max_len`` items."""
        raise NotImplementedError


@dataclass(frozen=True)
class SASRecConfig(SRMConfig):
    """SASRec (:class:`~lsc4rec.models.srm.sasrec.SASRec`): causal self-attention over the history.

    ``hidden_size``: width d of the item embeddings and every block; ``num_blocks``: self-attention blocks;
    ``num_heads``: attention heads per block (d must divide by it); ``dropout``: rate on the embeddings,
    attention weights and feed-forward; ``norm_first``: pre-LN blocks (False: post-LN, the paper's);
    ``scale_embeddings``: item embeddings times sqrt(d); ``intermediate_size``: feed-forward inner width
    (None = d); ``item_text``: none or projected.
    """

    name: ClassVar[str] = "sasrec"
    hidden_size: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    norm_first: bool = True
    scale_embeddings: bool = True
    intermediate_size: int | None = None
    item_text: str = "none"

    def build(self, num_items: int, max_len: int = 50) -> SequentialRecommender:
        """A :class:`SASRec` whose position table covers ``max_len`` items."""
        return SASRec(
            num_items,
            hidden_size=self.hidden_size,
            num_blocks=self.num_blocks,
            num_heads=self.num_heads,
            dropout=self.dropout,
            max_len=max_len,
            norm_first=self.norm_first,
            scale_embeddings=self.scale_embeddings,
            intermediate_size=self.intermediate_size,
        )


@dataclass(frozen=True)
class GRU4RecConfig(SRMConfig):
    """GRU4Rec (:class:`~lsc4rec.models.srm.gru4rec.GRU4Rec`): a GRU over the history's item embeddings.

    ``hidden_size``: width of the item embeddings; ``num_layers``: stacked GRU layers; ``dropout``: rate on
    the embeddings; ``gru_size``: the GRU's state width (None = hidden_size); ``item_text``: none or
    projected.
    """

    name: ClassVar[str] = "gru4rec"
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.3
    gru_size: int | None = None
    item_text: str = "none"

    def build(self, num_items: int, max_len: int = 50) -> SequentialRecommender:
        """A :class:`GRU4Rec` (it reads histories of any length: ``max_len`` is not used)."""
        return GRU4Rec(
            num_items,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            dropout=self.dropout,
            gru_size=self.gru_size,
        )


@dataclass(frozen=True)
class DINConfig(SRMConfig):
    """DIN (:class:`~lsc4rec.models.srm.din.DIN`): target attention of every candidate over the history.

    ``hidden_size``: width of the item embeddings; ``attention_sizes``: hidden layers of the activation
    unit's MLP; ``output_sizes``: hidden layers of the scoring MLP; ``activation``: the MLPs' activation
    (prelu, relu or sigmoid); ``dropout``: rate in the scoring MLP; ``score_chunk_pairs``: (user, candidate)
    pairs scored per chunk when ranking the whole catalogue (memory, not results); ``item_text``: none or
    projected.
    """

    name: ClassVar[str] = "din"
    hidden_size: int = 64
    attention_sizes: tuple[int, ...] = (80, 40)
    output_sizes: tuple[int, ...] = (200, 80)
    activation: str = "prelu"
    dropout: float = 0.2
    score_chunk_pairs: int = 2**19
    item_text: str = "none"

    def build(self, num_items: int, max_len: int = 50) -> SequentialRecommender:
        """A :class:`DIN` (it reads histories of any length: ``max_len`` is not used)."""
        return DIN(
            num_items,
            hidden_size=self.hidden_size,
            attention_sizes=self.attention_sizes,
            output_sizes=self.output_sizes,
            activation=self.activation,
            dropout=self.dropout,
            score_chunk_pairs=self.score_chunk_pairs,
        )


@dataclass(frozen=True)
class TTT4RecConfig(SRMConfig):
    """TTT4Rec (:class:`~lsc4rec.models.srm.ttt4rec.TTT4Rec`): blocks of RMSNorm -> TTT layer -> SwiGLU.

    ``hidden_size``: width d; ``num_blocks``: blocks; ``num_heads``: TTT heads (d must divide by it);
    ``intermediate_size``: SwiGLU feed-forward width; ``dropout``: rate on the embeddings; ``ttt``: the
    inner model (:class:`TTTOptions`: ``layer`` mlp or linear, ``mini_batch_size``, ``base_lr``,
    ``rope_theta``); ``item_text``: none or projected.
    """

    name: ClassVar[str] = "ttt4rec"
    hidden_size: int = 64
    num_blocks: int = 1
    num_heads: int = 4
    intermediate_size: int = 256
    dropout: float = 0.2
    ttt: TTTOptions = field(default_factory=TTTOptions)
    item_text: str = "none"

    def build(self, num_items: int, max_len: int = 50) -> SequentialRecommender:
        """A :class:`TTT4Rec` for histories of at most ``max_len`` items."""
        return TTT4Rec(
            num_items,
            hidden_size=self.hidden_size,
            num_blocks=self.num_blocks,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            dropout=self.dropout,
            max_len=max_len,
            ttt=self.ttt,
        )


@dataclass(frozen=True)
class CustomSRMConfig(SRMConfig):
    """A user's own SRM (docs/custom_model.md), its class named by its dotted path (``model=custom``).

    ``target``: ``package.module.Class``, a concrete :class:`SequentialRecommender` subclass importable
    wherever the model is built; ``params``: the keyword arguments of its constructor, which takes
    ``num_items`` first and is given ``max_len`` (the run's ``data.max_len``) when it takes that argument;
    ``item_text``: none or projected (the base class's text part). The path, the class and the keys are
    checked when the config is made, so a wrong one fails before any data is read.
    """

    name: ClassVar[str] = "custom"
    target: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    item_text: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_constructor_params(self.model_class, self.params, "model.params", self.label)

    @property
    def label(self) -> str:
        """How errors name the model: ``model.target=<the dotted path>``."""
        return f"model.target={self.target}"

    @property
    def model_class(self) -> type[SequentialRecommender]:
        """The class ``target`` names (imported once; later look-ups hit the module cache)."""
        return load_srm_class(self.target)

    def build(self, num_items: int, max_len: int = 50) -> SequentialRecommender:
        """``target(num_items, **params)``, plus ``max_len`` when its constructor takes it; checked to have
        the item table the system keys on (:func:`~lsc4rec.models.srm.custom.check_built_model`)."""
        cls = self.model_class
        kwargs = dict(self.params)
        if takes_argument(cls, "max_len"):
            kwargs["max_len"] = max_len
        try:
            model = cls(num_items, **kwargs)
        except Exception as error:  # the user's constructor may raise any type
            # A value its constructor refuses: name the model and the call, keep the cause for tracebacks.
            raise ValueError(
                f"{self.label}: {cls.__name__}({num_items}, **{kwargs}) failed: {error}"
            ) from error
        check_built_model(model, num_items, self.label)
        return model


#: The config class of every SRM, by ``model.name``.
SRM_CONFIGS: dict[str, type[SRMConfig]] = {
    config.name: config for config in (SASRecConfig, GRU4RecConfig, DINConfig, TTT4RecConfig)
}
