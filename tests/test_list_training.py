"""Collaborative training on a device node: rows aligned with the cloud's per-position lists, and training on
them teaches the SRM to rank the true next item above the cloud's hard candidates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsc4rec.client.collab.list_training import rerank_rows, teacher_rows, train_on_cloud_lists
from lsc4rec.models.srm import build_srm
from lsc4rec.training import TrainSettings


def test_rows_pair_each_cloud_list_with_the_item_that_came_next() -> None:
    sequences = [[5, 6, 7, 8, 9], [3, 4], [2]]
    # The cloud holds 3 items of the first device, 1 of the second, none of the third.
    tables = [
        np.array([[11, 12], [13, 14], [15, 16]]),
        np.array([[17, 18]]),
        np.zeros((0, 2), dtype=np.int64),
    ]
    inputs, targets, hard = rerank_rows(sequences, tables, max_len=4)
    assert inputs.tolist() == [[0, 5, 6, 7], [0, 0, 0, 3]]
    # The last list of the first device predicts item 8, which only the device holds.
    assert targets.tolist() == [[0, 6, 7, 8], [0, 0, 0, 4]]
    assert hard[0, 1:].tolist() == [[11, 12], [13, 14], [15, 16]] and hard[1, 3].tolist() == [17, 18]
    assert hard[0, 0].tolist() == [0, 0]
    # A history longer than max_len keeps its most recent positions.
    inputs, targets, _ = rerank_rows(sequences[:1], tables[:1], max_len=2)
    assert inputs.tolist() == [[6, 7]] and targets.tolist() == [[7, 8]]


def test_teacher_scores_line_up_with_the_lists_row_for_row() -> None:
    sequences = [[5, 6, 7, 8, 9], [3, 4], [2]]
    tables = [
        np.array([[11, 12], [13, 14], [15, 16]]),
        np.array([[17, 18]]),
        np.zeros((0, 2), dtype=np.int64),
    ]
    scores = [-np.arange(t.size, dtype=np.float32).reshape(t.shape) for t in tables]
    teacher = teacher_rows(sequences, tables, scores, max_len=4)
    _, _, hard = rerank_rows(sequences, tables, max_len=4)
    assert teacher.shape == hard.shape == (2, 4, 2)
    assert teacher[0, 1:].tolist() == [[0.0, -1.0], [-2.0, -3.0], [-4.0, -5.0]]
    assert teacher[1, 3].tolist() == [0.0, -1.0]
    assert torch.isinf(teacher[0, 0]).all() and torch.isinf(teacher[1, :3]).all()  # padding
    with pytest.raises(ValueError, match="do not match its candidates"):
        teacher_rows(sequences, tables, [scores[0][:, :1], scores[1], scores[2]], max_len=4)


def test_training_on_the_lists_ranks_the_next_item_above_the_cloud_candidates() -> None:
    torch.manual_seed(0)
    num_items, k = 40, 5
    rng = np.random.default_rng(0)
    # Each item is followed by item + 1; the cloud's lists are plausible but wrong items.
    sequences = [list(range(s, s + 8)) for s in rng.integers(1, num_items - 8, size=64)]
    tables = [
        np.array([[(i + 2 + j) % num_items + 1 for j in range(k)] for i in seq[:6]]) for seq in sequences
    ]
    model = build_srm("sasrec", num_items, hidden_size=16, num_blocks=1, num_heads=1, dropout=0.0)
    inputs, targets, hard = rerank_rows(sequences, tables, max_len=8)

    def hits() -> float:
        model.eval()
        with torch.no_grad():
            scores = model.score_all(inputs)
        rows = torch.arange(len(inputs))
        target_score = scores[rows, targets[:, -1]]
        return float((target_score[:, None] > scores.gather(1, hard[:, -1])).all(dim=1).float().mean())

    before = hits()
    settings = TrainSettings(lr=0.01, batch_size=16, progress=False)
    losses = [
        train_on_cloud_lists(model, sequences, tables, settings, 8, random_negatives=10, seed=e)[
            "rerank-loss"
        ]
        for e in range(15)
    ]
    assert losses[-1] < 0.5 * losses[0]
    assert hits() > max(before, 0.9)


def test_the_pass_over_the_lists_does_not_depend_on_what_the_process_drew_before() -> None:
    # A real ClientApp process has drawn a different amount from torch's global generator in each run; the
    # pass's dropout masks must come from its own seed (two real runs of the whole system differed here).
    num_items, k = 40, 5
    rng = np.random.default_rng(1)
    sequences = [list(range(s, s + 8)) for s in rng.integers(1, num_items - 8, size=32)]
    tables = [
        np.array([[(i + 2 + j) % num_items + 1 for j in range(k)] for i in seq[:6]]) for seq in sequences
    ]
    settings = TrainSettings(lr=0.01, batch_size=8, progress=False)
    results = []
    for draws in (0, 1000):
        torch.manual_seed(0)
        model = build_srm("sasrec", num_items, hidden_size=16, num_blocks=1, num_heads=1, dropout=0.5)
        torch.rand(draws)  # what the process drew before the pass
        metrics = train_on_cloud_lists(model, sequences, tables, settings, 8, random_negatives=10, seed=3)
        results.append((metrics["rerank-loss"], model.state_dict()))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(results[0][1][key], results[1][1][key]) for key in results[0][1])
