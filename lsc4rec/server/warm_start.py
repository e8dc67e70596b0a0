"""Warm start of the global SRM on the cloud's own stale data, before any federated round.

In LSC4Rec the cloud already holds every user's history up to ``collab.cloud_lag`` interactions ago
(:mod:`lsc4rec.data.staleness`). Training the first global SRM on that view costs the devices nothing and
reveals nothing new about their fresh data; the federated rounds (private or not) then start from it instead
of from random weights. Early stopping reads the cloud's own validation items (the last item it has seen of
each user), never the devices' validation or test items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lsc4rec.data import LeaveOneOutSplit, TrainBatches
from lsc4rec.data.staleness import cloud_view_for
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.server.components.checkpoint_files import check_weights
from lsc4rec.settings import FederatedRunSettings
from lsc4rec.training import EvalSet, fit

logger = logging.getLogger(__name__)


def warm_start_on_cloud(
    model: SequentialRecommender,
    run: FederatedRunSettings,
    split: LeaveOneOutSplit,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place for up to ``federated.warm_start_epochs`` on the cloud's stale sequences.

    Returns what happened: epochs run, best epoch, the cloud-validation NDCG@10 and seconds. ``on_epoch``:
    called with each epoch's record (the run's tracker).
    """
    epochs = run.federated.warm_start_epochs
    view = cloud_view_for(split, run.collab, run.seed, run.federated.replay)
    if not view.valid_targets:
        raise ValueError(
            f"federated.warm_start_epochs={epochs}: the cloud's stale view (collab.cloud_lag="
            f"{run.collab.cloud_lag}) leaves no user with a validation item"
        )
    max_len = run.data.max_len
    settings = replace(run.train, epochs=epochs, progress=False)
    batches = TrainBatches(view.train, max_len, settings.batch_size, seed=run.seed)
    valid = EvalSet.build(
        "cloud-valid",
        view.valid_histories,
        view.valid_targets,
        split.num_items,
        max_len,
        run.eval.batch_size,
        exclude_history=run.eval.exclude_history,
    )
    logger.info(
        "warm start: training the global SRM for up to %d epochs on the cloud's stale copy of %d users",
        epochs,
        len(view.train),
    )
    result = fit(model, batches, valid, settings, seed=run.seed, on_epoch=on_epoch)
    report = {
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "cloud_valid_NDCG@10": result.best_valid["full"]["NDCG@10"],
        "cloud_lag": run.collab.cloud_lag,
        "cloud_users": run.collab.cloud_users,
        "cloud_training_sequences": len(view.train),
        "seconds": round(result.train_seconds, 1),
    }
    logger.info("warm start on the cloud's stale data: %s", report)
    return report


def load_initial_weights(model: SequentialRecommender, path: Path) -> None:
    """Load ``federated.initial_weights`` (a ``torch.save``-d state dict) into the global model.

    Raises FileNotFoundError / ValueError naming the file and the mismatch, never a half-loaded model.
    """
    if not path.is_file():
        raise FileNotFoundError(f"federated.initial_weights: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt file
        raise ValueError(
            f"federated.initial_weights: {path} is not a readable state dict ({error})"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(
            f"federated.initial_weights: {path} holds a {type(state).__name__}, not a state dict"
        )
    check_weights(path, "federated.initial_weights", state, model.state_dict(), error=ValueError)
    model.load_state_dict(state)
