"""LSC4Rec collaborative training on a device node: the SRM learns to rerank the lists the cloud sends.

The federated form of :mod:`lsc4rec.client.collab.rerank_training`: instead of calling the LLM, the node
asks the candidate service for the LLM's top-k next items after every prefix of each device's history as the
cloud holds it (``PositionCandidatesForUsers``: the cloud's stale copy, so nothing new leaves the device), and
trains the SRM to put the item that really came next (the device knows it) above those hard candidates and
above random ones. The node then adapts on its fresh data with the standard objective (the round's local
epochs).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from lsc4rec.models.srm import SequentialRecommender, candidate_rerank_loss, list_distillation_loss
from lsc4rec.training import TrainSettings, model_device

__all__ = ["rerank_rows", "rerank_step", "teacher_rows", "train_on_cloud_lists"]


def _row_windows(
    sequences: Sequence[Sequence[int]], candidates: Sequence[np.ndarray], max_len: int
) -> Iterator[tuple[int, int, int, int]]:
    """``(device, start, usable, pad)`` per device with a trainable position (see :func:`rerank_rows`)."""
    if len(sequences) != len(candidates):
        raise ValueError(f"{len(sequences)} sequences but {len(candidates)} candidate tables")
    for device, (seq, table) in enumerate(zip(sequences, candidates, strict=True)):
        usable = min(len(table), len(seq) - 1)
        if usable < 1:
            continue
        start = max(usable - max_len, 0)
        yield device, start, usable, max_len - (usable - start)


def rerank_rows(
    sequences: Sequence[Sequence[int]], candidates: Sequence[np.ndarray], max_len: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Training rows ``(inputs, targets, hard)`` ``[R, max_len]``, ``[R, max_len]``, ``[R, max_len, k]``.

    ``candidates[u]`` is ``[P_u, k]``: the cloud's lists after each of the first ``P_u`` items of device
    ``u``'s sequence; position ``j`` trains towards ``sequences[u][j + 1]`` (positions whose next item the
    device does not hold yet are dropped). Rows keep their last ``max_len`` positions, left-padded with 0.
    """
    k = max((c.shape[1] for c in candidates if c.ndim == 2 and c.size), default=1)
    inputs, targets, hard = [], [], []
    for device, start, usable, pad in _row_windows(sequences, candidates, max_len):
        seq, table = sequences[device], candidates[device]
        row_inputs = np.zeros(max_len, dtype=np.int64)
        row_targets = np.zeros(max_len, dtype=np.int64)
        row_hard = np.zeros((max_len, k), dtype=np.int64)
        row_inputs[pad:] = seq[start:usable]
        row_targets[pad:] = seq[start + 1 : usable + 1]
        row_hard[pad:, : table.shape[1]] = table[start:usable]
        inputs.append(row_inputs)
        targets.append(row_targets)
        hard.append(row_hard)
    if not inputs:
        empty = torch.zeros((0, max_len), dtype=torch.long)
        return empty, empty.clone(), torch.zeros((0, max_len, k), dtype=torch.long)
    return (
        torch.from_numpy(np.stack(inputs)),
        torch.from_numpy(np.stack(targets)),
        torch.from_numpy(np.stack(hard)),
    )


def teacher_rows(
    sequences: Sequence[Sequence[int]],
    candidates: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    max_len: int,
) -> Tensor:
    """The cloud's scores ``[R, max_len, k]`` of :func:`rerank_rows`' ``hard`` lists, row for row
    (``-inf`` at padding and empty slots): the soft targets of list distillation."""
    if len(scores) != len(candidates):
        raise ValueError(f"{len(scores)} score tables for {len(candidates)} candidate tables")
    k = max((c.shape[1] for c in candidates if c.ndim == 2 and c.size), default=1)
    rows = []
    for device, start, usable, pad in _row_windows(sequences, candidates, max_len):
        table = scores[device]
        if table.shape != candidates[device].shape:
            raise ValueError(
                f"device {device}: scores {table.shape} do not match its candidates "
                f"{candidates[device].shape}"
            )
        row = np.full((max_len, k), -np.inf, dtype=np.float32)
        row[pad:, : table.shape[1]] = table[start:usable]
        rows.append(row)
    if not rows:
        return torch.zeros((0, max_len, k), dtype=torch.float32)
    return torch.from_numpy(np.stack(rows))


def rerank_step(
    model: SequentialRecommender,
    optimizer: torch.optim.Optimizer,
    inputs: Tensor,
    targets: Tensor,
    hard: Tensor,
    generator: torch.Generator,
    random_negatives: int,
    grad_clip: float,
    teacher_scores: Tensor | None = None,
    distill_weight: float = 0.0,
    temperature: float = 1.0,
) -> float:
    """One optimiser step of the candidate-rerank loss on a batch; returns the loss.

    With ``teacher_scores [B, L, k]`` (the cloud's scores of the ``hard`` lists) and ``distill_weight > 0``
    the step adds ``distill_weight · list_distillation_loss``: the cloud's scores as soft targets.
    """
    loss = candidate_rerank_loss(model, inputs, targets, hard, generator, random_negatives)
    if teacher_scores is not None and distill_weight > 0:
        loss = loss + distill_weight * list_distillation_loss(
            model, inputs, targets, hard, teacher_scores, temperature
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


def _batches(rows: int, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Shuffled row indices in batches of ``batch_size``."""
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
    yield from order.split(batch_size)


def train_on_cloud_lists(
    model: SequentialRecommender,
    sequences: Sequence[Sequence[int]],
    candidates: Sequence[np.ndarray],
    settings: TrainSettings,
    max_len: int,
    random_negatives: int,
    seed: int,
    scores: Sequence[np.ndarray] | None = None,
    distill_weight: float = 0.0,
    temperature: float = 1.0,
) -> dict[str, float]:
    """One pass of candidate-rerank training over the devices' positions the cloud sent lists for.

    With the cloud's ``scores`` of those lists and ``distill_weight > 0`` each step adds list distillation.
    Returns the mean rerank loss, the number of positions trained on and the seconds it took.
    """
    start = time.perf_counter()
    inputs, targets, hard = rerank_rows(sequences, candidates, max_len)
    if len(inputs) == 0:
        return {"rerank-loss": 0.0, "rerank-positions": 0.0, "rerank-seconds": 0.0}
    teacher = teacher_rows(sequences, candidates, scores, max_len) if scores and distill_weight > 0 else None
    device = model_device(model)
    optimizer = settings.make_optimizer(model.parameters())
    # Dropout draws from torch's global generator: seeded here, the pass does not depend on what the process
    # drew before (a real ClientApp process's history differs from run to run; the in-process one's does not).
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    total, count = 0.0, 0
    for index in _batches(len(inputs), settings.batch_size, seed):
        batch = inputs[index].to(device), targets[index].to(device), hard[index].to(device)
        soft = teacher[index].to(device) if teacher is not None else None
        total += rerank_step(
            model,
            optimizer,
            *batch,
            generator,
            random_negatives,
            settings.grad_clip,
            soft,
            distill_weight,
            temperature,
        )
        count += 1
    return {
        "rerank-loss": total / max(count, 1),
        "rerank-positions": float((targets > 0).sum()),
        "rerank-seconds": time.perf_counter() - start,
    }
