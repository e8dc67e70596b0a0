"""A learned request policy: predict how much a fresh list would improve a device's ranking.

IntellectReq-style (the LSC4Rec authors' WWW'24 follow-up learns when a device should call the cloud): instead
of one hand-made inconsistency score, a ridge regression maps what a device knows about its current list to
the gain in NDCG@10 a fresh list brought at a moment where both lists and the true next item are known (the
validation moment: the cloud logs a fresh list beside the stale one, the device reports what came next). Its
prediction is then the device's request score, calibrated to the request ratio like any other score.

Features (:data:`FEATURE_NAMES`), all computable on the device from its SRM, its history and the cloud's list:
the SRM's probability mass on its own top-k that the list lacks for k = n/5, n/2, n, 2n, 4n (n = list length),
the SRM's mass outside the list, the SRM's top-1 and top-10 mass, its largest probability inside the list, the
share of non-empty slots, the history length, the LLM's top softmax probability within its list and the
rank displacement between the two orders; probability-like features also enter as logarithms.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lsc4rec.client.collab.request_policy import inconsistency, list_probabilities, uncovered_by_rank

__all__ = ["FEATURE_NAMES", "LearnedRequestModel", "request_features"]

_BASE_FEATURES = (
    "uncovered_mass_n/5",
    "uncovered_mass_n/2",
    "uncovered_mass_n",
    "uncovered_mass_2n",
    "uncovered_mass_4n",
    "missing_mass",
    "srm_top1",
    "srm_top10_mass",
    "srm_best_in_list",
    "list_fill",
    "log_history_length",
    "llm_top1_in_list",
    "footrule",
)
_LOGGED = (
    "uncovered_mass_n",
    "uncovered_mass_4n",
    "missing_mass",
    "srm_top1",
    "srm_top10_mass",
    "srm_best_in_list",
)
#: Feature columns, in order: the base features, then the logarithms of the probability-like ones.
FEATURE_NAMES = _BASE_FEATURES + tuple(f"log_{name}" for name in _LOGGED)


@torch.no_grad()
def request_features(
    items: Tensor, srm_scores: Tensor, llm_scores: Tensor, catalogue_scores: Tensor, histories: Tensor
) -> Tensor:
    """Features ``[B, len(FEATURE_NAMES)]`` of each device's list ``items [B, n]`` (0 = empty slot).

    ``srm_scores``/``llm_scores [B, n]`` score the list (-inf on empty slots), ``catalogue_scores
    [B, num_items + 1]`` are the SRM's scores of every item (-inf for padding and the history) and
    ``histories [B, L]`` the left-padded real-time histories.
    """
    valid = items > 0
    n = items.shape[1]
    probabilities = torch.softmax(catalogue_scores.float(), dim=1)
    top = probabilities.topk(min(10, probabilities.shape[1]), dim=1).values
    uncovered = uncovered_by_rank(probabilities, items, 4 * n)
    in_list = list_probabilities(probabilities, items)
    llm_probabilities = torch.softmax(llm_scores.float().masked_fill(~valid, float("-inf")), dim=1)
    base = {
        "uncovered_mass_n/5": uncovered[:, : max(n // 5, 1)].sum(dim=1),
        "uncovered_mass_n/2": uncovered[:, : max(n // 2, 1)].sum(dim=1),
        "uncovered_mass_n": uncovered[:, :n].sum(dim=1),
        "uncovered_mass_2n": uncovered[:, : 2 * n].sum(dim=1),
        "uncovered_mass_4n": uncovered.sum(dim=1),
        "missing_mass": (1.0 - in_list.sum(dim=1)).clamp(min=0.0),
        "srm_top1": top[:, 0],
        "srm_top10_mass": top.sum(dim=1),
        "srm_best_in_list": in_list.max(dim=1).values,
        "list_fill": valid.float().mean(dim=1),
        "log_history_length": torch.log1p((histories > 0).sum(dim=1).float()),
        "llm_top1_in_list": torch.nan_to_num(llm_probabilities, nan=0.0).max(dim=1).values,
        "footrule": inconsistency(items, srm_scores, "footrule"),
    }
    columns = [base[name] for name in _BASE_FEATURES]
    columns += [torch.log(base[name].clamp(min=1e-6)) for name in _LOGGED]
    return torch.stack(columns, dim=1)


@dataclass
class LearnedRequestModel:
    """Ridge regression from standardised :func:`request_features` to the expected gain of a fresh list."""

    mean: list[float]
    std: list[float]
    weights: list[float]
    bias: float
    feature_names: tuple[str, ...] = FEATURE_NAMES

    @classmethod
    def fit(cls, features: Tensor, gains: Tensor, ridge: float = 1.0) -> LearnedRequestModel:
        """Least squares with an L2 penalty ``ridge`` on ``gains [N]`` (closed form, deterministic)."""
        x = features.double()
        y = gains.double().flatten()
        if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES) or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"request model: features {tuple(features.shape)} must be [N, {len(FEATURE_NAMES)}] "
                f"with one gain per row (got {y.shape[0]} gains)"
            )
        if x.shape[0] < 2:
            raise ValueError(f"request model: need at least 2 devices to fit, got {x.shape[0]}")
        if not torch.isfinite(x).all() or not torch.isfinite(y).all():
            raise ValueError("request model: features and gains must be finite")
        mean, std = x.mean(dim=0), x.std(dim=0).clamp(min=1e-9)
        z = (x - mean) / std
        target = y - y.mean()
        gram = z.T @ z + ridge * torch.eye(z.shape[1], dtype=z.dtype)
        weights = torch.linalg.solve(gram, z.T @ target)
        return cls(mean.tolist(), std.tolist(), weights.tolist(), float(y.mean()))

    def predict(self, features: Tensor) -> Tensor:
        """Predicted gain ``[B]`` of a fresh list for each device (higher = request first)."""
        if features.ndim != 2 or features.shape[1] != len(self.weights):
            raise ValueError(
                f"request model expects features [B, {len(self.weights)}], got {tuple(features.shape)}"
            )
        mean = torch.tensor(self.mean, dtype=torch.float64)
        std = torch.tensor(self.std, dtype=torch.float64)
        weights = torch.tensor(self.weights, dtype=torch.float64)
        return (((features.double() - mean) / std) @ weights + self.bias).float()

    def save(self, path: Path) -> None:
        """Write the model as JSON (what a deployment ships to its devices)."""
        Path(path).write_text(
            json.dumps({**self.__dict__, "feature_names": list(self.feature_names)}, indent=1)
        )

    @classmethod
    def load(cls, path: Path) -> LearnedRequestModel:
        """Read a model written by :meth:`save`; a missing file or other features are named errors."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"request.model_path: no request model at {path}")
        try:
            raw = json.loads(path.read_text())
            model = cls(
                mean=[float(v) for v in raw["mean"]],
                std=[float(v) for v in raw["std"]],
                weights=[float(v) for v in raw["weights"]],
                bias=float(raw["bias"]),
                feature_names=tuple(raw["feature_names"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: not a request model ({error})") from None
        if model.feature_names != FEATURE_NAMES or len(model.weights) != len(FEATURE_NAMES):
            raise ValueError(
                f"{path}: request model features {model.feature_names} differ from {FEATURE_NAMES}"
            )
        if not all(math.isfinite(v) for v in [*model.mean, *model.std, *model.weights, model.bias]):
            raise ValueError(f"{path}: request model holds non-finite numbers")
        return model
