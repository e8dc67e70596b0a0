"""Next-item training losses for the SRMs.

Every loss takes ``(model, inputs [B, L], targets [B, L], ...)`` where ``targets[b, t]`` is the item that
follows ``inputs[b, t]`` and target 0 marks a position that contributes nothing. Each returns the mean over
non-padding target positions (0 when there are none, so an empty batch never yields NaN).

``select_positions=True`` (default) scores only the non-padding positions (``positions=targets > 0``) after
trimming leading columns that are padding in every row, which is the cheap path. ``select_positions=False``
scores every position and masks the loss instead: the same value, more compute, but static shapes, which
is what ``torch.func.vmap``-based per-sample gradients and graph export need.

Random negatives come from an explicitly passed ``torch.Generator`` (CPU) so runs are reproducible.
:func:`per_sequence_loss` gives one loss per row (its own positions' mean) with negatives drawn up front by
:func:`draw_negatives`: the form DP-SGD's per-sample clipping needs (``lsc4rec.client.private_training``).
Opacus' per-layer hooks see every parameter use only with ``sampled_softmax`` or ``bce`` (note in
``base.py``); the whole-model ``torch.func`` path handles every loss.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lsc4rec.models.srm.base import SequentialRecommender

__all__ = [
    "LOSSES",
    "bce_loss",
    "candidate_rerank_loss",
    "compute_loss",
    "draw_negatives",
    "full_softmax_loss",
    "list_distillation_loss",
    "per_sequence_loss",
    "sample_negatives_per_position",
    "sample_shared_negatives",
    "sampled_softmax_loss",
]


def _first_used_column(inputs: Tensor, targets: Tensor) -> int:
    """Index of the first column holding an item or a target in some row (at least the last column).

    Columns before it are padding in every row, and outputs at real positions do not depend on them.
    """
    used = ((inputs != 0) | (targets != 0)).any(dim=0).nonzero()
    return int(used[0, 0]) if used.numel() > 0 else inputs.size(1) - 1


def _masked_mean(per_position: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``per_position`` over ``mask`` (same shape); 0 when the mask is empty."""
    weights = mask.to(per_position.dtype)
    return (per_position * weights).sum() / weights.sum().clamp(min=1.0)


def sample_shared_negatives(num_items: int, num_negatives: int, generator: torch.Generator) -> Tensor:
    """``min(num_negatives, num_items)`` distinct item ids drawn uniformly from 1..num_items (CPU tensor).

    Sampling without replacement makes ``num_negatives >= num_items`` cover the whole catalogue exactly.
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    if num_negatives >= num_items:
        return torch.arange(1, num_items + 1)
    return torch.randperm(num_items, generator=generator)[:num_negatives] + 1


def sample_negatives_per_position(
    targets: Tensor, num_items: int, num_negatives: int, generator: torch.Generator
) -> Tensor:
    """Uniform random items ``[B, L, num_negatives]`` that never equal the target at their position.

    Draws r from 1..num_items-1 and maps r >= target to r + 1: exactly uniform over the other items,
    without a resampling loop. Padding positions (target 0) get arbitrary ids in 2..num_items.
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    if num_items < 2:
        raise ValueError("negative sampling needs at least 2 items")
    draws = torch.randint(1, num_items, (*targets.shape, num_negatives), generator=generator)
    draws = draws.to(targets.device)
    return draws + (draws >= targets.unsqueeze(-1)).long()


def _dense_position_losses(
    name: str, model: SequentialRecommender, inputs: Tensor, targets: Tensor, negatives: Tensor | None
) -> Tensor:
    """Loss ``name`` at every position ``[B, L]`` (static shapes; padding positions hold arbitrary values).

    ``negatives`` are the draws of :func:`draw_negatives` (None for the full softmax).
    """
    unseen = model.unseen_items()
    if name in ("ce", "full_softmax"):
        logits = model.position_scores(inputs)  # [B, L, num_items + 1]
        if unseen is not None:
            logits = logits.masked_fill(unseen.to(logits.device), float("-inf"))
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none", ignore_index=0)
        return nll.view(targets.shape)
    if negatives is None:
        raise ValueError(f"loss {name!r} needs negatives (see draw_negatives)")
    # Padding targets (id 0) would score -inf; any real id keeps them finite (their loss is masked out).
    real = targets.clamp(min=1)
    if name == "sampled_softmax":
        positive, negative = model.position_scores_with_negatives(inputs, real.unsqueeze(-1), negatives)
        negative = negative.masked_fill(negatives == targets.unsqueeze(-1), float("-inf"))
        if unseen is not None:
            negative = negative.masked_fill(unseen.to(negatives.device)[negatives], float("-inf"))
        return torch.logsumexp(torch.cat([positive, negative], dim=-1), dim=-1) - positive.squeeze(-1)
    if name == "bce":
        scores = model.position_scores(inputs, torch.cat([real.unsqueeze(-1), negatives], dim=-1))
        return F.softplus(-scores[..., 0]) + _negative_terms(model, scores[..., 1:], negatives)
    raise ValueError(f"unknown loss {name!r}; valid: {sorted(LOSSES)}")


def _negative_terms(model: SequentialRecommender, scores: Tensor, negatives: Tensor) -> Tensor:
    """BCE's negative part ``sum_k log(1 + exp(s_k))`` without the items no training sequence holds."""
    terms = F.softplus(scores)
    unseen = model.unseen_items()
    if unseen is not None:
        terms = terms.masked_fill(unseen.to(negatives.device)[negatives], 0.0)
    return terms.sum(dim=-1)


def draw_negatives(
    name: str, num_items: int, targets: Tensor, num_negatives: int, generator: torch.Generator
) -> Tensor | None:
    """The random negatives loss ``name`` uses for a batch with ``targets [B, L]`` (None: it uses none).

    ``sampled_softmax``: ``[C]`` items shared by the batch; ``bce``: ``[B, L, n]`` per position. Drawn
    apart from the loss so that per-sample gradient code can draw once per batch and slice per row.
    """
    if name in ("ce", "full_softmax"):
        return None
    if name == "sampled_softmax":
        return sample_shared_negatives(num_items, num_negatives, generator).to(targets.device)
    if name == "bce":
        return sample_negatives_per_position(targets, num_items, num_negatives, generator)
    raise ValueError(f"unknown loss {name!r}; valid: {sorted(LOSSES)}")


def per_sequence_loss(
    name: str, model: SequentialRecommender, inputs: Tensor, targets: Tensor, negatives: Tensor | None
) -> Tensor:
    """Loss ``name`` of every row ``[B]``: the mean over that row's own non-padding target positions.

    Each row's value depends on that row alone (and the data-independent ``negatives``), which is what
    per-sample gradient clipping (DP-SGD) needs: a batch mean over *positions* would let one user's sequence
    length change every other user's gradient. Rows without targets give 0.
    """
    mask = (targets > 0).to(torch.float32)
    per_position = _dense_position_losses(name, model, inputs, targets, negatives)
    return (per_position * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)


def full_softmax_loss(
    model: SequentialRecommender, inputs: Tensor, targets: Tensor, *, select_positions: bool = True
) -> Tensor:
    """Cross-entropy of the next item over the whole catalogue, averaged over non-padding positions.

    Items no training sequence holds (:meth:`SequentialRecommender.unseen_items`) are left out of the softmax.
    """
    if select_positions:
        first = _first_used_column(inputs, targets)
        inputs, targets = inputs[:, first:], targets[:, first:]
        mask = targets > 0
        # Item-only logits: column i - 1 is item i, so the padding column is never built or copied.
        logits = model.position_item_logits(inputs, mask)  # [P, num_items]
        unseen = model.unseen_items()
        if unseen is not None:
            logits = logits.masked_fill(unseen[1:].to(logits.device), float("-inf"))
        nll = F.cross_entropy(logits, targets[mask] - 1, reduction="none")
        return nll.sum() / nll.new_tensor(max(nll.numel(), 1))
    return _masked_mean(_dense_position_losses("ce", model, inputs, targets, None), targets > 0)


def sampled_softmax_loss(
    model: SequentialRecommender,
    inputs: Tensor,
    targets: Tensor,
    num_negatives: int,
    generator: torch.Generator,
    *,
    select_positions: bool = True,
) -> Tensor:
    """Cross-entropy over ``[target] + num_negatives`` uniform negatives shared by the whole batch.

    Negatives are drawn without replacement (see :func:`sample_shared_negatives`), once per call and
    shared by every position, which lets sequence encoders score them with one matrix product. A negative
    equal to the position's target (an accidental hit) is masked to -inf. No logQ correction is applied:
    under uniform sampling every item has the same inclusion probability, so the correction is a constant
    shift of all logits and cancels in the softmax. With ``num_negatives >= num_items`` the loss equals
    :func:`full_softmax_loss`.
    """
    negatives = sample_shared_negatives(model.num_items, num_negatives, generator).to(inputs.device)
    if not select_positions:
        per_position = _dense_position_losses("sampled_softmax", model, inputs, targets, negatives)
        return _masked_mean(per_position, targets > 0)
    first = _first_used_column(inputs, targets)
    inputs, targets = inputs[:, first:], targets[:, first:]
    mask = targets > 0
    positive, negative = model.position_scores_with_negatives(
        inputs, targets.unsqueeze(-1), negatives, positions=mask
    )
    negative = negative.masked_fill(negatives == targets[mask].unsqueeze(-1), float("-inf"))
    unseen = model.unseen_items()
    if unseen is not None:
        negative = negative.masked_fill(unseen.to(negatives.device)[negatives], float("-inf"))
    # Cross-entropy with the target in column 0.
    nll = torch.logsumexp(torch.cat([positive, negative], dim=-1), dim=-1) - positive.squeeze(-1)
    return nll.sum() / nll.new_tensor(max(nll.numel(), 1))


def bce_loss(
    model: SequentialRecommender,
    inputs: Tensor,
    targets: Tensor,
    generator: torch.Generator,
    num_negatives: int = 1,
    *,
    select_positions: bool = True,
) -> Tensor:
    """Binary cross-entropy on the target and ``num_negatives`` random negatives per position (SASRec's loss).

    Per position: ``-log sigmoid(s_pos) - sum_k log(1 - sigmoid(s_neg_k))`` (the negatives are summed, as in
    the negative-sampling objective of gSASRec/Caser; with the original single negative this is exactly
    SASRec's loss), averaged over non-padding positions. Negatives are uniform over the items other than the
    target at that position (:func:`sample_negatives_per_position`); pmixer's SASRec also excludes the rest
    of the user's history, which needs per-user item sets we do not have here.
    """
    # Drawn before trimming, so both values of select_positions see the same negatives.
    negatives = sample_negatives_per_position(targets, model.num_items, num_negatives, generator)
    if not select_positions:
        return _masked_mean(_dense_position_losses("bce", model, inputs, targets, negatives), targets > 0)
    candidates = torch.cat([targets.unsqueeze(-1), negatives], dim=-1)  # [B, L, 1 + n]
    first = _first_used_column(inputs, targets)
    inputs, targets, candidates = inputs[:, first:], targets[:, first:], candidates[:, first:]
    mask = targets > 0
    scores = model.position_scores(inputs, candidates, positions=mask)  # [P, 1 + n]
    per_position = F.softplus(-scores[..., 0]) + _negative_terms(
        model, scores[..., 1:], candidates[mask][:, 1:]
    )
    return per_position.sum() / per_position.new_tensor(max(per_position.numel(), 1))


def candidate_rerank_loss(
    model: SequentialRecommender,
    inputs: Tensor,
    targets: Tensor,
    hard_negatives: Tensor,
    generator: torch.Generator,
    num_negatives: int = 100,
) -> Tensor:
    """Cross-entropy of the target against hard negatives plus uniform ones (LSC4Rec collaborative training).

    ``hard_negatives [B, L, k]`` are, per position, the cloud LLM's top-k candidates for the next item, so
    the SRM learns to rerank the kind of list it will actually receive; ``num_negatives`` uniform items keep
    it calibrated against the rest of the catalogue. A candidate equal to the target (an LLM hit) or item 0
    is masked out of the negatives. Averaged over non-padding target positions.
    """
    if hard_negatives.shape[:2] != targets.shape:
        raise ValueError(
            f"hard_negatives {tuple(hard_negatives.shape)} must be [B, L, k] "
            f"for targets {tuple(targets.shape)}"
        )
    random_items = (
        sample_negatives_per_position(targets, model.num_items, num_negatives, generator)
        if num_negatives > 0
        else targets.new_zeros((*targets.shape, 0))
    )
    candidates = torch.cat([targets.unsqueeze(-1), hard_negatives.to(targets.device), random_items], dim=-1)
    first = _first_used_column(inputs, targets)
    inputs, targets, candidates = inputs[:, first:], targets[:, first:], candidates[:, first:]
    mask = targets > 0
    chosen = candidates[mask]  # [P, 1 + k + n]
    scores = model.selected_position_scores(inputs, candidates.clamp(min=1), mask)
    negative = chosen[:, 1:]
    invalid = (negative == chosen[:, :1]) | (negative == 0)
    scores = torch.cat([scores[:, :1], scores[:, 1:].masked_fill(invalid, float("-inf"))], dim=1)
    nll = torch.logsumexp(scores, dim=1) - scores[:, 0]
    return nll.sum() / nll.new_tensor(max(nll.numel(), 1))


def per_sequence_rerank_loss(
    model: SequentialRecommender, inputs: Tensor, targets: Tensor, negatives: Tensor
) -> Tensor:
    """:func:`candidate_rerank_loss` of every row alone ``[B]``, for per-example gradients (DP-SGD).

    ``negatives [B, L, m]`` are each position's negatives (the cloud's list, then uniform items); one equal to
    the target or 0 is left out, as there. Static shapes throughout: every position is scored and the row's
    mean is over its non-padding targets (a row without targets gives 0).
    """
    real = targets.clamp(min=1)
    scores = model.position_scores(inputs, torch.cat([real.unsqueeze(-1), negatives.clamp(min=1)], dim=-1))
    invalid = (negatives == targets.unsqueeze(-1)) | (negatives == 0)
    scores = torch.cat([scores[..., :1], scores[..., 1:].masked_fill(invalid, float("-inf"))], dim=-1)
    nll = torch.logsumexp(scores, dim=-1) - scores[..., 0]
    mask = (targets > 0).to(nll.dtype)
    return (nll * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)


def list_distillation_loss(
    model: SequentialRecommender,
    inputs: Tensor,
    targets: Tensor,
    items: Tensor,
    teacher_scores: Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """``T²·KL(p_cloud ‖ p_SRM)`` over the items the cloud listed at each position (list distillation).

    ``items [B, L, k]`` and ``teacher_scores [B, L, k]`` are the cloud's list after every position and its
    scores (log-probabilities) for them: exactly what a device receives, never the cloud's whole
    distribution. Both sides are softmaxes over the same listed items at temperature ``T``; empty slots
    (item 0) are left out. Averaged over positions with a target and at least one listed item.
    """
    if items.shape != teacher_scores.shape or items.shape[:2] != targets.shape:
        raise ValueError(
            f"items {tuple(items.shape)} and teacher scores {tuple(teacher_scores.shape)} must both be "
            f"[B, L, k] for targets {tuple(targets.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"collab.distill_temperature must be > 0, got {temperature}")
    first = _first_used_column(inputs, targets)
    inputs, targets = inputs[:, first:], targets[:, first:]
    items, teacher_scores = items[:, first:], teacher_scores[:, first:]
    mask = (targets > 0) & (items > 0).any(dim=-1)
    if not bool(mask.any()):
        return model.item_embedding.weight.sum() * 0.0
    listed = items[mask]  # [P, k]
    valid = listed > 0
    student = model.position_scores(inputs, items.clamp(min=1), positions=mask)  # [P, k]
    teacher = teacher_scores[mask].to(student.device).float()
    t = float(temperature)
    log_teacher = torch.log_softmax((teacher / t).masked_fill(~valid, float("-inf")), dim=-1)
    log_student = torch.log_softmax((student / t).masked_fill(~valid, float("-inf")), dim=-1)
    terms = torch.where(valid, log_teacher.exp() * (log_teacher - log_student), torch.zeros_like(student))
    return t * t * terms.sum(dim=-1).mean()


LossFn = Callable[..., Tensor]

LOSSES: dict[str, LossFn] = {
    "ce": full_softmax_loss,
    "full_softmax": full_softmax_loss,
    "sampled_softmax": sampled_softmax_loss,
    "bce": bce_loss,
}

# Knobs a training loop passes uniformly; losses that have no use for them ignore them.
_COMMON_KNOBS = ("generator", "num_negatives")


def compute_loss(
    name: str,
    model: SequentialRecommender,
    inputs: Tensor,
    targets: Tensor,
    generator: torch.Generator | None = None,
    **kw: Any,
) -> Tensor:
    """Compute the loss ``name`` (a key of :data:`LOSSES`).

    ``generator`` and ``num_negatives`` are passed to the losses that use them and ignored by the others
    (so one training loop can switch losses by name); any other unknown keyword raises ``TypeError``.
    """
    try:
        fn = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid: {sorted(LOSSES)}") from None
    accepted = inspect.signature(fn).parameters
    kw = dict(kw, generator=generator)
    unknown = sorted(k for k in kw if k not in accepted and k not in _COMMON_KNOBS)
    if unknown:
        raise TypeError(
            f"loss {name!r} got unexpected keyword argument(s) {unknown}; accepts {list(accepted)[3:]}"
        )
    args = {k: v for k, v in kw.items() if k in accepted}
    if "generator" in accepted and args.get("generator") is None:
        raise ValueError(f"loss {name!r} samples negatives and needs a torch.Generator")
    return fn(model, inputs, targets, **args)
