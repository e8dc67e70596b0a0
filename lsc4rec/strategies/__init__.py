"""Flower strategies for aggregating device SRM updates."""

from lsc4rec.strategies.aggregation import AGGREGATION_RULES, aggregate_arrays, count_weighted_rows
from lsc4rec.strategies.server_optimizer import SERVER_OPTIMIZERS, ServerOptimizer
from lsc4rec.strategies.srm import NodeFailure, SRMStrategy

__all__ = [
    "AGGREGATION_RULES",
    "SERVER_OPTIMIZERS",
    "NodeFailure",
    "SRMStrategy",
    "ServerOptimizer",
    "aggregate_arrays",
    "count_weighted_rows",
]
