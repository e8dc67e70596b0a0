"""Left padding, training batches (alignment, truncation, shuffling) and evaluation batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsc4rec.data import EvalBatch, EvalBatches, TrainBatches, pad_left


def test_pad_left_keeps_the_most_recent_items() -> None:
    padded = pad_left([[1, 2, 3], [4], [], (5, 6), np.array([7, 8, 9, 10])], 2)
    assert padded.dtype == torch.long
    assert padded.tolist() == [[2, 3], [0, 4], [0, 0], [5, 6], [9, 10]]
    assert pad_left([[1, 2]], 4).tolist() == [[0, 0, 1, 2]]
    assert pad_left([], 3).shape == (0, 3)
    assert pad_left([torch.tensor([3, 4])], 3).tolist() == [[0, 3, 4]]
    with pytest.raises(ValueError, match="max_len must be >= 1, got 0"):
        pad_left([[1]], 0)


def test_train_batches_hand_example() -> None:
    sequences = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [7], [2, 3], [1, 2, 3, 4, 5]]
    batches = TrainBatches(sequences, max_len=4, batch_size=10, shuffle=False)
    assert batches.skipped == 1
    assert batches.num_examples == 4
    assert len(batches) == 1
    (inputs, targets), *rest = list(batches)
    assert rest == []
    assert inputs.dtype == targets.dtype == torch.long
    assert inputs.tolist() == [
        [0, 0, 1, 2],
        [5, 6, 7, 8],  # longer than max_len + 1: only the last 5 items [5..9] are used
        [0, 0, 0, 2],
        [1, 2, 3, 4],  # exactly max_len + 1 items: nothing dropped
    ]
    assert targets.tolist() == [
        [0, 0, 2, 3],
        [6, 7, 8, 9],
        [0, 0, 0, 3],
        [2, 3, 4, 5],
    ]
    assert batches.num_targets == 2 + 4 + 1 + 4
    # Targets are zero exactly where the input is padding.
    assert torch.equal(targets == 0, inputs == 0)


def test_train_batches_sizes_and_last_partial_batch() -> None:
    sequences = [[i, i + 1] for i in range(1, 6)]
    batches = TrainBatches(sequences, max_len=3, batch_size=2, shuffle=False)
    assert len(batches) == 3
    # Batches are cut to their longest row: every pair here has one input position.
    shapes = [tuple(inputs.shape) for inputs, _ in batches]
    assert shapes == [(2, 1), (2, 1), (1, 1)]
    assert torch.cat([targets for _, targets in batches])[:, -1].tolist() == [2, 3, 4, 5, 6]


def epoch_order(batches: TrainBatches, epoch: int) -> list[int]:
    """First item of every example in iteration order (each example is identified by its first item)."""
    batches.set_epoch(epoch)
    return torch.cat([inputs[:, -1] for inputs, _ in batches]).tolist()


def test_train_batches_shuffle_is_deterministic_per_seed_and_epoch() -> None:
    sequences = [[i, 1000 + i] for i in range(1, 65)]
    first = TrainBatches(sequences, max_len=5, batch_size=8, seed=3)
    second = TrainBatches(sequences, max_len=5, batch_size=8, seed=3)
    other_seed = TrainBatches(sequences, max_len=5, batch_size=8, seed=4)
    assert epoch_order(first, 1) == epoch_order(second, 1)
    assert epoch_order(first, 2) == epoch_order(second, 2)
    assert epoch_order(first, 1) != epoch_order(first, 2)
    assert epoch_order(first, 1) != epoch_order(other_seed, 1)
    # Going back to an epoch reproduces it; every epoch is a permutation of all examples.
    assert epoch_order(first, 1) == epoch_order(second, 1)
    assert sorted(epoch_order(first, 7)) == list(range(1, 65))
    unshuffled = TrainBatches(sequences, max_len=5, batch_size=8, shuffle=False)
    assert epoch_order(unshuffled, 5) == list(range(1, 65))


def test_train_batches_pairs_stay_aligned_after_shuffling() -> None:
    sequences = [[i, i + 100, i + 200] for i in range(1, 30)]
    batches = TrainBatches(sequences, max_len=3, batch_size=4, seed=1)
    batches.set_epoch(2)
    for inputs, targets in batches:
        assert (targets[:, -1] == inputs[:, -1] + 100).all()
        assert (targets[:, -2] == inputs[:, -2] + 100).all()
        assert inputs.shape[1] == 2 and (inputs != 0).all() and (targets != 0).all()


def test_bucketing_groups_similar_lengths_and_covers_every_example_once() -> None:
    rng = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 40, (400,), generator=rng).tolist()
    sequences = [[row + 1] * length for row, length in enumerate(lengths)]
    bucketed = TrainBatches(sequences, max_len=30, batch_size=16, seed=5, bucket_batches=25)
    plain = TrainBatches(sequences, max_len=30, batch_size=16, seed=5, bucket_by_length=False)
    for epoch in (1, 2):
        bucketed.set_epoch(epoch)
        seen = torch.cat([inputs[:, -1] for inputs, _ in bucketed]).sort().values
        assert seen.tolist() == list(range(1, 401))
        assert len(list(bucketed)) == len(bucketed) == 25

    # Every batch is as wide as its longest row, and bucketing pads far less than random batches.
    def padding(batches: TrainBatches) -> int:
        total = 0
        for inputs, _ in batches:
            assert (inputs[:, 0] != 0).any()
            total += int((inputs == 0).sum())
        return total

    assert padding(bucketed) * 3 < padding(plain)


def test_train_batches_errors() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainBatches([[1, 2]], max_len=3, batch_size=0)
    expected = r"training sequence row 2: item id 0 < 1 \(item ids start at 1; 0 is padding\)"
    with pytest.raises(ValueError, match=expected):
        # Row numbers refer to the caller's list, also when shorter rows before it are skipped.
        TrainBatches([[1, 2], [5], [3, 0, 4]], max_len=3, batch_size=2)
    empty = TrainBatches([[1], []], max_len=3, batch_size=2)
    assert (empty.skipped, empty.num_examples, empty.num_targets, len(empty)) == (2, 0, 0, 0)
    assert list(empty) == []


def test_eval_batches_rows_targets_and_seen() -> None:
    histories = [[1, 2, 3], [4], [5, 6]]
    # File order with sort_by_length=False: rows 0, 1 then 2; each batch cut to its longest history.
    batches = EvalBatches(histories, [7, 8, 9], max_len=2, batch_size=2, sort_by_length=False)
    assert (len(batches), batches.num_rows) == (2, 3)
    first, second = list(batches)
    assert isinstance(first, EvalBatch)
    assert first.history.tolist() == [[2, 3], [0, 4]]
    assert first.targets.tolist() == [7, 8]
    assert first.rows.tolist() == [0, 1]
    assert first.seen is not None and first.seen.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert second.history.tolist() == [[5, 6]]
    assert second.targets.tolist() == [9]
    assert second.rows.tolist() == [2]
    assert second.seen is not None and second.seen.tolist() == [[5, 6]]
    assert all(t.dtype == torch.long for t in (*first[:3], first.seen))
    plain = list(EvalBatches(histories, [7, 8, 9], max_len=2, batch_size=2, exclude_history=False))
    assert [b.seen for b in plain] == [None, None]
    # Default: rows grouped by history length (shortest first), each batch as wide as its longest history.
    by_length = list(EvalBatches(histories, [7, 8, 9], max_len=5, batch_size=2))
    assert [b.rows.tolist() for b in by_length] == [[1, 2], [0]]
    assert by_length[0].history.tolist() == [[0, 4], [5, 6]]
    assert by_length[0].targets.tolist() == [8, 9]
    assert by_length[0].seen is not None and by_length[0].seen.tolist() == [[0, 4], [5, 6]]
    assert by_length[1].history.tolist() == [[1, 2, 3]]


def test_eval_batches_cover_every_row_once_with_its_own_history() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 30, (97,), generator=gen).tolist()
    histories = [torch.randint(1, 100, (n,), generator=gen).tolist() for n in lengths]
    targets = list(range(1, 98))
    seen_rows = []
    for batch in EvalBatches(histories, targets, max_len=10, batch_size=8):
        assert batch.seen is not None
        for i, row in enumerate(batch.rows.tolist()):
            seen_rows.append(row)
            assert int(batch.targets[i]) == targets[row]
            real = [x for x in batch.history[i].tolist() if x]
            assert real == histories[row][-10:]
            assert [x for x in batch.seen[i].tolist() if x] == histories[row]
    assert sorted(seen_rows) == list(range(97))


def test_eval_batches_errors() -> None:
    with pytest.raises(ValueError, match="2 histories but 3 targets"):
        EvalBatches([[1], [2]], [1, 2, 3], max_len=2, batch_size=2)
    with pytest.raises(ValueError, match="history of row 1 is empty"):
        EvalBatches([[1], [], [2]], [1, 2, 3], max_len=2, batch_size=2)
    with pytest.raises(ValueError, match="target of row 1 is 0"):
        EvalBatches([[1], [2]], [1, 0], max_len=2, batch_size=2)
    with pytest.raises(ValueError, match="history row 0: item id -1 < 1"):
        EvalBatches([[-1, 2]], [1], max_len=2, batch_size=2)
