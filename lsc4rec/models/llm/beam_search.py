"""Beam search over item codes, constrained to a trie of valid items: only real, allowed items come out.

At each level the next token of a beam may only be a token that continues the code of some item that (a) is
consistent with the beam's prefix and (b) is allowed for that row (not in the user's history, not padding).
Because every item has a unique code of fixed length and the beams of one row hold distinct prefixes, the
finished beams name distinct items: an invalid or repeated id can never be produced. A beam's score is the
sum of its tokens' log-probabilities, i.e. the model's log-probability of the item.

With one token per item the search is exact: it is the top-n of the allowed items' log-probabilities.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lsc4rec.models.llm.item_tokens import ItemTokenizer

__all__ = ["NextTokenLogProbs", "constrained_beam_search"]

# (rows [R] = the batch row of each beam, prefixes [R, level] = the tokens generated so far) -> [R, vocab]
NextTokenLogProbs = Callable[[Tensor, Tensor], Tensor]


def constrained_beam_search(
    next_token_logprobs: NextTokenLogProbs,
    tokenizer: ItemTokenizer,
    allowed_items: Tensor,
    n: int,
    beam_width: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-``n`` allowed items per row with their log-probabilities, best first.

    ``allowed_items [B, num_items + 1]`` is True where an item may be recommended (column 0, padding, is
    ignored). Returns ``(items [B, n], scores [B, n])``; when a row allows fewer than ``n`` items the
    remaining slots hold item 0 and score ``-inf``. ``beam_width`` (default ``n``) is the number of prefixes
    kept at intermediate levels; it only matters for codes longer than one token.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    width = max(n, beam_width or n)
    batch = allowed_items.shape[0]
    codes = tokenizer.codes[1:]  # [N, D]
    allowed = allowed_items[:, 1:].bool()  # [B, N]
    vocab = tokenizer.vocab_size
    # Beams: per row K prefixes and their scores; start with one empty prefix per row.
    prefixes = torch.zeros(batch, 1, 0, dtype=torch.long)
    scores = torch.zeros(batch, 1)
    for level in range(tokenizer.depth):
        beams = prefixes.shape[1]
        rows = torch.arange(batch).repeat_interleave(beams)
        logprobs = next_token_logprobs(rows, prefixes.reshape(batch * beams, level)).reshape(
            batch, beams, vocab
        )
        # Items still reachable from each beam: allowed for the row and matching the prefix so far.
        reachable = allowed[:, None, :].expand(batch, beams, -1)
        if level > 0:
            same_prefix = (codes[None, None, :, :level] == prefixes[:, :, None, :]).all(dim=-1)  # [B, K, N]
            reachable = reachable & same_prefix
        next_ok = torch.zeros(batch, beams, vocab, dtype=torch.uint8)
        next_ok.scatter_reduce_(
            2, codes[:, level].expand(batch, beams, -1), reachable.to(torch.uint8), reduce="amax"
        )
        candidates = (scores[:, :, None] + logprobs).masked_fill(next_ok == 0, float("-inf"))
        keep = min(n if level == tokenizer.depth - 1 else width, beams * vocab)
        top_scores, flat = candidates.reshape(batch, beams * vocab).topk(keep, dim=1)
        parent, token = flat // vocab, flat % vocab
        prefixes = torch.cat(
            [torch.gather(prefixes, 1, parent[:, :, None].expand(-1, -1, level)), token[..., None]], 2
        )
        scores = top_scores
    items = tokenizer.items_from_codes(prefixes)
    dead = torch.isinf(scores)
    items = items.masked_fill(dead, 0)
    if items.shape[1] < n:  # a catalogue smaller than n: pad the list
        pad = n - items.shape[1]
        items = torch.cat([items, torch.zeros(batch, pad, dtype=torch.long)], dim=1)
        scores = torch.cat([scores, torch.full((batch, pad), float("-inf"))], dim=1)
    return items, scores
