"""LSC4Rec device–cloud collaboration experiment: LLM-only vs SRM-only vs fused, and the request-ratio curve.

    python -m lsc4rec.simulations.request_curve dataset=beauty
    python -m lsc4rec.simulations.request_curve dataset=beauty collab.srm_path=outputs/<run>/model.pt

1. The cloud LLM trains on the cloud's stale view (``collab.cloud_lag`` interactions late, see
   :mod:`lsc4rec.data.staleness`); the device SRM trains on the devices' real-time data (standard, or
   collaboratively on the LLM's candidates and then adapted).
2. Per user, at the validation and at the test moment: the cloud's stale list (LLM on the stale prompt), the
   fresh list a request would return (LLM on the real-time history), the SRM's scores of both lists, and the
   device's inconsistency score between the LLM and SRM orders of its stale list.
3. α and the request threshold are chosen on validation; test reports LLM-only (α = 1), SRM-only (α = 0)
   and fused, and for each request ratio the intelligent and the random policy.

The ranked list is the LLM's candidate list reordered; a target outside the list is a miss (the paper's
protocol). Items the device has already consumed are dropped from the list (``eval.exclude_history``).
Writes ``metrics.json`` + ``request_curve.png`` under the run folder and prints ``RESULT {json}``. The run is
tracked (``tracking.*``, docs/tracking.md): the LLM's and the SRM's epochs as they end; the fusion weights'
validation curves, the request-ratio curve and the final table at the end.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import Tensor
from tqdm.auto import tqdm

from lsc4rec.cli import exit_on_bad_input
from lsc4rec.client.collab.content import content_scores, recent_items, unit_vectors
from lsc4rec.client.collab.fusion import fuse_scores, rerank
from lsc4rec.client.collab.inference import (
    CANDIDATE_POOLS,
    device_top_items,
    drop_seen,
    request_score_table,
    seen_items,
    srm_candidate_scores,
    srm_catalogue_scores,
    union_candidates,
)
from lsc4rec.client.collab.request_model import LearnedRequestModel, request_features
from lsc4rec.client.collab.request_policy import RequestPolicy, top_share
from lsc4rec.client.collab.rerank_training import train_on_llm_candidates
from lsc4rec.config import config_dir
from lsc4rec.data import LeaveOneOutSplit, TrainBatches, leave_one_out, load_dataset, pad_left
from lsc4rec.data.slices import evaluation_slices
from lsc4rec.data.staleness import CloudView, cloud_view_for
from lsc4rec.metrics import full_ranking_ranks, list_ranks, metrics_from_ranks
from lsc4rec.models.llm.llm_training import evaluate_llm, fit_llm
from lsc4rec.models.llm.pretrained import build_llm
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.reporting import emit_result, peak_memory_mb, write_json
from lsc4rec.settings import REQUEST_CURVE_IGNORES, RequestCurveSettings, refuse_unread_keys, typed_run
from lsc4rec.torch_device import resolve_device
from lsc4rec.tracking import RunTracker
from lsc4rec.training import (
    build_eval_sets,
    build_model_from_config,
    evaluate,
    fit,
    run_item_vectors,
)

logger = logging.getLogger(__name__)

#: The request score fitted on the validation moment (:mod:`lsc4rec.client.collab.request_model`).
LEARNED = "learned"

__all__ = ["FusionWeights", "MomentLists", "build_moment", "compact_summary", "run_request_curve"]


@dataclass(frozen=True)
class FusionWeights:
    """The fused score's weights: ``alpha`` on the cloud's score, ``content`` on the content term."""

    alpha: float
    content: float = 0.0


@dataclass
class MomentLists:
    """Everything the devices and the cloud produce for one evaluation moment (validation or test)."""

    targets: Tensor  # [U]
    stale_items: Tensor  # [U, n] LLM list from the stale prompt (seen items dropped)
    stale_llm: Tensor
    stale_srm: Tensor
    fresh_items: Tensor  # [U, n] the list a request returns (LLM on the real-time history)
    fresh_llm: Tensor
    fresh_srm: Tensor
    inconsistency: Tensor  # [U] the device's disagreement score (request.score) on its stale list
    # Every score of request.compare on the same lists, for the comparison curves.
    compared: dict[str, Tensor] = field(default_factory=dict)
    # [U, F] the learned request model's features of the stale lists (only when a score is "learned").
    features: Tensor | None = None
    # [U, m] the device SRM's own top items over the whole catalogue (seen items excluded) and their scores.
    device_items: Tensor | None = None
    device_srm: Tensor | None = None
    # What the devices fuse over (collab.candidate_pool): the cloud's list, or its union with device_items.
    pool: str = "llm"
    # [U] 0-based full-catalogue ranks (seen items excluded) of each model ranking alone.
    full_ranks: dict[str, Tensor] = field(default_factory=dict)
    # [U, k] each device's own freshest items (newest first) and the catalogue's unit text vectors
    # [N + 1, D]: the content term's inputs (None without item text).
    recent: Tensor | None = None
    unit_text: Tensor | None = None
    # The content term last computed, by (pool, which devices requested): a grid of fusion weights reads
    # the same lists many times.
    _content_cache: dict[tuple[str, bytes], Tensor] = field(default_factory=dict, repr=False)

    def lists(self, requested: Tensor, pool: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(items, LLM scores, SRM scores) each device ranks: the fresh list where it requested one.

        ``pool`` (default: the moment's own) ``union`` adds the device's own top items to the cloud's list.
        """
        pick = requested[:, None]
        lists = (
            torch.where(pick, self.fresh_items, self.stale_items),
            torch.where(pick, self.fresh_llm, self.stale_llm),
            torch.where(pick, self.fresh_srm, self.stale_srm),
        )
        if (pool or self.pool) == "llm":
            return lists
        if self.device_items is None or self.device_srm is None:
            raise ValueError("a union pool needs the device's own top items (build_moment computes them)")
        return union_candidates(*lists, self.device_items, self.device_srm)

    def ranks(
        self, requested: Tensor, weights: FusionWeights, run: RequestCurveSettings, pool: str | None = None
    ) -> Tensor:
        """0-based rank ``[U]`` of each target in its device's fused list (absent from the list = a miss)."""
        items, llm_scores, srm_scores = self.lists(requested, pool)
        content = None
        if weights.content > 0:
            if self.recent is None or self.unit_text is None:
                raise ValueError("a content weight > 0 needs item text vectors (the dataset has none)")
            key = (pool or self.pool, requested.numpy().tobytes())
            if key not in self._content_cache:
                decay = run.collab.content_decay
                # One entry: the grid reads one set of lists many times in a row; keeping every request
                # pattern of the curve would hold hundreds of [U, n] tables.
                self._content_cache = {key: content_scores(items, self.recent, self.unit_text, decay)}
            content = self._content_cache[key]
        fused = fuse_scores(
            llm_scores, srm_scores, items, weights.alpha, run.collab.normalization, content, weights.content
        )
        return list_ranks(rerank(items, fused), self.targets)


def _append_llm_lists(
    parts: dict[str, list[Tensor]],
    llm: CloudLLM,
    srm: SequentialRecommender,
    history: Tensor,
    seen: Tensor,
    prompts: dict[str, Tensor],
    n: int,
    exclude: bool,
) -> None:
    """Append one chunk's LLM list for each prompt kind (stale, fresh) with its LLM and SRM scores."""
    for kind, prompt in prompts.items():
        items, llm_scores = llm.recommend_tensor(prompt, n)
        if exclude:
            items = drop_seen(items, seen)
        llm_scores = llm_scores.masked_fill(items == 0, float("-inf"))
        parts[f"{kind}_items"].append(items)
        parts[f"{kind}_llm"].append(llm_scores)
        parts[f"{kind}_srm"].append(srm_candidate_scores(srm, history, items))


def _append_full_ranks(
    full: dict[str, list[Tensor]],
    llms: dict[str, CloudLLM],
    catalogue: Tensor,
    target: Tensor,
    stale: Tensor,
    seen: Tensor,
    rank_alone: bool,
) -> None:
    """Append one chunk's full-catalogue ranks of the SRM (with ``rank_alone``) and of each of ``llms``."""
    if rank_alone:
        full["srm"].append(full_ranking_ranks(catalogue, target))
    for name, model in llms.items():
        if model.tokenizer.depth == 1:
            # The LLM alone from the stale prompt, with the device's seen items removed as for the SRM.
            full[name].append(full_ranking_ranks(model.item_scores(stale), target, exclude=seen))


def build_moment(
    llm: CloudLLM,
    srm: SequentialRecommender,
    histories: list[list[int]],
    stale_prompts: list[list[int]],
    targets: list[int],
    run: RequestCurveSettings,
    description: str,
    baseline_llm: CloudLLM | None = None,
    rank_alone: bool = True,
    unit_text: Tensor | None = None,
) -> MomentLists:
    """Generate both lists, score them with the SRM and compute the devices' inconsistency scores.

    Also the device SRM's own top items (for a union pool) and, with ``rank_alone``, the full-catalogue ranks
    of the SRM, the LLM and ``baseline_llm`` (when given) each ranking alone, the LLMs from the stale prompt.
    ``unit_text`` (the catalogue's unit text vectors) enables the content term.
    """
    n = run.collab.candidates
    device_n = run.collab.device_candidates
    pool = run.collab.candidate_pool
    if pool not in CANDIDATE_POOLS:
        raise ValueError(f"collab.candidate_pool={pool!r}; use one of {', '.join(CANDIDATE_POOLS)}")
    # The models whose full-catalogue ranking alone is reported (none at a moment that only selects).
    llms = {"llm": llm} | ({"baseline_llm": baseline_llm} if baseline_llm is not None else {})
    llms = llms if rank_alone else {}
    full: dict[str, list[Tensor]] = {"srm": []} | {name: [] for name in llms}
    device: dict[str, list[Tensor]] = {"items": [], "srm": []}
    max_len = run.data.max_len
    exclude = run.eval.exclude_history
    methods = [m for m in request_methods(run) if m != LEARNED]
    learned = LEARNED in request_methods(run)
    lists = ("stale_items", "stale_llm", "stale_srm", "fresh_items", "fresh_llm", "fresh_srm")
    parts: dict[str, list[Tensor]] = {k: [] for k in lists}
    scores: dict[str, list[Tensor]] = {m: [] for m in methods}
    features: list[Tensor] = []
    chunk = 512
    for start in tqdm(range(0, len(histories), chunk), desc=description, disable=not run.llm.train.progress):
        history = pad_left(histories[start : start + chunk], max_len)
        # Exclusions cover the whole history, also past max_len (as the SRM protocol's full ranking does).
        seen = seen_items(histories[start : start + chunk])
        stale = pad_left([p or [] for p in stale_prompts[start : start + chunk]], run.llm.max_len)
        fresh = pad_left(histories[start : start + chunk], run.llm.max_len)
        _append_llm_lists(parts, llm, srm, history, seen, {"stale": stale, "fresh": fresh}, n, exclude)
        stale_lists = parts["stale_items"][-1], parts["stale_srm"][-1]
        catalogue = srm_catalogue_scores(srm, history, seen)
        target = torch.as_tensor(targets[start : start + chunk], dtype=torch.long)
        _append_full_ranks(full, llms, catalogue, target, stale, seen, rank_alone)
        top_items, top_scores = device_top_items(catalogue, device_n)
        device["items"].append(top_items)
        device["srm"].append(top_scores)
        table = request_score_table(srm, history, *stale_lists, methods, run.request.k, catalogue)
        for method, values in table.items():
            scores[method].append(values)
        if learned:
            items, srm_scores = stale_lists
            features.append(request_features(items, srm_scores, parts["stale_llm"][-1], catalogue, history))
    by_method = {m: torch.cat(v) for m, v in scores.items()}
    # A learned score is filled in by fit_request_model once the validation gains are known.
    headline = by_method.get(run.request.score, torch.zeros(len(targets)))
    return MomentLists(
        targets=torch.as_tensor(targets),
        **{k: torch.cat(v) for k, v in parts.items()},
        inconsistency=headline,
        compared=by_method,
        features=torch.cat(features) if learned else None,
        device_items=torch.cat(device["items"]),
        device_srm=torch.cat(device["srm"]),
        pool=pool,
        full_ranks={name: torch.cat(ranks) for name, ranks in full.items() if ranks},
        recent=recent_items(histories, run.collab.content_items) if unit_text is not None else None,
        unit_text=unit_text,
    )


def per_device_ndcg(
    moment: MomentLists, requested: Tensor, weights: FusionWeights, run: RequestCurveSettings
) -> Tensor:
    """NDCG@10 ``[U]`` of each device's fused ranking of its list (0 when the target is not in its top 10)."""
    ranks = moment.ranks(requested, weights, run)
    return torch.where(ranks < 10, 1.0 / torch.log2(ranks.float() + 2.0), torch.zeros(len(moment.targets)))


def fit_request_model(
    valid: MomentLists, test: MomentLists, weights: FusionWeights, run: RequestCurveSettings, out: Path
) -> LearnedRequestModel:
    """Fit the learned request score on the validation moment's realised gains; score both moments with it.

    The gain of a device is the NDCG@10 of its fused fresh list minus that of its fused stale list, both known
    at the validation moment; the fitted model is saved as ``request_model.json`` (``request.model_path`` for
    federated runs).
    """
    if valid.features is None or test.features is None:
        raise ValueError("fit_request_model needs moments built with request features (a 'learned' score)")
    never = torch.zeros_like(valid.targets, dtype=torch.bool)
    gains = per_device_ndcg(valid, ~never, weights, run) - per_device_ndcg(valid, never, weights, run)
    model = LearnedRequestModel.fit(valid.features, gains)
    model.save(out / "request_model.json")
    for moment in (valid, test):
        moment.compared[LEARNED] = model.predict(moment.features)
        if run.request.score == LEARNED:
            moment.inconsistency = moment.compared[LEARNED]
    return model


def request_methods(run: RequestCurveSettings) -> list[str]:
    """The configured request score first, then the other scores of ``request.compare`` (no repeats)."""
    return list(dict.fromkeys([run.request.score, *run.request.compare]))


def ranked_metrics(
    moment: MomentLists,
    requested: Tensor,
    weights: FusionWeights,
    run: RequestCurveSettings,
    pool: str | None = None,
) -> dict[str, float]:
    """HR/NDCG/MRR@K of the devices' lists (fresh where ``requested``) reranked by the fused score."""
    return metrics_from_ranks(moment.ranks(requested, weights, run, pool), run.eval.ks)


def choose_fusion(
    moment: MomentLists, run: RequestCurveSettings, pool: str | None = None, content: bool = True
) -> tuple[FusionWeights, dict[str, float], dict[str, float]]:
    """The fusion weights, each ``collab.*`` number as given, each ``auto`` the grid value best on NDCG@10.

    ``pool`` (default: the moment's) picks the candidates they are chosen over; ``content=False`` (or no item
    text) leaves the content term out. Returns the weights, validation NDCG@10 by alpha (at the chosen content
    weight) and by content weight (at the chosen alpha).
    """
    never = torch.zeros_like(moment.targets, dtype=torch.bool)
    collab = run.collab
    alphas = collab.alpha_grid if str(collab.alpha) == "auto" else (float(collab.alpha),)
    has_text = content and moment.unit_text is not None
    if not has_text:
        betas: tuple[float, ...] = (0.0,)
    elif str(collab.content_weight) == "auto":
        betas = collab.content_grid
    else:
        betas = (float(collab.content_weight),)
    grid = {
        (a, b): ranked_metrics(moment, never, FusionWeights(a, b), run, pool)["NDCG@10"]
        for a in map(float, alphas)
        for b in map(float, betas)
    }
    # Ties: the alpha nearest 0.5, then the smaller content weight.
    best = max(grid, key=lambda ab: (grid[ab], -abs(ab[0] - 0.5), -ab[1]))
    by_alpha = {a: v for (a, b), v in grid.items() if b == best[1]}
    by_content = {b: v for (a, b), v in grid.items() if a == best[0]}
    return FusionWeights(*best), by_alpha, by_content


def load_baseline_llm(run: RequestCurveSettings, num_items: int) -> CloudLLM | None:
    """The saved LLM of ``collab.baseline_llm_path`` (e.g. the ID-only one), reported beside this run's."""
    path = run.collab.baseline_llm_path
    if not path:
        return None
    baseline = CloudLLM.from_pretrained(str(path))
    if baseline.num_items != num_items:
        raise ValueError(
            f"collab.baseline_llm_path={path} has {baseline.num_items} items; the dataset has {num_items}"
        )
    baseline.to(resolve_device(run.llm.train.device, "llm.train.device"))
    return baseline.eval()


#: Slice bounds: a rare target has at most this many training interactions, a cold user this many items.
def slice_masks(split: LeaveOneOutSplit) -> dict[str, Tensor]:
    """Boolean masks ``[U]`` over the test moment's users for :func:`lsc4rec.data.slices.evaluation_slices`
    (rare/popular targets, cold/warm users; counts from the device SRM's training data)."""
    masks = {}
    for name, users in evaluation_slices(split).items():
        mask = torch.zeros(len(split.test_targets), dtype=torch.bool)
        mask[torch.as_tensor(users, dtype=torch.long)] = True
        masks[name] = mask
    return masks


def collaboration_comparison(
    valid: MomentLists, test: MomentLists, split: LeaveOneOutSplit, run: RequestCurveSettings
) -> dict:
    """Test NDCG/HR of each model alone (full catalogue) and of fusion over each pool, overall and by slice.

    Fusion weights are chosen per pool on validation; no request is made. The device SRM ranking the full
    catalogue by itself is the reference every ratio is taken against.
    """
    ks = run.eval.ks
    never = torch.zeros_like(test.targets, dtype=torch.bool)
    ranks: dict[str, Tensor] = {f"{name}_alone": r for name, r in test.full_ranks.items()}
    weights: dict[str, FusionWeights] = {}
    for pool in CANDIDATE_POOLS:
        weights[pool], _, _ = choose_fusion(valid, run, pool)
        if weights[pool].content > 0:
            # The ablation: the same pool without the content term (alpha chosen again without it).
            weights[f"{pool}_no_content"], _, _ = choose_fusion(valid, run, pool, content=False)
            ranks[f"fused_{pool}_no_content"] = test.ranks(never, weights[f"{pool}_no_content"], run, pool)
        ranks[f"fused_{pool}"] = test.ranks(never, weights[pool], run, pool)
    ranks["fused_always_request"] = test.ranks(~never, weights[test.pool], run)
    slices = slice_masks(split)
    table = {
        name: {
            method: {k: round(v, 5) for k, v in metrics_from_ranks(r[mask], ks).items() if "@10" in k}
            for method, r in ranks.items()
        }
        for name, mask in slices.items()
        if bool(mask.any())  # a slice no test user falls into has no metrics (its size says 0)
    }
    reference = max(table["all"]["srm_alone"]["NDCG@10"], 1e-12)
    return {
        "protocol": "full catalogue for models alone (seen items excluded, LLMs from the stale prompt); "
        "fusion over the pool with alpha chosen on validation, a target outside the pool is a miss",
        "alpha_by_pool": {name: w.alpha for name, w in weights.items()},
        "content_weight_by_pool": {name: w.content for name, w in weights.items()},
        "slice_sizes": {name: int(mask.sum()) for name, mask in slices.items()},
        "test": table,
        "ndcg10_over_device_srm": {
            method: round(metrics["NDCG@10"] / reference, 3) for method, metrics in table["all"].items()
        },
    }


def train_models(
    run: RequestCurveSettings,
    split: LeaveOneOutSplit,
    out: Path,
    cloud: CloudLLM | None = None,
    item_vectors: Tensor | None = None,
    tracker: RunTracker | None = None,
) -> tuple[CloudLLM, SequentialRecommender, dict]:
    """The cloud LLM (stale data) and the device SRM (real-time data), trained or loaded as configured.

    ``cloud`` replaces the configured LLM, neither built nor trained here (lists computed elsewhere:
    :mod:`lsc4rec.simulations.pretrained_cloud`). ``item_vectors``: the items' text vectors, for an SRM with
    a text part (``model.item_text``). ``tracker``: logs each training epoch (``llm/``, ``srm/``)."""
    report: dict = {}
    view = cloud_view_for(split, run.collab, run.seed)
    llm = cloud
    if llm is None:
        llm = build_llm(run.llm, split.num_items, seed=run.seed, item_text=split.item_text, text_cfg=run.text)
    if not run.llm.path and cloud is None:
        on_llm_epoch = tracker.epoch_logger("llm") if tracker is not None else None
        stale = (view.train, view.valid_histories, view.valid_targets)
        result = fit_llm(llm, *stale, run.llm.train, seed=run.seed, on_epoch=on_llm_epoch)
        llm.save_pretrained(out / "llm")
        report["llm_training"] = {
            "best_epoch": result.best_epoch,
            "seconds_to_best": round(result.seconds_to_best, 1),
            "train_seconds": round(result.train_seconds, 1),
            "cloud_valid": result.best_valid,
            "epochs": [
                {k: v for k, v in r.items() if k != "valid"} | {"valid_NDCG@10": r["valid"]["NDCG@10"]}
                for r in result.history
            ],
        }
    # The LLM answers the devices' requests where the cloud would run it.
    llm.to(resolve_device(run.llm.train.device, "llm.train.device"))
    max_len = run.data.max_len
    srm = build_model_from_config(run.model, split.num_items, max_len, item_vectors, split.train_sequences())
    settings = run.train
    if run.collab.srm_path:
        srm.load_state_dict(torch.load(str(run.collab.srm_path), map_location="cpu"))
        report["srm_training"] = {"loaded": str(run.collab.srm_path)}
    else:
        start = time.perf_counter()
        collab_losses: list[float] = []
        if run.collab.srm_training == "collaborative":
            collab_losses = train_on_llm_candidates(
                srm,
                llm,
                split.train_sequences(),
                settings,
                max_len,
                epochs=run.collab.srm_epochs,
                hard_negatives=run.collab.hard_negatives,
                random_negatives=run.collab.random_negatives,
                seed=run.seed,
                distill_weight=run.collab.distill_weight,
                temperature=run.collab.distill_temperature,
            )
        elif run.collab.srm_training != "standard":
            raise ValueError(
                f"collab.srm_training={run.collab.srm_training!r}; use standard or collaborative"
            )
        valid_set, _ = build_eval_sets(split, run.eval, max_len)
        batches = TrainBatches(split.train_sequences(), max_len, settings.batch_size, seed=run.seed)
        on_epoch = tracker.epoch_logger("srm") if tracker is not None else None
        fitted = fit(srm, batches, valid_set, settings, seed=run.seed, on_epoch=on_epoch)
        torch.save(fitted.best_state, out / "srm.pt")
        report["srm_training"] = {
            "mode": run.collab.srm_training,
            "collaborative_losses": collab_losses,
            "best_epoch": fitted.best_epoch,
            "seconds": round(time.perf_counter() - start, 1),
        }
    llm.eval()
    srm.eval()
    return llm, srm, report


def _validation_and_test_moments(
    llm: CloudLLM,
    srm: SequentialRecommender,
    split: LeaveOneOutSplit,
    view: CloudView,
    run: RequestCurveSettings,
    unit_text: Tensor | None,
) -> tuple[MomentLists, MomentLists, CloudLLM | None]:
    """The validation and the test moment's lists, and the baseline LLM the test moment also ranks with."""
    valid = build_moment(
        llm,
        srm,
        split.valid_histories(),
        view.stale_valid_prompts,
        split.valid_targets,
        run,
        "validation lists",
        rank_alone=False,  # models alone are reported on test only
        unit_text=unit_text,
    )
    baseline = load_baseline_llm(run, split.num_items)
    test = build_moment(
        llm,
        srm,
        split.test_histories(),
        view.stale_test_prompts,
        split.test_targets,
        run,
        "test lists",
        baseline_llm=baseline,
        unit_text=unit_text,
    )
    return valid, test, baseline


def _full_ranking_context(
    llm: CloudLLM,
    srm: SequentialRecommender,
    split: LeaveOneOutSplit,
    view: CloudView,
    run: RequestCurveSettings,
) -> dict[str, dict[str, float]]:
    """Context: each model ranking the whole catalogue on its own (the SRM protocol), on test."""
    ks = run.eval.ks
    _, test_set = build_eval_sets(split, run.eval, run.data.max_len)
    srm_full = evaluate(srm, test_set, ks, full_ranking=True)["full"]
    llm_stale_full = evaluate_llm(llm, view.stale_test_prompts, split.test_targets, ks, run.collab.candidates)
    llm_fresh_full = evaluate_llm(llm, split.test_histories(), split.test_targets, ks, run.collab.candidates)
    return {"srm": srm_full, "llm_stale": llm_stale_full, "llm_fresh": llm_fresh_full}


def _request_extremes(
    test: MomentLists, weights: FusionWeights, run: RequestCurveSettings
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Test metrics of the LLM alone, the SRM alone and fused when no device requests and when all do."""
    never = torch.zeros_like(test.targets, dtype=torch.bool)
    llm_only, srm_only = FusionWeights(1.0), FusionWeights(0.0)
    table = {
        "llm_only": ranked_metrics(test, never, llm_only, run),
        "srm_only": ranked_metrics(test, never, srm_only, run),
        "fused": ranked_metrics(test, never, weights, run),
    }
    table_always = {
        "llm_only": ranked_metrics(test, ~never, llm_only, run),
        "srm_only": ranked_metrics(test, ~never, srm_only, run),
        "fused": ranked_metrics(test, ~never, weights, run),
    }
    return table, table_always


def _request_ratio_curve(
    valid: MomentLists, test: MomentLists, weights: FusionWeights, run: RequestCurveSettings
) -> list[dict]:
    """Test metrics at each ``request.ratios`` ratio: the intelligent and the random policy, and the
    threshold and the budget policy of every compared score."""
    generator = torch.Generator().manual_seed(run.request.seed)
    compare_generator = torch.Generator().manual_seed(run.request.seed + 1)
    curve = []
    for ratio in run.request.ratios:
        row: dict = {"ratio": float(ratio)}
        for mode in ("intelligent", "random"):
            policy = RequestPolicy(mode, float(ratio))
            if mode == "intelligent":
                policy.calibrate(valid.inconsistency)
            requested = policy.decide(test.inconsistency, generator)
            metrics = ranked_metrics(test, requested, weights, run)
            row[mode] = {"actual_ratio": float(requested.float().mean()), **metrics}
        row["intelligent_by_score"], row["budget_by_score"] = {}, {}
        for method, values in valid.compared.items():
            # Its own coin stream, so adding a compared score leaves the headline curves unchanged.
            policy = RequestPolicy("intelligent", float(ratio)).calibrate(values)
            requested = policy.decide(test.compared[method], compare_generator)
            metrics = ranked_metrics(test, requested, weights, run)
            row["intelligent_by_score"][method] = {"actual_ratio": float(requested.float().mean()), **metrics}
            # A node budget instead of a threshold: exactly the top share of devices by the score requests.
            budget = top_share(test.compared[method], float(ratio), compare_generator)
            metrics = ranked_metrics(test, budget, weights, run)
            row["budget_by_score"][method] = {"actual_ratio": float(budget.float().mean()), **metrics}
        curve.append(row)
        logger.info(
            "request ratio %.2f: intelligent NDCG@10 %.4f (actual %.3f), random %.4f",
            ratio,
            row["intelligent"]["NDCG@10"],
            row["intelligent"]["actual_ratio"],
            row["random"]["NDCG@10"],
        )
    return curve


def _gain_recovered_at_target(
    curve: list[dict], table: dict[str, dict], table_always: dict[str, dict], target_ratio: float
) -> dict[str, Any]:
    """The share of the never -> always-request fused NDCG@10 gain each policy recovers at
    ``target_ratio`` (empty when the curve lacks that ratio or requests do not help)."""
    at_target = next((r for r in curve if math.isclose(r["ratio"], target_ratio)), None)
    never_ndcg, always_ndcg = table["fused"]["NDCG@10"], table_always["fused"]["NDCG@10"]
    gains: dict[str, Any] = {}
    if at_target is not None and always_ndcg > never_ndcg:
        gains["intelligent_gain_recovered_at_target"] = round(
            (at_target["intelligent"]["NDCG@10"] - never_ndcg) / (always_ndcg - never_ndcg), 3
        )
        gains["random_gain_recovered_at_target"] = round(
            (at_target["random"]["NDCG@10"] - never_ndcg) / (always_ndcg - never_ndcg), 3
        )
        for kind in ("intelligent", "budget"):
            gains[f"gain_recovered_at_target_by_score_{kind}"] = {
                method: round((row["NDCG@10"] - never_ndcg) / (always_ndcg - never_ndcg), 3)
                for method, row in at_target[f"{kind}_by_score"].items()
            }
    return gains


def run_request_curve(
    cfg: DictConfig | RequestCurveSettings,
    out: Path,
    cloud: CloudLLM | None = None,
    tracker: RunTracker | None = None,
) -> dict:
    """Run the experiment the composed config ``cfg`` describes (typed here, once, unless the caller typed
    it already); write outputs under ``out`` and return the final summary. ``cloud``: the cloud LLM to use
    instead of the configured one. ``tracker``: the caller's, which the caller finishes; without one the run
    opens and finishes its own (``tracking.*``)."""
    run = (
        cfg
        if isinstance(cfg, RequestCurveSettings)
        else typed_run(cfg, RequestCurveSettings, REQUEST_CURVE_IGNORES)
    )
    if tracker is not None:
        return _tracked_request_curve(run, out, cloud, tracker)
    # Opens nothing until the first epoch: a run that fails before leaves no tracker files.
    with RunTracker(out, run.tracking, run.record) as own:
        summary = _tracked_request_curve(run, out, cloud, own)
        own.finish(summary)
    return summary


def _tracked_request_curve(
    run: RequestCurveSettings, out: Path, cloud: CloudLLM | None, tracker: RunTracker
) -> dict:
    """:func:`run_request_curve` logging to ``tracker`` (the caller finishes it)."""
    wall_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(run.seed)
    if run.threads:
        torch.set_num_threads(run.threads)
    split = leave_one_out(
        load_dataset(run.data.name, run.data.path, run.data.format, run.data.text_path, kcore=run.data.kcore)
    )
    logger.info("dataset %s: %s", run.data.name, split.report)
    vectors = run_item_vectors(run.model, split, run.text, run.data.name, run.collab.content_weight)
    llm, srm, report = train_models(run, split, out, cloud, vectors, tracker)
    unit_text = unit_vectors(vectors) if vectors is not None else None
    view = cloud_view_for(split, run.collab, run.seed)

    valid, test, baseline = _validation_and_test_moments(llm, srm, split, view, run, unit_text)
    weights, alpha_curve, content_curve = choose_fusion(valid, run)
    alpha = weights.alpha
    logger.info(
        "fusion alpha %.2f, content weight %.2f (validation NDCG@10 by alpha: %s; by content weight: %s)",
        alpha,
        weights.content,
        alpha_curve,
        content_curve,
    )
    comparison = collaboration_comparison(valid, test, split, run)
    if valid.features is not None:
        fit_request_model(valid, test, weights, run, out)

    table, table_always = _request_extremes(test, weights, run)
    full_ranking_context = _full_ranking_context(llm, srm, split, view, run)
    curve = _request_ratio_curve(valid, test, weights, run)

    best_single = max(table["llm_only"]["NDCG@10"], table["srm_only"]["NDCG@10"])
    summary = {
        "experiment": "request_curve",
        "dataset": run.data.name,
        "model": str(run.model.name),
        "llm": run.llm.name,
        "llm_item_init": llm.item_init,
        "baseline_llm_item_init": baseline.item_init if baseline is not None else None,
        "cloud_lag": run.collab.cloud_lag,
        "candidates": run.collab.candidates,
        "alpha": alpha,
        "content_weight": weights.content,
        "normalization": run.collab.normalization,
        "request_score": run.request.score,
        "protocol": "LLM candidate list reranked; target outside the list = miss; seen items dropped",
        "test_no_requests": table,
        "test_always_request": table_always,
        "fused_over_best_single": round(table["fused"]["NDCG@10"] / max(best_single, 1e-12), 3),
        "collaboration": comparison,
        "request_curve": curve,
        "full_ranking_context": full_ranking_context,
    }
    summary.update(_gain_recovered_at_target(curve, table, table_always, run.request.target_ratio))
    payload = {
        "status": "completed",
        "config": run.record,
        "dataset_report": split.report,
        "training": report,
        "alpha_validation_curve": {str(k): v for k, v in alpha_curve.items()},
        "content_weight_validation_curve": {str(k): v for k, v in content_curve.items()},
        "final": summary,
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
    }
    write_json(out / "metrics.json", payload)
    plot_request_curve(summary, out / "request_curve.png")
    _track_curves(tracker, report, alpha_curve, content_curve, curve)
    return summary


def _track_curves(
    tracker: RunTracker,
    report: dict,
    alpha_curve: dict[float, float],
    content_curve: dict[float, float],
    curve: list[dict],
) -> None:
    """The run's curves, at the end: the SRM's collaborative epochs, validation NDCG@10 by fusion weight
    and by content weight (step = weight x 100), and the test metrics by request ratio (step = % of devices
    asked to request)."""
    losses = report.get("srm_training", {}).get("collaborative_losses") or []
    epochs = [{"epoch": i + 1, "loss": v} for i, v in enumerate(losses)]
    tracker.log_history("srm_collaborative", epochs, "epoch")
    for section, values in (("alpha_curve", alpha_curve), ("content_curve", content_curve)):
        rows = [{"percent": round(float(w) * 100), "valid_NDCG@10": v} for w, v in values.items()]
        tracker.log_history(section, rows, "percent")
    for row in curve:
        metrics = {k: v for k, v in row.items() if k != "ratio"}
        tracker.log_scalars("request_curve", round(row["ratio"] * 100), metrics)


def compact_summary(summary: dict) -> dict:
    """The headline figures of :func:`run_request_curve` (NDCG@10 / HR@10 only) for the RESULT line."""

    def short(metrics: dict) -> dict:
        return {k: round(metrics[k], 4) for k in ("NDCG@10", "HR@10", "actual_ratio") if k in metrics}

    out = {
        k: v
        for k, v in summary.items()
        if k not in ("test_no_requests", "test_always_request", "request_curve")
    }
    out.pop("full_ranking_context", None)
    collaboration = summary["collaboration"]
    out["collaboration"] = {
        "alpha_by_pool": collaboration["alpha_by_pool"],
        "content_weight_by_pool": collaboration["content_weight_by_pool"],
        "ndcg10_over_device_srm": collaboration["ndcg10_over_device_srm"],
        **{
            f"NDCG@10_{name}": {method: m["NDCG@10"] for method, m in table.items()}
            for name, table in collaboration["test"].items()
        },
    }
    out["test_no_requests"] = {k: short(v) for k, v in summary["test_no_requests"].items()}
    out["test_always_request"] = {k: short(v) for k, v in summary["test_always_request"].items()}
    out["request_curve"] = [
        {"ratio": r["ratio"], "intelligent": short(r["intelligent"]), "random": short(r["random"])}
        for r in summary["request_curve"]
    ]
    return out


def plot_request_curve(summary: dict, path: Path) -> None:
    """NDCG@10 against request ratio (intelligent vs random) beside the LLM / SRM / fused bars."""
    fig, (left, right, third) = plt.subplots(1, 3, figsize=(16, 4))
    ratios = [r["ratio"] * 100 for r in summary["request_curve"]]
    curve = summary["request_curve"]
    headline = summary["request_score"]
    left.plot(ratios, [r["intelligent"]["NDCG@10"] for r in curve], "o-", label=f"intelligent ({headline})")
    for method in curve[0].get("intelligent_by_score", {}):
        if method != headline:
            values = [r["intelligent_by_score"][method]["NDCG@10"] for r in curve]
            left.plot(ratios, values, ".:", alpha=0.8, label=f"intelligent ({method})")
    left.plot(ratios, [r["random"]["NDCG@10"] for r in curve], "s--", label="random")
    left.set_xlabel("request ratio (%)")
    left.set_ylabel("test NDCG@10 (fused)")
    left.set_title(f"{summary['dataset']}: requests for fresh lists")
    left.grid(alpha=0.3)
    left.legend()
    table = summary["test_no_requests"]
    names = list(table)
    right.bar(names, [table[n]["NDCG@10"] for n in names], color=["tab:blue", "tab:orange", "tab:green"])
    right.set_ylabel("test NDCG@10, no requests")
    right.set_title(f"alpha = {summary['alpha']:.1f}, lag = {summary['cloud_lag']}")
    right.grid(axis="y", alpha=0.3)
    plot_collaboration(summary["collaboration"], third)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_collaboration(collaboration: dict, ax: plt.Axes) -> None:
    """Grouped bars: test NDCG@10 of each model alone and fused, overall and on each slice."""
    slices = list(collaboration["test"])
    methods = list(collaboration["test"][slices[0]])
    width = 0.8 / len(methods)
    for index, method in enumerate(methods):
        values = [collaboration["test"][name][method]["NDCG@10"] for name in slices]
        ax.bar([i + index * width for i in range(len(slices))], values, width, label=method)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(slices))])
    ax.set_xticklabels([f"{name}\n({collaboration['slice_sizes'][name]})" for name in slices], fontsize=8)
    ax.set_ylabel("test NDCG@10, no requests")
    ax.set_title("alone (full catalogue) vs fused, by slice")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
@exit_on_bad_input
def main(cfg: DictConfig) -> None:
    """Command-line entry point (Hydra)."""
    refuse_unread_keys(cfg, "config", REQUEST_CURVE_IGNORES, "the request-curve experiment")
    logging.basicConfig(level=logging.INFO)
    summary = run_request_curve(cfg, Path(HydraConfig.get().runtime.output_dir))
    emit_result(compact_summary(summary))


if __name__ == "__main__":
    main()
