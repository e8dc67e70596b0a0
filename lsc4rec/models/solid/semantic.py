"""Semantic ids of items and semantic sequences.

An item's semantic id is its tuple of codebook codes (``codes [num_items + 1, levels]``, 0-based per level,
row 0 = the padding item). A *semantic token* folds the first ``prefix_levels`` codes into one integer in
``1..prod(sizes[:prefix_levels])`` (0 stays padding), so a semantic sequence is an ordinary id sequence any
SRM encoder can read: items that share a coarse code share a token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["disambiguate", "semantic_sequences", "semantic_token_table", "semantic_vocabulary_size"]


def _check_codes(codes: Tensor, sizes: Sequence[int]) -> None:
    if codes.ndim != 2 or codes.shape[1] != len(sizes) or codes.shape[0] < 2:
        raise ValueError(
            f"semantic ids must be [num_items + 1, {len(sizes)}] (row 0 = padding), got {tuple(codes.shape)}"
        )
    items = codes[1:]
    for level, k in enumerate(sizes):
        column = items[:, level]
        if int(column.min()) < 0 or int(column.max()) >= k:
            raise ValueError(
                f"semantic id level {level}: codes must lie in 0..{k - 1}, "
                f"got {int(column.min())}..{int(column.max())}"
            )


def semantic_vocabulary_size(sizes: Sequence[int], prefix_levels: int) -> int:
    """Number of distinct semantic tokens (excluding padding) for the first ``prefix_levels`` levels."""
    if not 1 <= prefix_levels <= len(sizes):
        raise ValueError(
            f"model.trunk_levels must be in 1..{len(sizes)} (codebook levels), got {prefix_levels}"
        )
    size = 1
    for k in sizes[:prefix_levels]:
        size *= int(k)
    return size


def semantic_token_table(codes: Tensor, sizes: Sequence[int], prefix_levels: int) -> Tensor:
    """``[num_items + 1]`` table: item id -> semantic token (1-based mixed radix of its code prefix)."""
    semantic_vocabulary_size(sizes, prefix_levels)
    _check_codes(codes, sizes)
    token = torch.zeros(codes.shape[0], dtype=torch.long)
    for level in range(prefix_levels):
        token = token * int(sizes[level]) + codes[:, level].long()
    token = token + 1
    token[0] = 0
    return token


def semantic_sequences(sequences: Sequence[Sequence[int]], token_table: Tensor) -> list[list[int]]:
    """Item sequences rewritten as semantic-token sequences (same lengths, same order)."""
    table = token_table.tolist()
    try:
        return [[table[item] for item in seq] for seq in sequences]
    except IndexError:
        bad = next(i for seq in sequences for i in seq if not 0 <= i < len(table))
        raise ValueError(f"item id {bad} has no semantic id (table covers 0..{len(table) - 1})") from None


def disambiguate(codes: Tensor) -> Tensor:
    """Semantic ids made unique per item by one extra level: the item's rank among items with its tuple.

    Needed where a semantic id must name exactly one item (the cloud LLM's item tokens, decoded through a
    trie); the extra level's size is the largest collision group. Row 0 (padding) stays all zeros.
    """
    items = codes[1:]
    extra = torch.zeros(items.shape[0], dtype=torch.long)
    seen: dict[tuple[int, ...], int] = {}
    for row, key in enumerate(map(tuple, items.tolist())):
        extra[row] = seen.get(key, 0)
        seen[key] = int(extra[row]) + 1
    out = torch.zeros(codes.shape[0], codes.shape[1] + 1, dtype=torch.long)
    out[1:, :-1] = items
    out[1:, -1] = extra
    return out
