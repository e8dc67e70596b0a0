"""Train the cloud LLM on (stale) item sequences with next-token cross-entropy and early stopping.

Validation ranks the held-out next item among all items (full ranking, history excluded) from the LLM's
next-item log-probabilities, the same protocol as the SRMs, so the two are directly comparable. With
multi-token item codes it ranks within the top ``candidates`` of the constrained beam search instead.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from lsc4rec.data import TrainBatches, pad_left
from lsc4rec.metrics import DEFAULT_KS, RankingAccumulator, full_ranking_ranks, list_ranks
from lsc4rec.models.llm.llm_settings import LLMTrainSettings
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.torch_device import resolve_device

logger = logging.getLogger(__name__)

__all__ = ["LLMFitResult", "LLMTrainSettings", "evaluate_llm", "fit_llm"]


@dataclass
class LLMFitResult:
    """The best epoch, its validation metrics and the per-epoch history."""

    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    seconds_to_best: float = 0.0


def evaluate_llm(
    llm: CloudLLM,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int],
    ks: Sequence[int] = DEFAULT_KS,
    candidates: int = 50,
    batch_size: int = 512,
) -> dict[str, float]:
    """HR/NDCG/MRR@K of the LLM's next-item ranking (full ranking; history items excluded).

    Also ``Recall@{candidates}``: how often the target is among the top ``candidates``, which bounds
    anything a reranker of the LLM's candidate list can reach.
    """
    accumulator = RankingAccumulator(ks)
    in_list = 0
    for start in range(0, len(targets), batch_size):
        padded = pad_left(histories[start : start + batch_size], llm.max_len)
        target = torch.as_tensor(targets[start : start + batch_size], dtype=torch.long)
        if llm.tokenizer.depth == 1:
            # The SRM protocol: history items leave the ranking (a re-consumed target is a miss, as RecBole).
            ranks = full_ranking_ranks(llm.item_scores(padded), target, exclude=padded)
        else:
            items, _ = llm.recommend_tensor(padded, candidates)
            ranks = list_ranks(items, target)
        accumulator.add(ranks)
        in_list += int((ranks < candidates).sum())
    metrics = accumulator.compute()
    metrics[f"Recall@{candidates}"] = in_list / max(len(targets), 1)
    return metrics


def _cpu_copy(llm: CloudLLM) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in llm.state_dict().items()}


def _train_llm_epoch(
    llm: CloudLLM,
    batches: TrainBatches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    settings: LLMTrainSettings,
    epoch: int,
    hooks: Sequence[Any],
) -> float:
    """One epoch of next-token training over ``batches``; the mean loss per sequence."""
    llm.train()
    batches.set_epoch(epoch)
    total, count = 0.0, 0
    progress = tqdm(batches, desc=f"LLM epoch {epoch}", leave=False, disable=not settings.progress)
    for inputs, targets in progress:
        # The full sequence of each row: its inputs plus the last target (rows are right-aligned).
        rows = torch.cat([inputs, targets[:, -1:]], dim=1)
        for hook in hooks:
            hook.before_step(llm, rows, None)
        loss = llm.loss(rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llm.parameters(), settings.grad_clip)
        optimizer.step()
        for hook in hooks:
            hook.after_step(llm)
        scheduler.step()
        total += float(loss.detach()) * rows.shape[0]
        count += rows.shape[0]
    return total / max(count, 1)


def fit_llm(
    llm: CloudLLM,
    sequences: Sequence[Sequence[int]],
    valid_histories: Sequence[Sequence[int]],
    valid_targets: Sequence[int],
    settings: LLMTrainSettings,
    seed: int = 0,
    selection_metric: str = "NDCG@10",
    on_epoch: Callable[[dict], None] | None = None,
    hooks: Sequence[Any] = (),
) -> LLMFitResult:
    """Train ``llm`` on ``sequences`` (AdamW, linear warm-up, clipping); keep the best validation epoch.

    Trains on ``settings.device``; the model ends on the device it came in on, holding the best weights.
    ``hooks`` (``before_step(llm, rows, None)`` / ``after_step(llm)``, e.g. a MergeNet transfer into the LLM)
    act around every step.
    """
    home = llm.device
    llm.to(resolve_device(settings.device, "llm.train.device"))
    batches = TrainBatches(sequences, llm.max_len, settings.batch_size, seed=seed)
    if batches.num_examples == 0:
        raise ValueError("the cloud LLM has no training sequence with 2+ items")
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(llm.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = max(settings.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    best_value, best_epoch, since_best = -math.inf, 0, 0
    best_state = _cpu_copy(llm)
    best_valid: dict[str, float] = {}
    history: list[dict] = []
    start = time.perf_counter()
    seconds_to_best = 0.0
    for epoch in range(1, settings.epochs + 1):
        train_loss = _train_llm_epoch(llm, batches, optimizer, scheduler, settings, epoch, hooks)
        valid = evaluate_llm(llm, valid_histories, valid_targets, candidates=settings.candidates)
        value = valid[selection_metric]
        record = {"epoch": epoch, "train_loss": train_loss, "valid": valid}
        record["elapsed_seconds"] = time.perf_counter() - start
        history.append(record)
        if value > best_value:
            best_value, best_epoch, since_best, best_valid = value, epoch, 0, valid
            best_state = _cpu_copy(llm)
            seconds_to_best = record["elapsed_seconds"]
        else:
            since_best += 1
        logger.info(
            "LLM epoch %d loss %.4f valid %s %.4f Recall@%d %.4f (best %.4f @ %d)",
            epoch,
            record["train_loss"],
            selection_metric,
            value,
            settings.candidates,
            valid[f"Recall@{settings.candidates}"],
            best_value,
            best_epoch,
        )
        if on_epoch is not None:
            on_epoch(record)
        if since_best >= settings.patience:
            break
        if settings.max_minutes is not None and time.perf_counter() - start > settings.max_minutes * 60:
            logger.warning("LLM training stops after epoch %d: llm.train.max_minutes spent", epoch)
            break
    llm.load_state_dict(best_state)
    llm.to(home)
    llm.eval()
    return LLMFitResult(
        best_epoch=best_epoch,
        best_valid=best_valid,
        history=history,
        train_seconds=time.perf_counter() - start,
        seconds_to_best=seconds_to_best,
    )
