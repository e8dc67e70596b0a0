"""The shared protocol of the SOLID and MergeNet experiments: a device's data, slices, equal-cost variants.

Both experiments ask how much of the cloud's knowledge (item text, the text-grounded LLM) reaches a device
SRM, and both measure it the same way:

- **The device's data** (:func:`device_data`): a seeded share of the users (``device_users``; below 1 a sparse
  device), with the catalogue's newest items (``new_item_share``) held out of its training sequences.
- **Slices** (:mod:`lsc4rec.data.slices`): all, rare targets, cold users, new items (and their complements).
- **Equal cost** (:func:`train_variant`): every variant trains under the same settings and early stopping; the
  first trained variant (the base SRM) fixes the budget, and each other variant is also reported at its best
  validation epoch within the base's number of epochs and within the base's training seconds. Test is read
  once per reported point, every point selected on validation.
- **A text-initialised SRM** (:func:`text_initialised_srm`): the base SRM with its item table started from
  projected text vectors, the reference for how much text knowledge the device can hold by itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lsc4rec.data import LeaveOneOutSplit, TrainBatches
from lsc4rec.data.slices import NewItems, evaluation_slices, newest_items, without_items
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.settings import CentralizedSettings
from lsc4rec.text.text_settings import TextSettings
from lsc4rec.training import (
    EvalSet,
    TrainingHook,
    TrainSettings,
    build_eval_sets,
    fit,
    metrics_by_slice,
    start_item_table_from_text,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DeviceData",
    "device_data",
    "device_users",
    "slice_metrics",
    "text_initialised_srm",
    "train_variant",
]

# The slices a result table shows, in order (the complements stay in metrics.json).
HEADLINE_SLICES = ("all", "rare_targets", "cold_users", "new_items")


def device_users(
    split: LeaveOneOutSplit, fraction: float, seed: int, key: str = "device_users"
) -> LeaveOneOutSplit:
    """The users a device SRM trains on and is tested on: a seeded ``fraction`` of all (1.0 = everyone)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"{key} must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return split
    count = max(1, round(fraction * len(split.train)))
    users = np.sort(np.random.default_rng(seed).permutation(len(split.train))[:count])
    return split.subset(users.tolist())


@dataclass
class DeviceData:
    """What a device trains and is measured on."""

    split: LeaveOneOutSplit
    train_sequences: list[list[int]]
    new_items: NewItems | None
    settings: TrainSettings
    train: TrainBatches
    valid: EvalSet
    test: EvalSet
    slices: dict[str, list[int]]
    ks: tuple[int, ...]

    def report(self) -> dict[str, Any]:
        """Users, training interactions, new items and slice sizes, JSON-ready."""
        return {
            "users": len(self.split.train),
            "train_interactions": sum(len(s) for s in self.train_sequences),
            "new_items": None if self.new_items is None else self.new_items.report(),
            "slice_users": {name: len(users) for name, users in self.slices.items()},
        }


def device_data(
    everyone: LeaveOneOutSplit,
    run: CentralizedSettings,
    settings: TrainSettings,
    fraction: float,
    new_item_share: float,
    fraction_key: str = "device_users",
) -> DeviceData:
    """The device's users (``fraction`` of ``everyone``), its training sequences without the newest
    ``new_item_share`` of the catalogue (0 = none held out), evaluation sets and slices."""
    seed = run.seed
    # New items are chosen on the whole catalogue's history, before sampling users: a property of time.
    new = newest_items(everyone, new_item_share, seed) if new_item_share > 0 else None
    split = device_users(everyone, fraction, seed, fraction_key)
    sequences = split.train_sequences()
    if new is not None:
        sequences = [s for s in without_items(sequences, new.items) if len(s) >= 2]
    max_len = run.data.max_len
    valid, test = build_eval_sets(split, run.eval, max_len)
    data = DeviceData(
        split=split,
        train_sequences=sequences,
        new_items=new,
        settings=settings,
        train=TrainBatches(sequences, max_len, settings.batch_size, seed=seed),
        valid=valid,
        test=test,
        slices=evaluation_slices(split, sequences, new),
        ks=run.eval.ks,
    )
    logger.info("device data: %s", data.report())
    return data


def slice_metrics(
    model: SequentialRecommender, data: DeviceData, ks: Sequence[int] = (10,)
) -> dict[str, dict[str, float]]:
    """Test NDCG/HR@k (full ranking) on every slice of ``data``."""
    return metrics_by_slice(model, data.test, data.slices, ks)


def parameter_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """Parameters and their float32 bytes (what one model exchange costs on the wire)."""
    count = sum(p.numel() for p in model.parameters())
    return count, 4 * count


def train_variant(
    name: str,
    model: SequentialRecommender,
    data: DeviceData,
    seed: int,
    hooks: Sequence[TrainingHook] = (),
    budget: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Train ``model`` with early stopping; test metrics by slice at its best epoch and within ``budget``.

    ``budget`` (``{"epochs": E, "seconds": T}``, usually the base SRM's) adds ``equal_epochs`` and
    ``equal_seconds``: the best validation epoch among those finished within E epochs / T training seconds.
    """
    parameters, wire = parameter_bytes(model)
    logger.info("training %s (%d parameters)", name, parameters)
    budget = dict(budget or {})
    start = time.perf_counter()
    result = fit(
        model,
        data.train,
        data.valid,
        data.settings,
        seed=seed,
        ks=data.ks,
        hooks=hooks,
        epoch_budget=int(budget["epochs"]) if "epochs" in budget else None,
        seconds_budget=float(budget["seconds"]) if "seconds" in budget else None,
    )
    seconds = time.perf_counter() - start
    device = data.settings.resolve_device()
    model.to(device)
    epoch_seconds = [float(r["train_seconds"]) for r in result.history]
    summary: dict[str, Any] = {
        "parameters": parameters,
        "bytes_per_model": wire,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "seconds_per_epoch": round(sum(epoch_seconds) / max(len(epoch_seconds), 1), 2),
        "train_seconds": round(seconds, 1),
        "seconds_to_best": round(result.seconds_to_best, 1),
        "stopped_because": result.stopped_because,
        "valid_NDCG@10": round(result.best_valid["full"]["NDCG@10"], 4),
        "test": slice_metrics(model, data),
    }
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    for key, label in (("epochs", "equal_epochs"), ("seconds", "equal_seconds")):
        if key not in budget:
            continue
        held = result.within.get(key)
        if held is None:
            summary[label] = {"budget": budget[key], "epoch": 0, "test": None}
            continue
        if held.epoch == result.best_epoch:
            test = summary["test"]
        else:
            model.load_state_dict(held.state)
            test = slice_metrics(model, data)
        summary[label] = {
            "budget": round(float(budget[key]), 1),
            "epoch": held.epoch,
            "valid_NDCG@10": round(held.valid["full"]["NDCG@10"], 4),
            "test": test,
        }
    model.load_state_dict(best_state)
    model.to("cpu")
    logger.info("%s: test %s", name, {k: summary["test"][k] for k in HEADLINE_SLICES if k in summary["test"]})
    return summary


def text_initialised_srm(
    model: SequentialRecommender, split: LeaveOneOutSplit, text_cfg: TextSettings
) -> dict[str, Any]:
    """Start ``model``'s item table from the items' projected text vectors (``text.*`` encoder and fields)."""
    return start_item_table_from_text(model, split, text_cfg, split.name, "the text-initialised SRM")
