"""MergeNet: a parameter adapter carrying knowledge between heterogeneous cloud and device models.

- :mod:`~lsc4rec.models.mergenet.adapter`: knowledge transfer layers, the adapter, low-rank source factors.
- :mod:`~lsc4rec.models.mergenet.transfer`: parameter pairing, the transfer cycle (a training hook), the
  source trained alongside, and the knowledge-distillation baseline.
"""

from lsc4rec.models.mergenet.adapter import KnowledgeTransferLayer, ParameterAdapter, low_rank_factors
from lsc4rec.models.mergenet.transfer import (
    Distillation,
    ListDistillation,
    MergeNetTransfer,
    ParameterSlice,
    SourceTraining,
    resolve_slice,
)

__all__ = [
    "Distillation",
    "KnowledgeTransferLayer",
    "ListDistillation",
    "MergeNetTransfer",
    "ParameterAdapter",
    "ParameterSlice",
    "SourceTraining",
    "low_rank_factors",
    "resolve_slice",
]
