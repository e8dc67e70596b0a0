"""The fresh-popularity prior on the server (``privacy.fresh_prior``, :mod:`lsc4rec.models.fresh_popularity`).

After the last round's training the server sums the nodes' released fresh counts (as of the validation and
of the test items). The last round's evaluation messages carry the validation counts; each node replies with
the sums of its devices' validation NDCG@10 at every weight of ``privacy.fresh_prior_weights``, and the
weight whose summed value is largest wins (ties go to the smaller weight). From then on every ranking adds
``weight x log(1 + count)``: the server's validation of the last round (validation counts) and its test, and
the devices' test phase (test counts, sent with the test messages). The counts, the sums and the weight are
saved as ``fresh_prior.pt`` beside the run's models, so a saved model can be ranked as it was tested.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, Message

from lsc4rec.messages import (
    CONFIG,
    FRESH_PRIOR,
    FRESH_PRIOR_TEST,
    FRESH_PRIOR_VALID,
    FRESH_PRIOR_WEIGHT,
    METRICS,
    PHASE,
    PHASE_TEST,
    SERVER_ROUND,
    fresh_prior_gain_metric,
)
from lsc4rec.models.fresh_popularity import PriorRanking, log_prior
from lsc4rec.privacy import PrivacySettings
from lsc4rec.server.components.loop_hooks import LoopExtension, LoopState, Scorer

__all__ = ["PRIOR_FILE", "FreshPrior", "load_saved_prior"]

logger = logging.getLogger(__name__)

#: The saved prior's file name in the run's folder.
PRIOR_FILE = "fresh_prior.pt"


def load_saved_prior(run_dir: Path, phase: str = "test") -> torch.Tensor | None:
    """The term a run's rankings added in ``phase`` (``valid`` or ``test``), from its ``fresh_prior.pt``;
    None when the run had no prior or chose weight 0."""
    path = run_dir / PRIOR_FILE
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    weight = float(saved["weight"])
    return None if weight == 0 else weight * log_prior(saved[phase])


class FreshPrior(LoopExtension):
    """Sums the nodes' fresh counts, chooses the prior's weight from their gains, adds it to rankings."""

    name = "fresh_prior"

    def __init__(self, privacy: PrivacySettings, rounds: int, out: Path) -> None:
        """``privacy.fresh_prior*`` settings; the run's last round ``rounds``; ``out``: the run's folder."""
        self.weights = tuple(float(w) for w in privacy.fresh_prior_weights)
        self.rounds = rounds
        self.path = out / PRIOR_FILE
        self.counts: dict[str, torch.Tensor] = {}
        self.nodes = 0
        self.sums: dict[float, float] = {}
        self.weight: float | None = None
        self.row: dict[str, Any] | None = None

    def start(self, state: LoopState) -> None:
        """Resume: the counts and the weight, when the interrupted run got that far."""
        saved = None if state.restored is None else state.restored["extensions"].get(self.name)
        if saved:
            self.counts = {key: torch.as_tensor(value) for key, value in saved["counts"].items()}
            self.nodes = int(saved["nodes"])
            self.sums = {float(w): float(v) for w, v in saved["sums"].items()}
            self.weight = None if saved["weight"] is None else float(saved["weight"])

    def after_train(self, server_round: int, replies: Sequence[Message], arrays: ArrayRecord | None) -> None:
        """The last round: the sum of the released counts over the nodes that released them."""
        if server_round != self.rounds:
            return
        released = [
            r.content.array_records[FRESH_PRIOR]
            for r in replies
            if not r.has_error() and FRESH_PRIOR in r.content.array_records
        ]
        self.nodes = len(released)
        if not released:
            logger.warning("fresh prior: no node released counts in the last round; ranking without it")
            return
        self.counts = {
            phase: sum(torch.as_tensor(record[phase].numpy(), dtype=torch.float64) for record in released)
            for phase in (FRESH_PRIOR_VALID, FRESH_PRIOR_TEST)
        }

    def attach(self, messages: Sequence[Message], phase: str) -> None:
        """The last round's evaluation: the validation counts; the test: the test counts and the weight."""
        if phase != "evaluate" or not self.counts:
            return
        for message in messages:
            config = message.content[CONFIG]
            if str(config.get(PHASE, "")) == PHASE_TEST:
                if self.weight is None:
                    continue
                message.content[FRESH_PRIOR] = ArrayRecord(
                    {FRESH_PRIOR_TEST: Array(self.counts[FRESH_PRIOR_TEST].numpy())}
                )
                config[FRESH_PRIOR_WEIGHT] = self.weight
            elif int(config.get(SERVER_ROUND, 0)) == self.rounds:
                message.content[FRESH_PRIOR] = ArrayRecord(
                    {FRESH_PRIOR_VALID: Array(self.counts[FRESH_PRIOR_VALID].numpy())}
                )

    def after_evaluate(self, replies: Sequence[Message]) -> None:
        """The last round's evaluation: each weight's summed gains; the largest wins."""
        if not self.counts or self.weight is not None:
            return
        keys = {w: fresh_prior_gain_metric(w) for w in self.weights}
        answered = [
            r.content[METRICS]
            for r in replies
            if not r.has_error()
            and METRICS in r.content.metric_records
            and all(key in r.content[METRICS] for key in keys.values())
        ]
        if not answered:
            logger.warning("fresh prior: no node released its gains; ranking without the prior")
            self.weight = 0.0
        else:
            self.sums = {w: sum(float(m[key]) for m in answered) for w, key in keys.items()}
            self.weight = max(self.weights, key=lambda w: (self.sums[w], -w))
        self.row = {
            "weight": self.weight,
            "gain_sums": {f"{w:g}": v for w, v in self.sums.items()},
            "nodes_counted": self.nodes,
            "nodes_choosing": len(answered),
        }
        torch.save(
            {
                "weight": self.weight,
                "sums": {f"{w:g}": v for w, v in self.sums.items()},
                **{phase: counts.to(torch.float32) for phase, counts in self.counts.items()},
            },
            self.path,
        )

    def ranking(self, scorer: Scorer, phase: str) -> Scorer:
        """Once the weight is chosen, rankings add ``weight x log(1 + count)`` (validation or test counts)."""
        if not self.weight:
            return scorer
        counts = self.counts[FRESH_PRIOR_TEST if phase == "test" else FRESH_PRIOR_VALID]
        return PriorRanking(scorer, self.weight * log_prior(counts))

    def round_row(self) -> dict[str, Any] | None:
        """The last round's section: the weight, each weight's summed gains and the nodes counted."""
        row, self.row = self.row, None
        return row

    def progress(self, row: dict[str, Any]) -> str:
        """The chosen weight, in the last round's log line."""
        part = row.get(self.name)
        return "" if not part else f"fresh prior weight {part['weight']:g}"

    def state_dict(self) -> dict[str, Any]:
        """The counts, the nodes counted, the gains and the weight (a run resumed after the last round)."""
        return {
            "counts": {phase: counts.clone() for phase, counts in self.counts.items()},
            "nodes": self.nodes,
            "sums": {f"{w:g}": v for w, v in self.sums.items()},
            "weight": self.weight,
        }

    def summary(self, history: list[dict]) -> dict[str, Any]:
        """The weight the rankings used, each weight's summed gains, and how many nodes released counts."""
        return {
            "weight": self.weight,
            "weights": list(self.weights),
            "gain_sums": {f"{w:g}": v for w, v in self.sums.items()},
            "nodes_counted": self.nodes,
        }
