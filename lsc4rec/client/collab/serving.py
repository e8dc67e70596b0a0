"""The device side of LSC4Rec for a node's devices: rerank the cloud's list, decide, request, rerank again.

Transport-agnostic: the stale lists and the fresh ones come from any :class:`CandidateSource` (the gRPC
candidate-service client on a real device, the cloud LLM itself in an in-process simulation), so the same code
runs in both. A node with a request budget (``ratio`` of its devices) lets its most inconsistent devices
request (``mode=intelligent``) or a seeded random subset (``mode=random``); the decision never looks at the
targets.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from lsc4rec.client.collab.content import content_scores, recent_items
from lsc4rec.client.collab.fallback import FallbackCloud, as_fallback
from lsc4rec.client.collab.fusion import fuse_scores, rerank
from lsc4rec.client.collab.inference import (
    CANDIDATE_POOLS,
    candidate_scores_from,
    catalogue_scores,
    device_pool,
    device_top_items,
    drop_seen,
    request_score_table,
    seen_items,
    union_candidates,
    without_consumed,
)
from lsc4rec.client.collab.request_model import LearnedRequestModel, request_features
from lsc4rec.client.collab.request_policy import top_share
from lsc4rec.data import pad_left
from lsc4rec.metrics import RankingAccumulator, full_ranking_ranks, list_ranks
from lsc4rec.models.llm.candidates import CandidateList, CandidateSource
from lsc4rec.models.srm import SequentialRecommender

__all__ = ["ALONE", "CollaborationSettings", "serve_devices", "serve_devices_in_modes"]

#: Prefix of the SRM-alone metrics :func:`serve_devices_in_modes` adds with ``rank_alone``.
ALONE = "srm-alone-"


@dataclass(frozen=True)
class CollaborationSettings:
    """How devices fuse and when they request (mirrors ``conf/collab`` and ``conf/request``)."""

    candidates: int = 50
    alpha: float = 0.5
    normalization: str = "minmax"
    score: str = "uncovered_mass"
    k: int = 10
    mode: str = "intelligent"
    ratio: float = 0.2
    exclude_history: bool = True
    # The fitted request model when score is "learned" (request.model_path).
    request_model: LearnedRequestModel | None = None
    # What devices fuse over: the cloud's list (llm) or its union with their own top items (union).
    candidate_pool: str = "union"
    device_candidates: int = 50
    # The content term (collab.content_*): its weight, how many fresh items and their decay, and the
    # catalogue's unit text vectors [N + 1, D] the device holds (None: no content term).
    content_weight: float = 0.0
    content_items: int = 1
    content_decay: float = 1.0
    unit_text: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def content(self, items: torch.Tensor, histories: Sequence[Sequence[int]]) -> torch.Tensor | None:
        """The content term ``[U, n]`` of ``items [U, n]`` against each device's own fresh ``histories``
        (:mod:`lsc4rec.client.collab.content`); None when the weight is 0."""
        if self.content_weight <= 0 or self.unit_text is None:
            return None
        recent = recent_items(histories, self.content_items)
        return content_scores(items, recent, self.unit_text, self.content_decay)

    def fuse(
        self,
        items: torch.Tensor,
        llm_scores: torch.Tensor,
        srm_scores: torch.Tensor,
        alpha: float | None = None,
        content: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fused scores of the devices' candidate ``items`` (weight ``alpha``, default :attr:`alpha``), with
        the content term ``content`` (:meth:`content` of the same items) when the weight is above 0."""
        return fuse_scores(
            llm_scores,
            srm_scores,
            items,
            self.alpha if alpha is None else alpha,
            self.normalization,
            content,
            self.content_weight,
        )

    def __post_init__(self) -> None:
        if self.content_weight > 0 and self.unit_text is None:
            raise ValueError(
                "collab.content_weight > 0 needs the catalogue's text vectors on the device (the dataset has "
                "no item text?); set collab.content_weight=0"
            )
        if self.candidate_pool not in CANDIDATE_POOLS:
            raise ValueError(
                f"collab.candidate_pool={self.candidate_pool!r}; use one of {', '.join(CANDIDATE_POOLS)}"
            )
        if self.device_candidates < 1:
            raise ValueError(f"collab.device_candidates must be >= 1, got {self.device_candidates}")
        if self.score == "learned" and self.request_model is None:
            raise ValueError(
                "request.score=learned needs request.model_path: the request_model.json a request_curve run"
                " writes"
            )
        if self.mode not in ("never", "always", "random", "intelligent"):
            raise ValueError(f"request.mode={self.mode!r}; use never, always, random or intelligent")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"request.target_ratio must be in [0, 1], got {self.ratio}")


def budget_mask(
    scores: torch.Tensor, settings: CollaborationSettings, generator: torch.Generator
) -> torch.Tensor:
    """Which devices request: the ``ratio`` share with the highest scores (or random ones), per node."""
    count = scores.shape[0]
    if settings.mode == "never":
        return torch.zeros(count, dtype=torch.bool)
    if settings.mode == "always":
        return torch.ones(count, dtype=torch.bool)
    if settings.mode == "random":
        chosen = torch.zeros(count, dtype=torch.bool)
        chosen[torch.randperm(count, generator=generator)[: round(settings.ratio * count)]] = True
        return chosen
    return top_share(scores, settings.ratio, generator)


def request_disagreement(
    srm: SequentialRecommender | None,
    settings: CollaborationSettings,
    items: torch.Tensor,
    srm_scores: torch.Tensor,
    llm_scores: torch.Tensor,
    catalogue: torch.Tensor,
    history: torch.Tensor,
) -> torch.Tensor:
    """Each device's request score ``[B]`` on the list it holds: ``request.score`` or the learned model.

    ``srm`` may be None where ``catalogue`` holds every score the request score reads (a streaming node).
    """
    if settings.request_model is not None and settings.score == "learned":
        features = request_features(items, srm_scores, llm_scores, catalogue, history)
        return settings.request_model.predict(features)
    return request_score_table(
        srm,  # type: ignore[arg-type]
        history,
        items,
        srm_scores,
        (settings.score,),
        settings.k,
        catalogue,
    )[settings.score]


def _take_fresh(
    fresh: CandidateList,
    rows: list[int],
    catalogue: torch.Tensor,
    seen: torch.Tensor,
    settings: CollaborationSettings,
    ranked: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    """The requesting devices ``rows`` rank the cloud's ``fresh`` lists: written into the ``(items, LLM
    scores, SRM scores)`` of ``ranked`` in place (seen items dropped, SRM scores read from the devices'
    ``catalogue`` scores)."""
    items, llm_scores, srm_scores = ranked
    fresh_items = torch.from_numpy(fresh.items).long()
    if settings.exclude_history:
        fresh_items = drop_seen(fresh_items, seen[rows])
    index = torch.tensor(rows)
    items[index] = fresh_items
    llm_scores[index] = torch.from_numpy(fresh.scores).float().masked_fill(fresh_items == 0, float("-inf"))
    srm_scores[index] = candidate_scores_from(catalogue[index], fresh_items)


def serve_devices(
    srm: SequentialRecommender,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int],
    stale: CandidateList,
    cloud: CandidateSource | FallbackCloud,
    settings: CollaborationSettings,
    max_len: int,
    generator: torch.Generator,
    ks: Sequence[int] = (5, 10, 20),
) -> dict[str, float]:
    """Rank each device's list, request fresh lists within the budget, and return the node's metrics.

    ``stale`` holds the cloud's lists for these devices (from its stale copy of their histories); ``cloud``
    answers requests from the real-time ``histories``. With ``candidate_pool=union`` each device fuses over
    its list plus its SRM's own top items over the catalogue. Returns HR/NDCG/MRR@K of the final ranked
    lists, those of the lists before any request, those of the cloud's stale lists alone (``cloud-``), the
    number of requests, those the cloud did not answer (``request-failures``: the device kept its list) and
    the bytes they moved (request: history ids as int64; reply: ids int64 + scores float32). A device whose
    ``stale`` list is empty (:func:`~lsc4rec.client.collab.fallback.empty_lists`) ranks with its own model.
    """
    served = serve_devices_in_modes(
        srm, histories, targets, stale, cloud, settings, {settings.mode: generator}, max_len, ks
    )
    return served[settings.mode]


def serve_devices_in_modes(
    srm: SequentialRecommender,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int],
    stale: CandidateList,
    cloud: CandidateSource | FallbackCloud,
    settings: CollaborationSettings,
    modes: Mapping[str, torch.Generator],
    max_len: int,
    ks: Sequence[int] = (5, 10, 20),
    rank_alone: bool = False,
) -> dict[str, dict[str, float]]:
    """:func:`serve_devices` under several request modes at once (``modes``: mode -> the generator its budget
    draws from), each mode's metrics as if served alone. What the modes share is computed once: the SRM's
    scores of the lists and the catalogue, the request scores, the rankings before any request, and one call
    to the cloud for the fresh lists of every device some mode lets request (a device's fresh list does not
    depend on the mode that asked for it). ``rank_alone``: also the SRM alone's full ranking of the targets
    (:data:`ALONE` metrics, what :func:`lsc4rec.training.evaluate` reports of the same scores)."""
    cloud = as_fallback(cloud)
    history = pad_left(histories, max_len)
    seen = seen_items(histories)  # the whole history, also past max_len
    target = torch.as_tensor(list(targets), dtype=torch.long)
    items = torch.from_numpy(stale.items).long()
    llm_scores = torch.from_numpy(stale.scores).float()
    if settings.exclude_history:
        items = drop_seen(items, seen)
    llm_scores = llm_scores.masked_fill(items == 0, float("-inf"))
    # The histories are encoded once: the lists' scores (stale and fresh) are read from the catalogue's.
    catalogue = catalogue_scores(srm, history)
    srm_scores = candidate_scores_from(catalogue, items)
    alone = RankingAccumulator(ks)
    if rank_alone:
        alone.add(full_ranking_ranks(catalogue, target, exclude=seen if settings.exclude_history else None))
    # With the history not excluded, fresh lists keep consumed items: their scores come from an unmasked copy.
    unmasked = None if settings.exclude_history else catalogue.clone()
    catalogue = without_consumed(catalogue, seen)
    disagreement = request_disagreement(srm, settings, items, srm_scores, llm_scores, catalogue, history)
    # The device's own top items (computed once if needed, used before and after requests): for a union
    # pool, and for devices holding no cloud list.
    top = functools.cache(lambda: device_top_items(catalogue, settings.device_candidates))

    def ranked(items: torch.Tensor, llm_scores: torch.Tensor, srm_scores: torch.Tensor) -> torch.Tensor:
        own = device_pool(items, top, settings.candidate_pool)
        if own is not None:
            items, llm_scores, srm_scores = union_candidates(items, llm_scores, srm_scores, *own)
        fused = settings.fuse(items, llm_scores, srm_scores, content=settings.content(items, histories))
        return list_ranks(rerank(items, fused), target)

    before = RankingAccumulator(ks)
    before.add(ranked(items, llm_scores, srm_scores))
    # The cloud alone: its (stale) list in its own order, what the device would show without an SRM.
    cloud_alone = RankingAccumulator(ks)
    cloud_alone.add(list_ranks(rerank(items, llm_scores), target))
    shared = {f"collab-before-request-{k}": v for k, v in before.compute().items()}
    shared.update({f"cloud-{k}": v for k, v in cloud_alone.compute().items()})
    shared["mean-inconsistency"] = float(disagreement.mean())
    if rank_alone:
        shared.update({f"{ALONE}{k}": v for k, v in alone.compute().items()})

    masks = {
        mode: budget_mask(disagreement, replace(settings, mode=mode), generator)
        for mode, generator in modes.items()
    }
    asking = torch.stack(list(masks.values())).any(dim=0).nonzero().squeeze(1).tolist()
    # A device uploads its most recent items, as many as the service accepts.
    fresh = cloud.recommend([histories[r] for r in asking], settings.candidates) if asking else None
    position = {row: index for index, row in enumerate(asking)}
    out: dict[str, dict[str, float]] = {}
    for mode, requested in masks.items():
        rows = requested.nonzero().squeeze(1).tolist()
        lists = (items.clone(), llm_scores.clone(), srm_scores.clone())
        bytes_moved, failed = 0, 0
        if rows and fresh is None:
            failed = len(rows)  # the cloud did not answer: these devices keep the lists they hold
        elif rows and fresh is not None:
            picked = [position[row] for row in rows]
            own = CandidateList(fresh.items[picked], fresh.scores[picked])
            uploaded = sum(8 * min(len(histories[r]), cloud.max_history) for r in rows)
            bytes_moved = uploaded + own.items.size * 12
            _take_fresh(own, rows, catalogue if unmasked is None else unmasked, seen, settings, lists)
        after = RankingAccumulator(ks)
        after.add(ranked(*lists))
        metrics = {f"collab-{k}": v for k, v in after.compute().items()}
        metrics.update(shared)
        metrics["requests"] = float(requested.sum())
        metrics["request-failures"] = float(failed)
        metrics["request-bytes"] = float(bytes_moved)
        out[mode] = metrics
    return out
