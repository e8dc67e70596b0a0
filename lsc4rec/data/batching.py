"""Turn internal-id sequences into left-padded LongTensor batches for training and evaluation.

Conventions: item ids are 1..num_items and 0 is padding; histories are ``[B, L]`` LongTensors left-padded
with 0, so the most recent item sits in the last column.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch


def _check_positive(name: str, value: int) -> int:
    """Return ``value`` as int, raising ValueError unless it is >= 1."""
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _flatten(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``seqs`` into one int64 array; also return each sequence's length."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    total = int(lengths.sum())
    if all(isinstance(s, list | tuple) for s in seqs):
        flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=total)
    else:
        # Arrays/tensors: let numpy convert each row at C speed instead of iterating over 0-d scalars.
        parts = [np.asarray(s, dtype=np.int64).reshape(-1) for s in seqs]
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return flat, lengths


def _check_item_ids(
    flat: np.ndarray, lengths: np.ndarray, what: str, row_ids: Sequence[int] | None = None
) -> None:
    """Raise ValueError naming the row if any item id is < 1 (0 is reserved for padding).

    ``row_ids`` maps positions in ``lengths`` back to the caller's row numbers when rows were filtered.
    """
    bad = np.flatnonzero(flat < 1)
    if bad.size:
        row = int(np.searchsorted(np.cumsum(lengths), bad[0], side="right"))
        row = row if row_ids is None else int(row_ids[row])
        item = int(flat[bad[0]])
        raise ValueError(f"{what} row {row}: item id {item} < 1 (item ids start at 1; 0 is padding)")


def _pad_left_flat(flat: np.ndarray, lengths: np.ndarray, max_len: int) -> np.ndarray:
    """Left-pad concatenated sequences into ``[len(lengths), max_len]``, keeping each one's last items."""
    out = np.zeros((len(lengths), max_len), dtype=np.int64)
    keep = np.minimum(lengths, max_len)
    kept = int(keep.sum())
    if kept:
        # For every kept item: its row, its offset within the kept tail, then source and destination columns.
        rows = np.repeat(np.arange(len(lengths)), keep)
        offset = np.arange(kept) - np.repeat(np.cumsum(keep) - keep, keep)
        source = np.repeat(np.cumsum(lengths) - keep, keep) + offset
        out[rows, np.repeat(max_len - keep, keep) + offset] = flat[source]
    return out


def pad_left(seqs: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """Stack ``seqs`` into a ``[len(seqs), max_len]`` LongTensor, left-padded with 0.

    Sequences longer than ``max_len`` keep their last ``max_len`` items (the most recent ones).
    """
    max_len = _check_positive("max_len", max_len)
    flat, lengths = _flatten(seqs)
    return torch.from_numpy(_pad_left_flat(flat, lengths, max_len))


class TrainBatches:
    """Next-item training pairs ``(inputs, targets)``, each ``[B, max_len]``, shuffled per epoch.

    For a sequence ``s`` (its last ``max_len + 1`` items when longer, as in SASRec) the inputs are ``s[:-1]``
    and the targets ``s[1:]``, both left-padded so that the target at position ``t`` is the item following
    input ``t``; padding positions have target 0. Sequences with fewer than 2 items give no pair and are
    skipped (counted in ``skipped``). The order is reshuffled per epoch from ``(seed, epoch)``: call
    :meth:`set_epoch`.

    Batches are cut to the width of their longest sequence (columns that are padding in every row carry no
    information: models count positions from the right end). With ``bucket_by_length`` (default), each
    epoch's shuffled rows are grouped in buckets of ``bucket_batches`` batches, sorted by length inside a
    bucket, cut into batches and the batch order shuffled: batches then hold sequences of similar length, so
    short-sequence data (Beauty: mean 8.9 items, max 204) is not padded to the longest sequence of a random
    batch. This changes only which rows share a batch, not what any row contributes.
    """

    def __init__(
        self,
        sequences: Sequence[Sequence[int]],
        max_len: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        bucket_by_length: bool = True,
        bucket_batches: int = 50,
    ) -> None:
        """Pad all usable sequences once; iteration then only indexes the stored tensors."""
        self.bucket_by_length = bool(bucket_by_length)
        self.bucket_batches = _check_positive("bucket_batches", bucket_batches)
        self.max_len = _check_positive("max_len", max_len)
        self.batch_size = _check_positive("batch_size", batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        usable_rows = [row for row, seq in enumerate(sequences) if len(seq) >= 2]
        usable = [sequences[row] for row in usable_rows]
        flat, lengths = _flatten(usable)
        _check_item_ids(flat, lengths, "training sequence", usable_rows)
        #: Number of input sequences with fewer than 2 items (no next-item pair).
        self.skipped = len(sequences) - len(usable)
        # One [N, max_len + 1] matrix holds each sequence's last max_len + 1 items (SASRec convention); inputs
        # and targets are its two overlapping windows. The targets window also shows the first item one step
        # before the first input, so positions where the input is padding are cleared to target 0.
        window = torch.from_numpy(_pad_left_flat(flat, lengths, self.max_len + 1))
        #: All examples, ``[num_examples, max_len]``; batches are row subsets of these.
        self.inputs = window[:, :-1].contiguous()
        self.targets = window[:, 1:].contiguous()
        self.targets[self.inputs == 0] = 0
        #: Number of input positions per example (its length, capped at max_len).
        self.lengths = (self.inputs != 0).sum(dim=1)
        #: Number of sequences that give training examples.
        self.num_examples = len(usable)
        #: Number of non-padding target positions over all examples.
        self.num_targets = int((self.targets != 0).sum())

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling order of ``epoch``: the same ``(seed, epoch)`` always gives the same order."""
        self.epoch = int(epoch)

    def order(self) -> torch.Tensor:
        """Row order of the current epoch (identity when ``shuffle`` is False)."""
        if not self.shuffle:
            return torch.arange(self.num_examples)
        # A SeedSequence over (seed, epoch) gives independent, reproducible streams per epoch; the modulo
        # keeps negative seeds legal (SeedSequence entropy must be non-negative).
        rng = np.random.default_rng(np.random.SeedSequence([self.seed % 2**63, self.epoch % 2**63]))
        return torch.from_numpy(rng.permutation(self.num_examples))

    def batch_rows(self) -> list[torch.Tensor]:
        """The row indices of each batch of the current epoch, in iteration order."""
        order = self.order()
        if not (self.shuffle and self.bucket_by_length):
            return list(torch.split(order, self.batch_size))
        rng = np.random.default_rng(np.random.SeedSequence([self.seed % 2**63, self.epoch % 2**63, 1]))
        batches: list[torch.Tensor] = []
        bucket_rows = self.batch_size * self.bucket_batches
        for bucket in torch.split(order, bucket_rows):
            # Stable sort keeps the shuffled order among equal lengths, so ties stay random per epoch.
            by_length = bucket[torch.argsort(self.lengths[bucket], stable=True)]
            batches.extend(torch.split(by_length, self.batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.shuffle and self.bucket_by_length:
            bucket_rows = self.batch_size * self.bucket_batches
            full, rest = divmod(self.num_examples, bucket_rows)
            return full * self.bucket_batches + math.ceil(rest / self.batch_size)
        return math.ceil(self.num_examples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(inputs, targets)`` LongTensors ``[B, W]`` in epoch order (W = the longest row's width)."""
        for rows in self.batch_rows():
            if rows.numel() == 0:
                continue
            width = int(self.lengths[rows].max())
            inputs = self.inputs.index_select(0, rows)[:, self.max_len - width :]
            targets = self.targets.index_select(0, rows)[:, self.max_len - width :]
            yield inputs, targets


class EvalBatch(NamedTuple):
    """One evaluation batch.

    ``history``: ``[B, max_len]`` left-padded, truncated histories (model input). ``targets``: ``[B]`` items
    to rank. ``rows``: ``[B]`` indices into the lists given to :class:`EvalBatches`. ``seen``: ``[B, S]``
    left-padded full (untruncated) histories, to exclude already-seen items from ranking, or None. Note that
    ``seen`` may contain the target itself (repeat consumption); ranking code must never exclude the target.
    """

    history: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor
    seen: torch.Tensor | None


class EvalBatches:
    """Fixed-order evaluation batches of ``(history, target)`` rows; see :class:`EvalBatch`."""

    def __init__(
        self,
        histories: Sequence[Sequence[int]],
        targets: Sequence[int],
        max_len: int,
        batch_size: int,
        exclude_history: bool = True,
        sort_by_length: bool = True,
    ) -> None:
        """Validate and pad the histories once; ``seen`` is built per batch (its width varies by batch)."""
        self.max_len = _check_positive("max_len", max_len)
        self.batch_size = _check_positive("batch_size", batch_size)
        self.exclude_history = bool(exclude_history)
        if len(histories) != len(targets):
            raise ValueError(f"{len(histories)} histories but {len(targets)} targets (they must be parallel)")
        for row, history in enumerate(histories):
            if len(history) == 0:
                raise ValueError(f"history of row {row} is empty (each row needs at least one item)")
        flat, lengths = _flatten(histories)
        _check_item_ids(flat, lengths, "history")
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.int64).reshape(-1))
        bad_targets = torch.nonzero(self.targets < 1).flatten()
        if bad_targets.numel():
            row = int(bad_targets[0])
            raise ValueError(f"target of row {row} is {int(self.targets[row])}; item ids start at 1")
        self.history = torch.from_numpy(_pad_left_flat(flat, lengths, self.max_len))
        # Full histories as one flat array plus offsets, kept only when needed, for the per-batch ``seen``.
        self._flat = flat if self.exclude_history else None
        self._lengths = lengths
        self._starts = np.cumsum(lengths) - lengths
        # Batching rows of similar length lets each batch be cut to its longest history: most histories are
        # far shorter than max_len, and encoding padding is most of the evaluation cost otherwise.
        self._order = (
            np.argsort(lengths, kind="stable") if sort_by_length else np.arange(len(lengths), dtype=np.int64)
        )

    @property
    def num_rows(self) -> int:
        """Number of (history, target) rows."""
        return int(self.targets.numel())

    def __len__(self) -> int:
        """Number of batches."""
        return math.ceil(self.num_rows / self.batch_size)

    def __iter__(self) -> Iterator[EvalBatch]:
        """Yield :class:`EvalBatch` objects (grouped by history length when ``sort_by_length``)."""
        for start in range(0, self.num_rows, self.batch_size):
            rows = self._order[start : start + self.batch_size]
            lengths = self._lengths[rows]
            width = int(min(lengths.max(), self.max_len))
            seen = None
            if self._flat is not None:
                # Gather each row's full history from the flat array: row r covers starts[r] .. + lengths[r].
                offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
                index = np.repeat(self._starts[rows], lengths) + offsets
                seen = torch.from_numpy(_pad_left_flat(self._flat[index], lengths, int(lengths.max())))
            row_index = torch.from_numpy(rows)
            yield EvalBatch(
                history=self.history.index_select(0, row_index)[:, self.max_len - width :],
                targets=self.targets.index_select(0, row_index),
                rows=row_index,
                seen=seen,
            )
