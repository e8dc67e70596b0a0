"""Small on-device sequential recommenders (SRMs) and their training losses.

Each model has a typed config (:mod:`lsc4rec.models.srm.configs`, e.g. :class:`SASRecConfig`) that a run
builds it from: ``config.build(num_items, max_len)``. ``build_srm("sasrec", num_items, **hyperparameters)``
is the shortcut for code and tests that name a model directly. Every model implements
:class:`SequentialRecommender`; a user's own model, outside the package, is named by its dotted path
(:class:`CustomSRMConfig`, ``model=custom``; docs/custom_model.md). Losses are looked up by name with
:func:`compute_loss`.
"""

from __future__ import annotations

from typing import Any

from lsc4rec.models.srm.base import ITEM_TABLE_KEY, SequentialRecommender
from lsc4rec.models.srm.configs import (
    SRM_CONFIGS,
    CustomSRMConfig,
    DINConfig,
    GRU4RecConfig,
    SASRecConfig,
    SRMConfig,
    TTT4RecConfig,
    TTTOptions,
)
from lsc4rec.models.srm.din import DIN
from lsc4rec.models.srm.gru4rec import GRU4Rec
from lsc4rec.models.srm.losses import (
    LOSSES,
    bce_loss,
    candidate_rerank_loss,
    compute_loss,
    full_softmax_loss,
    list_distillation_loss,
    sample_negatives_per_position,
    sample_shared_negatives,
    sampled_softmax_loss,
)
from lsc4rec.models.srm.sasrec import SASRec
from lsc4rec.models.srm.ttt4rec import TTT4Rec

__all__ = [
    "DIN",
    "ITEM_TABLE_KEY",
    "LOSSES",
    "SRM_CLASSES",
    "SRM_CONFIGS",
    "CustomSRMConfig",
    "DINConfig",
    "GRU4Rec",
    "GRU4RecConfig",
    "SASRec",
    "SASRecConfig",
    "SRMConfig",
    "SequentialRecommender",
    "TTT4Rec",
    "TTT4RecConfig",
    "TTTOptions",
    "bce_loss",
    "build_srm",
    "candidate_rerank_loss",
    "compute_loss",
    "full_softmax_loss",
    "list_distillation_loss",
    "sample_negatives_per_position",
    "sample_shared_negatives",
    "sampled_softmax_loss",
]

SRM_CLASSES: dict[str, type[SequentialRecommender]] = {
    "sasrec": SASRec,
    "gru4rec": GRU4Rec,
    "din": DIN,
    "ttt4rec": TTT4Rec,
}


def build_srm(name: str, num_items: int, **kwargs: Any) -> SequentialRecommender:
    """Build the SRM called ``name`` for a catalogue of ``num_items`` items with the given hyperparameters.

    Raises ``ValueError`` for an unknown name and ``TypeError`` for a hyperparameter the model does not take.
    A run builds its model from its typed config instead (:mod:`lsc4rec.models.srm.configs`).
    """
    try:
        cls = SRM_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown SRM {name!r}; valid names: {sorted(SRM_CLASSES)}") from None
    return cls(num_items, **kwargs)
