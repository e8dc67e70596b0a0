"""A node's devices serving the interactions that arrive during a round, as time moves (prequential).

Each device starts the round holding its history up to the round's start (:mod:`lsc4rec.data.replay`). For
every interaction that arrives it first ranks (the arriving item is the target, never seen before), then
absorbs it: a streaming SRM (TTT4Rec, SOLID on TTT4Rec) advances its state by one O(1) step instead of
re-encoding the history. With the cloud on, each device holds the list the cloud computed from its stale copy
when the round started; the list goes stale as interactions arrive, the device fuses it with its own ranking,
and at every arrival the ``request.target_ratio`` share of the node's devices whose inconsistency score is
highest upload their history and receive a fresh list, which they keep until they request again.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lsc4rec.client.collab import inference
from lsc4rec.client.collab.fallback import FallbackCloud, as_fallback
from lsc4rec.client.collab.fusion import rerank
from lsc4rec.client.collab.inference import (
    device_pool,
    device_top_items,
    drop_seen,
    in_device_chunks,
    seen_items,
    union_candidates,
)
from lsc4rec.client.collab.serving import CollaborationSettings, budget_mask, request_disagreement
from lsc4rec.data import pad_left
from lsc4rec.messages import alpha_metric
from lsc4rec.metrics import RankingAccumulator, full_ranking_ranks, list_ranks
from lsc4rec.models.llm.candidates import CandidateList, CandidateSource
from lsc4rec.models.srm import SequentialRecommender

__all__ = ["serve_arrivals"]


def _head(value: Any, rows: int) -> Any:
    """The first ``rows`` rows of a (nested) streaming state: tensors, lists, dicts and dataclasses."""
    if isinstance(value, Tensor):
        return value[:rows]
    if isinstance(value, dict):
        return {key: _head(item, rows) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_head(item, rows) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: _head(getattr(value, f.name), rows) for f in dataclasses.fields(value)}
        )
    return value


def _joined(parts: Sequence[Any]) -> Any:
    """Streaming states of consecutive groups of devices joined into one (the inverse of :func:`_head`)."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(list(parts))
    if isinstance(first, dict):
        return {key: _joined([part[key] for part in parts]) for key in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_joined([part[i] for part in parts]) for i in range(len(first)))
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return dataclasses.replace(
            first, **{f.name: _joined([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(first)}
        )
    return first


def _prefill(model: SequentialRecommender, history: Tensor) -> tuple[Any, Tensor]:
    """``model.prefill`` of every device, ``inference.SCORING_CHUNK`` devices at a time (the same states)."""
    chunk = inference.SCORING_CHUNK
    if history.shape[0] <= chunk:
        return model.prefill(history)
    parts = [model.prefill(history[i : i + chunk]) for i in range(0, history.shape[0], chunk)]
    return _joined([state for state, _ in parts]), torch.cat([hidden for _, hidden in parts])


class _DeviceScorer:
    """The devices' next-item scores over the catalogue, kept current as interactions arrive.

    A streaming model keeps each device's state and takes one step per arrival; any other model re-encodes
    the last ``max_len`` items of the history at every arrival.
    """

    def __init__(self, model: SequentialRecommender, histories: list[list[int]], max_len: int) -> None:
        self.model = model
        self.max_len = max_len
        self.streaming = bool(getattr(model, "supports_streaming", False))
        self.updates = 0
        self.state: Any = None
        if self.streaming and histories:
            self.state, self.hidden = _prefill(model, pad_left(histories, max_len))

    def scores(self, histories: list[list[int]]) -> Tensor:
        """Scores ``[B, num_items + 1]`` after each (current) history of the first ``B`` devices."""
        if self.streaming:
            return self.model.score_hidden(self.hidden[: len(histories)])
        return in_device_chunks(self.model.score_all, pad_left(histories, self.max_len))

    def absorb(self, items: Tensor) -> None:
        """The first ``len(items)`` devices consume ``items``; the others are done for this round."""
        if self.streaming:
            self.state = _head(self.state, len(items))
            self.state, self.hidden = self.model.step(self.state, items)
            self.updates += len(items)


@dataclasses.dataclass
class _Lists:
    """The cloud list each device holds (best first), with the cloud's scores."""

    items: Tensor
    scores: Tensor


@dataclasses.dataclass
class _Tally:
    """What serving a round's arrivals counts: rankings of the device, the cloud and the fused lists, and
    the requests."""

    device: RankingAccumulator
    alone: RankingAccumulator
    before: RankingAccumulator
    after: RankingAccumulator
    #: Fused NDCG@10 after the requests at every fusion weight of the server's grid.
    grid: dict[float, RankingAccumulator]
    requests: int = 0
    bytes_moved: int = 0
    failures: int = 0

    @classmethod
    def start(cls, ks: Sequence[int], alpha_grid: Sequence[float]) -> _Tally:
        """Nothing counted yet."""
        device, alone, before, after = (RankingAccumulator(ks) for _ in range(4))
        grid = {float(alpha): RankingAccumulator((10,)) for alpha in alpha_grid}
        return cls(device, alone, before, after, grid)

    def count(self, requests: int, bytes_moved: int, unanswered: int) -> None:
        """Add one step's requests, the bytes they moved and the requests the cloud left unanswered."""
        self.requests, self.bytes_moved = self.requests + requests, self.bytes_moved + bytes_moved
        self.failures += unanswered

    def cloud_metrics(self) -> dict[str, float]:
        """Serving with the cloud: its list alone, the fused lists before and after requests, the requests."""
        metrics = {f"replay-cloud-{k}": v for k, v in self.alone.compute().items()}
        metrics.update({f"replay-collab-before-request-{k}": v for k, v in self.before.compute().items()})
        metrics.update({f"replay-collab-{k}": v for k, v in self.after.compute().items()})
        for alpha, accumulator in self.grid.items():
            metrics[alpha_metric(alpha)] = accumulator.compute()["NDCG@10"]
        metrics["replay-requests"] = float(self.requests)
        metrics["replay-request-failures"] = float(self.failures)
        metrics["replay-request-bytes"] = float(self.bytes_moved)
        return metrics


def _catalogue(raw: Tensor, seen: Tensor, exclude_history: bool) -> Tensor:
    """Raw scores with padding (and, if asked, the consumed items) at -inf."""
    scores = raw.clone()
    scores[:, 0] = float("-inf")
    return scores.scatter_(1, seen, float("-inf")) if exclude_history else scores


@torch.no_grad()
def serve_arrivals(
    model: SequentialRecommender,
    histories: Sequence[Sequence[int]],
    arrivals: Sequence[Sequence[int]],
    max_len: int,
    ks: Sequence[int],
    exclude_history: bool = True,
    cloud: CandidateSource | FallbackCloud | None = None,
    stale: CandidateList | None = None,
    settings: CollaborationSettings | None = None,
    generator: torch.Generator | None = None,
    alpha_grid: Sequence[float] = (),
) -> dict[str, float]:
    """Rank and absorb every arriving interaction of the node's devices; return the round's serving metrics.

    ``histories[u]`` is device ``u``'s history when the round starts and ``arrivals[u]`` what arrives during
    it, in order. With ``cloud``, ``stale`` holds each device's list from the cloud's stale copy and
    ``settings`` how devices fuse and when they request. Returns HR/NDCG/MRR@K over all arrivals of the device
    alone (full ranking) and, with the cloud, of the cloud's list alone, of the fused list before and after
    the step's requests, plus counts (arrivals, requests, requests the cloud left unanswered, streaming
    updates), bytes and seconds. While the cloud is unreachable devices keep the lists they hold; a device
    whose ``stale`` list is empty ranks with its own model until the cloud answers one of its requests.
    """
    if len(histories) != len(arrivals):
        raise ValueError(f"{len(histories)} histories but {len(arrivals)} arrival lists")
    if cloud is not None and (stale is None or settings is None):
        raise ValueError(
            "serving with the cloud needs the devices' stale lists and the collaboration settings"
        )
    start = time.perf_counter()
    cloud = as_fallback(cloud) if cloud is not None else None
    model.eval()
    # Devices with the most arrivals first: the devices still active at step j are always a prefix.
    order = sorted(range(len(arrivals)), key=lambda u: -len(arrivals[u]))
    current = [list(histories[u]) for u in order]
    coming = [list(arrivals[u]) for u in order]
    # Only devices something arrives at are encoded (none in a round without arrivals).
    scorer = _DeviceScorer(model, current[: sum(1 for a in coming if a)], max_len)
    lists = None
    if cloud is not None:
        lists = _Lists(
            torch.from_numpy(stale.items[order]).long(), torch.from_numpy(stale.scores[order]).float()
        )
    tally = _Tally.start(ks, alpha_grid)
    steps = max((len(a) for a in coming), default=0)
    for step in range(steps):
        active = sum(1 for a in coming if len(a) > step)
        target = torch.tensor([coming[u][step] for u in range(active)], dtype=torch.long)
        seen = seen_items(current[:active])
        raw = scorer.scores(current[:active])
        tally.device.add(full_ranking_ranks(raw, target, exclude=seen if exclude_history else None))
        if lists is not None:
            assert settings is not None and cloud is not None and generator is not None
            lists.items, lists.scores = lists.items[:active], lists.scores[:active]
            catalogue = _catalogue(raw, seen, exclude_history)
            served = _serve_step(
                catalogue, current[:active], seen, target, lists, cloud, settings, max_len, generator, tally
            )
            tally.count(*served)
        for u in range(active):
            current[u].append(coming[u][step])
        scorer.absorb(target)
    arrived = sum(len(a) for a in coming)
    if arrived == 0:
        # A round in which nothing arrives (more rounds than replayed interactions): nothing to rank, only
        # the counts; the server's fusion weight takes no evidence from it.
        metrics = {"replay-requests": 0.0, "replay-request-failures": 0.0, "replay-request-bytes": 0.0}
        metrics = metrics if lists is not None else {}
    else:
        metrics = {f"replay-device-{k}": v for k, v in tally.device.compute().items()}
        if lists is not None:
            metrics.update(tally.cloud_metrics())
    metrics["replay-arrivals"] = float(arrived)
    metrics["streaming-updates"] = float(scorer.updates)
    metrics["replay-seconds"] = time.perf_counter() - start
    return metrics


def _serve_step(
    catalogue: Tensor,
    current: list[list[int]],
    seen: Tensor,
    target: Tensor,
    lists: _Lists,
    cloud: FallbackCloud,
    settings: CollaborationSettings,
    max_len: int,
    generator: torch.Generator,
    tally: _Tally,
) -> tuple[int, int, int]:
    """One arrival step with the cloud: rank the held lists, request within the budget, rank again.

    Adds the rankings to ``tally`` and updates ``lists`` in place with the fresh lists; returns
    ``(requests, bytes moved, requests unanswered)``.
    """
    alone, before, after, grid = tally.alone, tally.before, tally.after, tally.grid
    items = drop_seen(lists.items, seen) if settings.exclude_history else lists.items.clone()
    llm_scores = lists.scores.masked_fill(items == 0, float("-inf"))
    srm_scores = catalogue.gather(1, items.clamp(min=1)).masked_fill(items == 0, float("-inf"))
    history = pad_left(current, max_len)
    disagreement = request_disagreement(None, settings, items, srm_scores, llm_scores, catalogue, history)
    # The device's own top items (computed once if needed): for a union pool, and for devices holding no
    # cloud list.
    top = functools.cache(lambda: device_top_items(catalogue, settings.device_candidates))

    def ranked(
        items: Tensor, llm: Tensor, srm: Tensor, alphas: Sequence[float] = (settings.alpha,)
    ) -> list[Tensor]:
        """The targets' ranks in the fused lists, one per weight of ``alphas`` (pool, content built once)."""
        own = device_pool(items, top, settings.candidate_pool)
        if own is not None:
            items, llm, srm = union_candidates(items, llm, srm, *own)
        content = settings.content(items, current)
        fused = (settings.fuse(items, llm, srm, alpha, content) for alpha in alphas)
        return [list_ranks(rerank(items, scores), target) for scores in fused]

    alone.add(list_ranks(rerank(items, llm_scores), target))
    before.add(ranked(items, llm_scores, srm_scores)[0])
    requested = budget_mask(disagreement, settings, generator)
    moved = 0
    rows = requested.nonzero().squeeze(1).tolist()
    fresh = cloud.recommend([current[r] for r in rows], settings.candidates) if rows else None
    if fresh is not None:
        moved = sum(8 * min(len(current[r]), cloud.max_history) for r in rows) + fresh.items.size * 12
        _hold_fresh(fresh, rows, lists, (items, llm_scores, srm_scores), catalogue, seen, settings)
    # The lists after the requests, fused at the devices' weight and at every weight of the grid (the data the
    # server chooses the weight on).
    final, *on_grid = ranked(items, llm_scores, srm_scores, (settings.alpha, *grid))
    after.add(final)
    for accumulator, ranks in zip(grid.values(), on_grid, strict=True):
        accumulator.add(ranks)
    # Unanswered requests (the cloud unreachable): those devices keep the lists they hold.
    return len(rows), moved, len(rows) if rows and fresh is None else 0


def _hold_fresh(
    fresh: CandidateList,
    rows: list[int],
    lists: _Lists,
    ranked: tuple[Tensor, Tensor, Tensor],
    catalogue: Tensor,
    seen: Tensor,
    settings: CollaborationSettings,
) -> None:
    """The requesting devices ``rows`` take the cloud's ``fresh`` lists: into ``lists`` as they came, and
    into the ``(items, LLM scores, SRM scores)`` they rank now (seen items dropped), all in place."""
    items, llm_scores, srm_scores = ranked
    index = torch.tensor(rows)
    fresh_items = torch.from_numpy(fresh.items).long()
    fresh_scores = torch.from_numpy(fresh.scores).float()
    # The device keeps the fresh list as it came (its own history is dropped at ranking time).
    width = lists.items.shape[1]
    if fresh_items.shape[1] != width:
        raise ValueError(f"the cloud answered {fresh_items.shape[1]} candidates, the device holds {width}")
    lists.items[index], lists.scores[index] = fresh_items, fresh_scores
    kept = drop_seen(fresh_items, seen[rows]) if settings.exclude_history else fresh_items
    items[index] = kept
    llm_scores[index] = fresh_scores.masked_fill(kept == 0, float("-inf"))
    srm_scores[index] = catalogue[rows].gather(1, kept.clamp(min=1)).masked_fill(kept == 0, float("-inf"))
