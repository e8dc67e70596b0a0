"""Train a small recommendation model on sequences and evaluate it with the ranking protocols.

Shared by the centralized baselines and the device clients, so that a number from either path means the
same thing: the same batching, losses, early-stopping rule and metrics.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from lsc4rec.data import EvalBatch, EvalBatches, LeaveOneOutSplit, TrainBatches
from lsc4rec.metrics import (
    DEFAULT_KS,
    RankingAccumulator,
    full_ranking_ranks,
    metrics_from_ranks,
    sample_negatives,
    sampled_ranking_ranks,
    target_ranks,
)
from lsc4rec.models.solid.solid_config import SolidConfig
from lsc4rec.models.srm import (
    SRM_CONFIGS,
    CustomSRMConfig,
    SequentialRecommender,
    SRMConfig,
    compute_loss,
)
from lsc4rec.models.srm.text_init import init_item_table_from_vectors
from lsc4rec.text.item_vectors import ItemTextVectors, item_text_vectors_from_config
from lsc4rec.torch_device import model_device, resolve_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSettings:
    """How rankings are evaluated (``conf/eval/default.yaml``)."""

    ks: tuple[int, ...]
    batch_size: int
    exclude_history: bool
    sampled_negatives: int
    sampled_seed: int
    full_ranking: bool
    validation_users: int | None = None


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings for :func:`fit` (mirrors ``conf/train/*.yaml``)."""

    loss: str = "ce"
    num_negatives: int = 256
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    adam_beta2: float = 0.999
    # adam, or sgd (with momentum): under DP-SGD, Adam's per-coordinate scaling moves every noise-only
    # coordinate (item rows no example read) as far as the signal's, SGD moves them by the noise itself.
    optimizer: str = "adam"
    momentum: float = 0.0
    grad_clip: float | None = 5.0
    # Multiply the learning rate by lr_decay after lr_decay_patience evaluations without a validation gain
    # (ReduceLROnPlateau); 1.0 keeps it constant.
    lr_decay: float = 1.0
    lr_decay_patience: int = 2
    patience: int = 10
    eval_every: int = 1
    max_minutes: float | None = None
    progress: bool = True
    # After early stopping, train a fresh model for the selected number of epochs on the training and the
    # validation interactions (every interaction before the test moment) and report its test metrics too.
    refit: bool = False
    # Where fit() trains: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps.
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"train.optimizer must be adam or sgd, got {self.optimizer!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"train.momentum must be in [0, 1), got {self.momentum}")
        if self.momentum > 0 and self.optimizer != "sgd":
            raise ValueError(f"train.momentum={self.momentum} applies to train.optimizer=sgd only")
        if not 0.0 < self.adam_beta2 < 1.0:
            raise ValueError(f"train.adam_beta2 must be in (0, 1), got {self.adam_beta2}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"train.lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.lr_decay_patience < 0:
            raise ValueError(f"train.lr_decay_patience must be >= 0, got {self.lr_decay_patience}")
        self.resolve_device()

    def resolve_device(self) -> torch.device:
        """The torch device ``device`` names; a clear error when it is malformed or not on this machine."""
        return resolve_device(self.device, "train.device")

    def make_optimizer(self, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer these settings describe (Adam, or SGD with momentum)."""
        if self.optimizer == "sgd":
            return torch.optim.SGD(
                parameters, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        return torch.optim.Adam(
            parameters, lr=self.lr, betas=(0.9, self.adam_beta2), weight_decay=self.weight_decay
        )


@dataclass
class EvalSet:
    """One evaluation split (validation or test) with its fixed sampled-protocol negatives."""

    name: str
    batches: EvalBatches
    num_items: int
    # [num_users, num_sampled] item ids drawn once, so every epoch and every model sees the same negatives.
    negatives: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        name: str,
        histories: Sequence[Sequence[int]],
        targets: Sequence[int],
        num_items: int,
        max_len: int,
        batch_size: int,
        exclude_history: bool = True,
        sampled_negatives: int = 0,
        sampled_seed: int = 0,
    ) -> EvalSet:
        """Batch histories/targets; draw sampled-protocol negatives (none if ``sampled_negatives`` is 0)."""
        batches = EvalBatches(histories, targets, max_len, batch_size, exclude_history=exclude_history)
        negatives = None
        if sampled_negatives > 0:
            generator = torch.Generator().manual_seed(sampled_seed)
            negatives = torch.empty(len(targets), sampled_negatives, dtype=torch.long)
            # Batches may come grouped by history length, so each draw is stored at its rows' positions.
            for batch in EvalBatches(histories, targets, max_len, 4096, exclude_history=True):
                negatives[batch.rows] = sample_negatives(
                    batch.targets, num_items, sampled_negatives, generator, exclude=batch.seen
                )
        return cls(name=name, batches=batches, num_items=num_items, negatives=negatives)


@torch.no_grad()
def test_ranks(model: SequentialRecommender, eval_set: EvalSet) -> torch.Tensor:
    """Full-ranking rank of every row's target in ``eval_set``, in row order (CPU)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    ranks = torch.zeros(eval_set.batches.num_rows, dtype=torch.long)
    with torch.no_grad():
        for batch in eval_set.batches:
            if device.type != "cpu":
                batch = _batch_to(batch, device)
            scores = model.score_all(batch.history)
            ranks[batch.rows.cpu()] = full_ranking_ranks(scores, batch.targets, exclude=batch.seen).cpu()
    model.train(was_training)
    return ranks


def metrics_by_slice(
    model: SequentialRecommender,
    eval_set: EvalSet,
    slices: Mapping[str, Sequence[int]],
    ks: Sequence[int] = (10,),
) -> dict[str, dict[str, float]]:
    """Full-ranking NDCG/HR/MRR@k of ``model`` on each slice (rows of ``eval_set``), with its user count."""
    ranks = test_ranks(model, eval_set)
    out: dict[str, dict[str, float]] = {}
    for name, rows in slices.items():
        if not rows:
            out[name] = {"users": 0}
            continue
        metrics = metrics_from_ranks(ranks[torch.as_tensor(list(rows), dtype=torch.long)], ks)
        out[name] = {"users": len(rows), **{k: round(v, 4) for k, v in metrics.items() if "@" in k}}
    return out


def evaluate(
    model: SequentialRecommender, eval_set: EvalSet, ks: Sequence[int] = DEFAULT_KS, full_ranking: bool = True
) -> dict[str, dict]:
    """Rank every user's target: ``{"full": {...}, "sampled": {...}}`` with HR/NDCG/MRR@K.

    ``full_ranking=False`` skips the all-items ranking and scores only target + sampled negatives, for models
    whose all-items scoring is prohibitive (DIN scores every candidate against every history item).
    """
    if not full_ranking and eval_set.negatives is None:
        raise ValueError(
            f"{eval_set.name}: full_ranking=False needs sampled negatives (eval.sampled_negatives > 0)"
        )
    was_training = model.training
    model.eval()
    device = model_device(model)
    full = RankingAccumulator(ks) if full_ranking else None
    sampled = RankingAccumulator(ks) if eval_set.negatives is not None else None
    for batch in eval_set.batches:
        if device.type != "cpu":
            batch = _batch_to(batch, device)
        negatives = eval_set.negatives[batch.rows] if eval_set.negatives is not None else None
        if negatives is not None:
            negatives = negatives.to(device)
        if full is not None:
            scores = model.score_all(batch.history)
            full.add(full_ranking_ranks(scores, batch.targets, exclude=batch.seen))
            if sampled is not None and negatives is not None:
                sampled.add(sampled_ranking_ranks(scores, batch.targets, negatives))
        elif sampled is not None and negatives is not None:
            # Column 0 holds the target, so its rank among the candidates is the sampled-protocol rank.
            candidates = torch.cat([batch.targets[:, None], negatives], dim=1)
            scores = model.score_candidates(batch.history, candidates)
            sampled.add(target_ranks(scores, torch.zeros_like(batch.targets)))
    model.train(was_training)
    result: dict[str, dict] = {}
    if full is not None:
        result["full"] = full.compute()
    if sampled is not None:
        result["sampled"] = sampled.compute()
    return result


def _batch_to(batch: EvalBatch, device: torch.device) -> EvalBatch:
    seen = batch.seen.to(device, non_blocking=True) if batch.seen is not None else None
    return batch._replace(
        history=batch.history.to(device, non_blocking=True),
        targets=batch.targets.to(device, non_blocking=True),
        seen=seen,
    )


class TrainingHook(Protocol):
    """Something that acts around every optimisation step of :func:`train_one_epoch`.

    MergeNet's parameter transfer, a source model trained alongside, and knowledge distillation plug in here
    (``lsc4rec.models.mergenet.transfer``).
    """

    def before_step(self, model: SequentialRecommender, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Called before the batch's forward pass."""

    def extra_loss(
        self, model: SequentialRecommender, inputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor | None:
        """A term added to this step's loss, or None."""
        return None

    def after_step(self, model: SequentialRecommender) -> None:
        """Called after the optimizer step."""


def decay_lr_linearly(optimizer: torch.optim.Optimizer, keep_steps: int, decay_steps: int) -> Any:
    """Make ``optimizer`` keep its learning rates for ``keep_steps`` steps, then take them linearly to 0.

    Step ``keep_steps + j`` (``j`` from 0) runs at ``(1 - j / decay_steps)`` of each group's rate when this is
    called; steps past the decay run at 0. Acts before every ``optimizer.step()``, whoever calls it (the
    plain loop or a DP engine). Returns the hook's handle (``.remove()`` restores nothing: the rates stay).
    """
    if keep_steps < 0 or decay_steps < 1:
        raise ValueError(f"need keep_steps >= 0 and decay_steps >= 1, got {keep_steps} and {decay_steps}")
    base = [float(group["lr"]) for group in optimizer.param_groups]
    taken = 0

    def before_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        nonlocal taken
        factor = max(1.0 - max(taken - keep_steps, 0) / decay_steps, 0.0)
        for group, rate in zip(opt.param_groups, base, strict=True):
            group["lr"] = rate * factor
        taken += 1

    return optimizer.register_step_pre_hook(before_step)


def train_one_epoch(
    model: SequentialRecommender,
    batches: TrainBatches,
    optimizer: torch.optim.Optimizer,
    settings: TrainSettings,
    generator: torch.Generator,
    description: str = "train",
    regularizer: Callable[[], torch.Tensor] | None = None,
    hooks: Sequence[TrainingHook] = (),
) -> float:
    """One pass over the training batches; returns the mean next-item loss per batch.

    Every step also minimises the model's :meth:`~SequentialRecommender.auxiliary_loss` (SOLID's VQ term),
    ``regularizer`` (FedProx's proximal term on a device) and the hooks' extra losses; none is in the returned
    mean. ``hooks`` act before and after every step. Batches go to the device holding the model.
    """
    model.train()
    device = model_device(model)
    total, count = 0.0, 0
    progress = tqdm(batches, desc=description, leave=False, disable=not settings.progress, mininterval=1.0)
    for inputs, targets in progress:
        if device.type != "cpu":
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        for hook in hooks:
            hook.before_step(model, inputs, targets)
        loss = compute_loss(
            settings.loss, model, inputs, targets, generator, num_negatives=settings.num_negatives
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{description}: loss became {loss.item()} (lr={settings.lr}); lower train.lr"
            )
        optimizer.zero_grad(set_to_none=True)
        objective = loss
        auxiliary = model.auxiliary_loss(inputs)
        if auxiliary is not None:
            objective = objective + auxiliary
        if regularizer is not None:
            objective = objective + regularizer()
        for hook in hooks:
            extra = hook.extra_loss(model, inputs, targets)
            if extra is not None:
                objective = objective + extra
        objective.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        for hook in hooks:
            hook.after_step(model)
        total += loss.item()
        count += 1
        if count % 20 == 0:
            progress.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


@dataclass
class FitResult:
    """Outcome of :func:`fit`: the best epoch's weights and the per-epoch history."""

    best_epoch: int
    best_valid: dict[str, dict]
    best_state: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    seconds_to_best: float = 0.0
    stopped_because: str = ""
    #: The best validation epoch within each budget :func:`fit` was given (``epochs`` / ``seconds``).
    within: dict[str, BudgetBest] = field(default_factory=dict)


@dataclass
class BudgetBest:
    """The best validation epoch among those finished within a training budget (equal-cost comparisons)."""

    budget: float
    epoch: int
    valid: dict[str, dict]
    state: dict[str, torch.Tensor]


def fit(
    model: SequentialRecommender,
    train_batches: TrainBatches,
    valid_set: EvalSet,
    settings: TrainSettings,
    seed: int = 0,
    ks: Sequence[int] = DEFAULT_KS,
    selection_metric: str = "NDCG@10",
    full_ranking: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    hooks: Sequence[TrainingHook] = (),
    epoch_budget: int | None = None,
    seconds_budget: float | None = None,
) -> FitResult:
    """Train with early stopping on validation ``selection_metric``; keep the best epoch's weights.

    ``epoch_budget`` / ``seconds_budget`` also keep the best epoch among those finished within that many
    epochs / training seconds (``FitResult.within``), so models of different cost can be compared at equal
    epochs and at equal wall-clock, each selected on validation, from one training run.

    Trains on ``settings.device``; the model ends on the device it came in on, holding the best weights
    (``best_state`` is a CPU copy).

    The metric is read from the full-ranking protocol, or from the sampled one when ``full_ranking`` is False.
    """
    protocol = "full" if full_ranking else "sampled"
    device = settings.resolve_device()
    home = model_device(model)
    model.to(device)
    optimizer = settings.make_optimizer(model.parameters())
    plateau = _plateau_schedule(optimizer, settings)
    generator = torch.Generator().manual_seed(seed)
    best = _BestEpoch.begin(model, epoch_budget, seconds_budget)
    history: list[dict] = []
    start = time.perf_counter()
    stopped_because = f"reached train.epochs={settings.epochs}"
    for epoch in range(1, settings.epochs + 1):
        record = _trained_epoch(model, train_batches, optimizer, settings, generator, epoch, hooks)
        loss = record["train_loss"]
        if epoch % settings.eval_every == 0 or epoch == settings.epochs:
            valid = evaluate(model, valid_set, ks, full_ranking=full_ranking)
            value = valid[protocol][selection_metric]
            record["valid"] = valid
            if plateau is not None:
                plateau.step(value)
                record["lr"] = optimizer.param_groups[0]["lr"]
            best.observe(model, epoch, valid, value, start)
            logger.info(
                "epoch %d loss %.4f valid %s %.4f (best %.4f @ %d)",
                epoch,
                loss,
                selection_metric,
                value,
                best.value,
                best.epoch,
            )
        record["elapsed_seconds"] = time.perf_counter() - start
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        stop = _stop_reason(settings, best.since, start, selection_metric, epoch)
        if stop is not None:
            stopped_because = stop
            break
    model.load_state_dict(best.state)
    model.to(home)
    return FitResult(
        best_epoch=best.epoch,
        best_valid=best.valid,
        best_state=best.state,
        history=history,
        train_seconds=time.perf_counter() - start,
        seconds_to_best=best.seconds_to_best,
        stopped_because=stopped_because,
        within=best.within,
    )


def _trained_epoch(
    model: SequentialRecommender,
    train_batches: TrainBatches,
    optimizer: torch.optim.Optimizer,
    settings: TrainSettings,
    generator: torch.Generator,
    epoch: int,
    hooks: Sequence[TrainingHook],
) -> dict:
    """Train epoch ``epoch``; its history record: loss, seconds and the learning rate it trained at."""
    epoch_start = time.perf_counter()
    epoch_lr = float(optimizer.param_groups[0]["lr"])
    train_batches.set_epoch(epoch)
    loss = train_one_epoch(
        model, train_batches, optimizer, settings, generator, f"epoch {epoch}", hooks=hooks
    )
    # epoch_lr: the rate this epoch trained at; lr (with a plateau schedule): the rate after its decision.
    return {
        "epoch": epoch,
        "train_loss": loss,
        "train_seconds": time.perf_counter() - epoch_start,
        "epoch_lr": epoch_lr,
    }


def _stop_reason(
    settings: TrainSettings, since_best: int, start: float, selection_metric: str, epoch: int
) -> str | None:
    """Why :func:`fit` stops after ``epoch`` (patience run out, time budget spent); None to go on."""
    if since_best >= settings.patience:
        return f"no validation {selection_metric} gain for {settings.patience} evaluations"
    if settings.max_minutes is not None and time.perf_counter() - start > settings.max_minutes * 60:
        stopped_because = f"time budget train.max_minutes={settings.max_minutes} spent"
        logger.warning("stopping after epoch %d: %s", epoch, stopped_because)
        return stopped_because
    return None


def _plateau_schedule(
    optimizer: torch.optim.Optimizer, settings: TrainSettings
) -> torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    """The ``train.lr_decay`` plateau schedule on the validation metric; None while the rate is constant."""
    return (
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=settings.lr_decay, patience=settings.lr_decay_patience
        )
        if settings.lr_decay < 1.0
        else None
    )


@dataclass
class _BestEpoch:
    """:func:`fit`'s selection so far: the best validation epoch overall and within each budget."""

    #: CPU copy of the best epoch's weights (the starting weights until an evaluation improves on -inf).
    state: dict[str, torch.Tensor]
    #: Budget name (``epochs`` / ``seconds``) -> its size.
    budgets: dict[str, float]
    value: float = -math.inf
    epoch: int = 0
    #: Evaluations since the last gain (early stopping counts these).
    since: int = 0
    valid: dict[str, dict] = field(default_factory=dict)
    seconds_to_best: float = 0.0
    within: dict[str, BudgetBest] = field(default_factory=dict)

    @classmethod
    def begin(
        cls, model: torch.nn.Module, epoch_budget: int | None, seconds_budget: float | None
    ) -> _BestEpoch:
        """Nothing selected yet: ``model``'s starting weights, and the budgets :func:`fit` was given."""
        budgets = {
            name: float(value)
            for name, value in (("epochs", epoch_budget), ("seconds", seconds_budget))
            if value is not None
        }
        return cls(state=_cpu_copy(model.state_dict()), budgets=budgets)

    def observe(
        self, model: torch.nn.Module, epoch: int, valid: dict[str, dict], value: float, start: float
    ) -> None:
        """Take in ``epoch``'s validation ``value``: keep ``model``'s weights when it is the best so far."""
        if value > self.value:
            self.value, self.epoch, self.since = value, epoch, 0
            self.state = _cpu_copy(model.state_dict())
            self.valid = valid
            self.seconds_to_best = time.perf_counter() - start
        else:
            self.since += 1
        # Spending only grows, so the best epoch within a budget is the overall best while it lasts.
        spent = {"epochs": float(epoch), "seconds": time.perf_counter() - start}
        for name, budget in self.budgets.items():
            if spent[name] <= budget and self.epoch == epoch:
                self.within[name] = BudgetBest(budget, epoch, valid, self.state)


def train_epochs(
    model: SequentialRecommender,
    train_batches: TrainBatches,
    settings: TrainSettings,
    epochs: int,
    seed: int = 0,
    learning_rates: Sequence[float] | None = None,
) -> list[dict]:
    """Train for exactly ``epochs`` epochs without validation; returns per-epoch loss and time.

    ``learning_rates`` (one per epoch) replays a schedule chosen elsewhere, e.g. the plateau decays that
    :func:`fit` recorded on validation data; None keeps ``settings.lr``. The model ends on the device it
    came in on.
    """
    if epochs < 1:
        raise ValueError(f"train_epochs needs epochs >= 1, got {epochs}")
    if learning_rates is not None and len(learning_rates) < epochs:
        raise ValueError(f"{len(learning_rates)} learning rates given for {epochs} epochs")
    home = model_device(model)
    model.to(settings.resolve_device())
    optimizer = settings.make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        if learning_rates is not None:
            for group in optimizer.param_groups:
                group["lr"] = float(learning_rates[epoch - 1])
        start = time.perf_counter()
        train_batches.set_epoch(epoch)
        loss = train_one_epoch(
            model, train_batches, optimizer, settings, generator, f"epoch {epoch}/{epochs}"
        )
        history.append({"epoch": epoch, "train_loss": loss, "train_seconds": time.perf_counter() - start})
        logger.info("epoch %d/%d (no validation) loss %.4f", epoch, epochs, loss)
    model.to(home)
    return history


def _cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


#: The config class of every model a run can name (``model.name``): the SRMs, a user's own SRM by its dotted
#: path (``custom``) and SOLID.
MODEL_CONFIGS: dict[str, type[SRMConfig]] = {
    **SRM_CONFIGS,
    CustomSRMConfig.name: CustomSRMConfig,
    SolidConfig.name: SolidConfig,
}


def build_model_from_config(
    config: SRMConfig,
    num_items: int,
    max_len: int,
    item_vectors: torch.Tensor | None = None,
    training_sequences: Sequence[Sequence[int]] | None = None,
    *,
    weights_follow: bool = False,
) -> SequentialRecommender:
    """Build the model ``config`` describes (:data:`MODEL_CONFIGS`) for ``num_items`` items, ``max_len``
    the run's history length (``data.max_len``).

    ``model.item_text=projected`` gives every item vector a text part from ``item_vectors
    [num_items + 1, D]`` (:meth:`SequentialRecommender.attach_item_text`); without vectors that is an error.
    With the text part, ``training_sequences`` (what the model will train on) says which items are trained:
    the others stay out of the training softmax and score by their text
    (:meth:`SequentialRecommender.set_trained_items`). ``weights_follow``: the caller loads a full state dict
    next, so the text projection's start (an SVD of the catalogue's vectors) is skipped.
    """
    # SOLID wraps a base SRM; its semantic ids come later (lsc4rec.models.solid.pipeline).
    model = config.build(num_items, max_len)
    mode = config.item_text
    if mode != "none":
        if item_vectors is None:
            raise ValueError(
                f"model.item_text={mode} needs the items' text vectors, which this run does not have "
                "(the dataset has no item text, or this entry point does not load it); "
                "set model.item_text=none"
            )
        model.attach_item_text(item_vectors, start=not weights_follow)
        if training_sequences is not None:
            untrained = model.set_trained_items(trained_items(training_sequences))
            if untrained:
                logger.info("%d items no training sequence holds are scored by their text", untrained)
    return model


def trained_items(sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """The distinct item ids in ``sequences`` (the items a model trained on them has seen), sorted."""
    seen = {int(item) for sequence in sequences for item in sequence}
    seen.discard(0)
    return torch.tensor(sorted(seen), dtype=torch.long)


def run_item_vectors(
    model_cfg: SRMConfig,
    split: LeaveOneOutSplit,
    text_cfg: Mapping[str, Any],
    dataset: str,
    content_weight: float | str = 0.0,
) -> torch.Tensor | None:
    """The item text vectors a run reads: the SRM's text part (``model.item_text``) or the content term of
    fusion (``content_weight`` a number > 0 or ``auto``); None when nothing reads them.

    Raises ``ValueError`` naming the dataset when it has no item text.
    """
    if model_cfg.item_text != "none":
        return model_item_vectors(model_cfg, split, text_cfg, dataset)
    if str(content_weight) != "auto" and float(content_weight) <= 0:
        return None
    reader = f"collab.content_weight={content_weight}"
    return _encoded_item_text(split, text_cfg, dataset, reader, "; set collab.content_weight=0")


def model_item_vectors(
    model_cfg: SRMConfig, split: LeaveOneOutSplit, text_cfg: Mapping[str, Any], dataset: str
) -> torch.Tensor | None:
    """The item text vectors ``[num_items + 1, D]`` the configured SRM needs (None for ``item_text=none``).

    Raises ``ValueError`` naming the dataset when it has no item text.
    """
    if model_cfg.item_text == "none":
        return None
    reader = f"model.item_text={model_cfg.item_text}"
    remedy = (
        " (put X_item_text.jsonl beside the data file or set data.text_path); or set model.item_text=none"
    )
    return _encoded_item_text(split, text_cfg, dataset, reader, remedy)


def start_item_table_from_text(
    model: SequentialRecommender,
    split: LeaveOneOutSplit,
    text_cfg: Mapping[str, Any],
    dataset: str,
    reader: str,
    remedy: str = "",
) -> dict[str, float | int]:
    """Start ``model``'s item table from the split's item text vectors (``conf/text``;
    :func:`~lsc4rec.models.srm.text_init.init_item_table_from_vectors`) and return its report; a
    ``ValueError`` naming ``reader`` (what needs the text), the dataset and ``remedy`` when it has none."""
    text = _item_text(split, text_cfg, dataset, reader, remedy)
    return init_item_table_from_vectors(model, text.vectors, text.has_text)


def _encoded_item_text(
    split: LeaveOneOutSplit, text_cfg: Mapping[str, Any], dataset: str, reader: str, remedy: str
) -> torch.Tensor:
    """The split's item text encoded (``conf/text``); a ``ValueError`` naming ``reader`` (the key that needs
    it), the dataset and ``remedy`` when the dataset has none."""
    return _item_text(split, text_cfg, dataset, reader, remedy).vectors


def _item_text(
    split: LeaveOneOutSplit, text_cfg: Mapping[str, Any], dataset: str, reader: str, remedy: str
) -> ItemTextVectors:
    if not split.item_text:
        raise ValueError(f"{reader} needs item text, but dataset {dataset!r} has none{remedy}")
    return item_text_vectors_from_config(split.item_text, split.num_items, text_cfg)


def _setting(section: Any, name: str) -> Any:
    """``name`` of a settings object or a mapping (a config section, a plain dict)."""
    return section.get(name) if isinstance(section, Mapping) else getattr(section, name, None)


def build_eval_sets(
    split: LeaveOneOutSplit, eval_cfg: EvalSettings | Mapping[str, Any], max_len: int
) -> tuple[EvalSet, EvalSet]:
    """Validation and test sets of a leave-one-out split, as ``conf/eval`` describes them.

    Model selection reads the full-ranking metric, so validation draws sampled negatives only when
    ``full_ranking`` is off (DIN on a large catalogue, see ``conf/model/din.yaml``); test always has them.
    Validation covers the split's validation users (every user unless the split was restricted with
    :meth:`LeaveOneOutSplit.with_validation_users`, which ``eval.validation_users`` asks for).
    """
    requested = _setting(eval_cfg, "validation_users")
    if requested is not None and split.validation_users is None:
        raise ValueError(
            f"eval.validation_users={requested} is honoured by the centralized baseline only"
            " (python -m lsc4rec.simulations.centralized); leave it null here"
        )
    common = dict(
        num_items=split.num_items,
        max_len=max_len,
        batch_size=int(_setting(eval_cfg, "batch_size")),
        exclude_history=bool(_setting(eval_cfg, "exclude_history")),
    )
    sampled = dict(
        sampled_negatives=int(_setting(eval_cfg, "sampled_negatives")),
        sampled_seed=int(_setting(eval_cfg, "sampled_seed")),
    )
    valid_sampled = {} if bool(_setting(eval_cfg, "full_ranking")) else sampled
    rows = split.validation_rows()
    histories = split.valid_histories()
    valid_set = EvalSet.build(
        "valid",
        [histories[u] for u in rows],
        [split.valid_targets[u] for u in rows],
        **common,
        **valid_sampled,
    )
    test_set = EvalSet.build("test", split.test_histories(), split.test_targets, **common, **sampled)
    return valid_set, test_set
