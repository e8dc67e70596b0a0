"""Small on-device sequential recommenders (SRMs) and their training losses.

``build_srm("sasrec" | "gru4rec" | "din", num_items, **hyperparameters)`` builds a model; every model
implements :class:`SequentialRecommender`. Losses are looked up by name with :func:`compute_loss`.
"""

from __future__ import annotations

import inspect
from typing import Any

from lsc4rec.models.srm.base import ITEM_TABLE_KEY, SequentialRecommender
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
    "GRU4Rec",
    "SASRec",
    "SequentialRecommender",
    "TTT4Rec",
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
    """
    try:
        cls = SRM_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown SRM {name!r}; valid names: {sorted(SRM_CLASSES)}") from None
    accepted = [p for p in inspect.signature(cls).parameters if p != "num_items"]
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise TypeError(f"{name} got unknown hyperparameter(s) {unknown}; accepted: {accepted}")
    return cls(num_items, **kwargs)
