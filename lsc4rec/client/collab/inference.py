"""What a device does with a cloud candidate list: drop what it has seen, score the rest with its SRM.

Shared by the experiments and the device client, so a simulated device and a deployed one rerank the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lsc4rec.client.collab.request_policy import inconsistency
from lsc4rec.data import pad_left
from lsc4rec.models.srm import SequentialRecommender

#: Values of ``collab.candidate_pool``: what the device fuses over.
CANDIDATE_POOLS: tuple[str, ...] = ("llm", "union")

#: Devices a node's SRM scores at once. A node hosts thousands of devices; encoding all of them in one batch
#: held every layer's activations for all at once (ONNX Runtime's arena then keeps that peak): 10 GB per node
#: on Beauty's test phase, where two nodes exceeded a 24 GB machine. The scores themselves stay whole.
SCORING_CHUNK = 1024


def in_device_chunks(score: Callable[..., Tensor], *rows: Tensor) -> Tensor:
    """``score(*rows)`` computed :data:`SCORING_CHUNK` devices (rows) at a time and concatenated (the same
    values)."""
    count, chunk = rows[0].shape[0], SCORING_CHUNK
    if count <= chunk:
        return score(*rows)
    return torch.cat([score(*(r[i : i + chunk] for r in rows)) for i in range(0, count, chunk)])


__all__ = [
    "CANDIDATE_POOLS",
    "candidate_scores_from",
    "catalogue_scores",
    "device_pool",
    "device_top_items",
    "drop_seen",
    "in_device_chunks",
    "request_score_table",
    "seen_items",
    "srm_candidate_scores",
    "srm_catalogue_scores",
    "union_candidates",
    "without_consumed",
]


def seen_items(histories: Sequence[Sequence[int]]) -> Tensor:
    """Each device's whole history, left-padded to the longest: all it has consumed, also past ``max_len``."""
    return pad_left(histories, max((len(h) for h in histories), default=1) or 1)


def drop_seen(items: Tensor, histories: Tensor) -> Tensor:
    """``items [B, n]`` with every item of the row's real-time history ``[B, L]`` replaced by 0 (empty)."""
    seen = (items[:, :, None] == histories[:, None, :]).any(dim=2) & (items > 0)
    return items.masked_fill(seen, 0)


@torch.no_grad()
def srm_candidate_scores(srm: SequentialRecommender, histories: Tensor, items: Tensor) -> Tensor:
    """The SRM scores ``[B, n]`` of candidate ``items`` after left-padded ``histories``; empty slots -inf."""
    srm.eval()
    scores = in_device_chunks(srm.score_candidates, histories, items.clamp(min=1))
    return scores.masked_fill(items == 0, float("-inf"))


@torch.no_grad()
def srm_catalogue_scores(srm: SequentialRecommender, histories: Tensor, seen: Tensor | None = None) -> Tensor:
    """The SRM's scores ``[B, num_items + 1]`` of every item; padding and consumed items are -inf.

    ``histories`` is the model's (truncated) input; ``seen`` (default: ``histories``) the device's whole
    history, left-padded, whose items are all excluded.
    """
    return without_consumed(catalogue_scores(srm, histories), histories if seen is None else seen)


@torch.no_grad()
def catalogue_scores(srm: SequentialRecommender, histories: Tensor) -> Tensor:
    """The SRM's raw scores ``[B, num_items + 1]`` of every item after left-padded ``histories`` (nothing
    excluded), :data:`SCORING_CHUNK` devices at a time."""
    srm.eval()
    return in_device_chunks(srm.score_all, histories)


def without_consumed(scores: Tensor, seen: Tensor) -> Tensor:
    """Catalogue ``scores [B, num_items + 1]`` with padding and each row's ``seen`` items set to -inf, in
    place (returned)."""
    scores[:, 0] = float("-inf")
    return scores.scatter_(1, seen, float("-inf"))


def candidate_scores_from(catalogue: Tensor, items: Tensor) -> Tensor:
    """The scores ``[B, n]`` of candidate ``items`` read from the rows' catalogue scores (empty slots -inf):
    what :func:`srm_candidate_scores` computes, without encoding the histories again."""
    return catalogue.gather(1, items.clamp(min=0)).masked_fill(items == 0, float("-inf"))


def request_score_table(
    srm: SequentialRecommender,
    histories: Tensor,
    items: Tensor,
    srm_scores: Tensor,
    methods: Sequence[str],
    k: int,
    catalogue: Tensor | None = None,
) -> dict[str, Tensor]:
    """Several inconsistency scores ``{method: [B]}`` of the same lists; the catalogue is scored once.

    ``catalogue`` may pass the SRM's :func:`srm_catalogue_scores` of ``histories`` when already computed.
    """
    if catalogue is None and any(m in ("missing_mass", "uncovered_mass", "coverage") for m in methods):
        catalogue = srm_catalogue_scores(srm, histories)
    top = catalogue.topk(k, dim=1).indices if "coverage" in methods and catalogue is not None else None
    return {
        method: inconsistency(items, srm_scores, method, k, srm_top_items=top, srm_catalogue_scores=catalogue)
        for method in methods
    }


def device_top_items(catalogue: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The SRM's own top-``n`` items ``[B, n]`` over the catalogue and their scores (empty slots 0 / -inf).

    ``catalogue`` is :func:`srm_catalogue_scores` (history and padding already -inf), so a consumed item
    never comes out.
    """
    scores, items = catalogue.topk(min(n, catalogue.shape[1] - 1), dim=1)
    empty = scores == float("-inf")
    return items.masked_fill(empty, 0), scores


def device_pool(
    items: Tensor, top: Callable[[], tuple[Tensor, Tensor]], pool: str
) -> tuple[Tensor, Tensor] | None:
    """The device's own items ``top()`` (:func:`device_top_items`, computed only when needed) to add to its
    candidate ``items``: for every row with ``pool="union"``; with ``pool="llm"`` only for rows holding no
    cloud item (the cloud was unreachable), so such a device ranks with its own model; None when nothing is
    added."""
    if pool == "union":
        return top()
    empty = ~(items > 0).any(dim=1, keepdim=True)
    if not bool(empty.any()):
        return None
    own, scores = top()
    return own.masked_fill(~empty, 0), scores.masked_fill(~empty, float("-inf"))


def union_candidates(
    llm_items: Tensor, llm_scores: Tensor, llm_srm: Tensor, device_items: Tensor, device_srm: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The cloud's list followed by the device's own top items it lacks: ``(items, LLM, SRM)`` ``[B, n + m]``.

    The cloud only scores its own list, so an item that only the device proposes gets the row's lowest LLM
    score (the cloud ranked it below its whole list); both lists are already free of consumed items, and an
    item the cloud also proposed keeps its cloud slot. Empty slots are item 0 with -inf scores.
    """
    duplicate = (device_items[:, :, None] == llm_items[:, None, :]).any(dim=2) | (device_items == 0)
    extra_items = device_items.masked_fill(duplicate, 0)
    finite = torch.isfinite(llm_scores) & (llm_items > 0)
    floor = torch.where(finite, llm_scores, torch.full_like(llm_scores, float("inf"))).min(dim=1).values
    floor = torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))
    extra_llm = floor[:, None].expand_as(extra_items).masked_fill(duplicate, float("-inf"))
    extra_srm = device_srm.masked_fill(duplicate, float("-inf"))
    return (
        torch.cat([llm_items, extra_items], dim=1),
        torch.cat([llm_scores, extra_llm.to(llm_scores.dtype)], dim=1),
        torch.cat([llm_srm, extra_srm.to(llm_srm.dtype)], dim=1),
    )
