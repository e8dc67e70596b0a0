"""SOLID experiment: the base SRM, SOLID on a text-built and on the old codebook, ablations, text init.

    python -m lsc4rec.simulations.solid dataset=beauty
    python -m lsc4rec.simulations.solid dataset=beauty device_users=0.1
    python -m lsc4rec.simulations.solid dataset=ml100k data.path=/abs/ml-100k
    python -m lsc4rec.simulations.solid dataset=beauty model.base=gru4rec model.base_params={num_layers:1}

Trains the base model (``model.base`` with the same width, dropout and ``model.base_params``) first: its item
embeddings can feed a codebook (``embedding`` in the features) and its epochs and seconds are every other
variant's budget. Then each of ``solid_variants`` trains from scratch with the same settings: ``text_srm``
(the base with its item table started from projected item text), ``solid`` (full model, codebook over
``solid.features``, by default the item text), ``solid_old_codebook`` (full model, codebook over
``solid_old_features``: the base's item embeddings and attributes, as before text), ``solid_text_init``
(``solid`` with its item table started from projected text), and the ablations
``no_codebook``, ``no_semantic_trunk``, ``no_generation``.

The device's data and the measurement are :mod:`lsc4rec.simulations.transfer_study`'s: ``device_users`` < 1
models a sparse device; the newest ``new_item_share`` of the catalogue is held out of device training (their
semantic ids come from text alone); test NDCG@10 (full ranking) is reported overall and on rare targets, cold
users and new items, at each variant's best validation epoch and at the base's epochs and wall-clock, with
parameters, bytes per round (model + codebook) and seconds per epoch. Writes ``metrics.json`` and
``solid.png`` under ``outputs/<run>/`` and prints ``RESULT {json}``; its final table also goes to the run's
trackers (``tracking.*``, docs/tracking.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import Tensor

from lsc4rec.cli import exit_on_bad_input
from lsc4rec.config import config_dir
from lsc4rec.data import leave_one_out, load_dataset
from lsc4rec.models.solid import SolidRecommender
from lsc4rec.models.solid.pipeline import build_codebook, item_representations, seen_items, semantic_ids
from lsc4rec.models.solid.solid_config import SolidConfig
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.reporting import emit_result, peak_memory_mb, write_json
from lsc4rec.settings import SOLID_STUDY_IGNORES, SolidStudySettings, refuse_unread_keys, typed_run
from lsc4rec.simulations.centralized import protocol_description
from lsc4rec.simulations.launch.runs import begin_run
from lsc4rec.simulations.transfer_study import (
    HEADLINE_SLICES,
    DeviceData,
    device_data,
    text_initialised_srm,
    train_variant,
)
from lsc4rec.tracking import RunTracker

logger = logging.getLogger(__name__)

# Model flags of each SOLID variant (the ablations of issue 6 / papers.md §3.3); solid_old_codebook is the
# full model on the comparison codebook (``solid_old_features``); solid_text_init also starts its item table
# from projected item text; solid_semantic_scores puts the semantic ids into every item's score.
VARIANTS: dict[str, dict[str, bool]] = {
    "solid": {},
    "solid_text_init": {},
    "solid_old_codebook": {},
    "no_codebook": {"use_codebook": False},
    "no_semantic_trunk": {"semantic_trunk": False},
    "no_generation": {"generation": False},
    "solid_semantic_scores": {"semantic_scores": True},
}
# Variants that are the plain base SRM.
BASE_VARIANTS = ("base", "text_srm")


def _base_model(model_cfg: SolidConfig, num_items: int, max_len: int) -> SequentialRecommender:
    """The plain base SRM SOLID is built on, with the same width, dropout and base parameters."""
    return model_cfg.base_params.build(num_items, max_len)


def _solid_model(model_cfg: SolidConfig, num_items: int, max_len: int, flags: dict) -> SolidRecommender:
    """The SOLID variant with the model flags ``flags`` (:data:`VARIANTS`)."""
    # The text part is measured by the MergeNet study's text_part variants; here every variant has none.
    model = replace(model_cfg, **flags).build(num_items, max_len)
    assert isinstance(model, SolidRecommender)
    return model


def _codebook(
    run: SolidStudySettings, raw: Any, data: DeviceData, item_table: Tensor | None, features: list[str]
) -> tuple[Tensor, dict[str, Any]]:
    """Semantic ids ``[N + 1, levels]`` from a codebook over ``features``, and its report."""
    seen = seen_items(data.train_sequences, data.split.num_items)
    representations, report = item_representations(
        run.solid, raw, data.split, item_table, seen=seen, features=features
    )
    codebook = build_codebook(run.solid, representations, seed=run.seed)
    codes = semantic_ids(codebook, representations)
    report.update(
        quantizer=str(run.solid.quantizer),
        sizes=codebook.sizes,
        quantisation_mse=round(codebook.quantisation_error(representations), 6),
        distinct_semantic_ids=len({tuple(r) for r in codes[1:].tolist()}),
        bytes=4 * sum(int(c.numel()) for c in codebook.centroids),
        **codebook.usage(codes[1:]),
    )
    if data.new_items is not None:
        # How new items spread over codes: they share their level-0 code with seen items (text neighbours).
        new = torch.as_tensor(sorted(data.new_items.items), dtype=torch.long)
        seen_codes = set(codes[seen.nonzero().flatten(), 0].tolist())
        report["new_items_sharing_a_seen_code"] = round(
            sum(int(c) in seen_codes for c in codes[new, 0].tolist()) / max(len(new), 1), 4
        )
    logger.info(
        "codebook over %s: %s", features, {k: report[k] for k in ("sizes", "perplexity", "dead_codes")}
    )
    return codes, report


def _headline(summary: dict[str, Any]) -> dict[str, float]:
    return {
        f"{name}_NDCG@10": summary["test"][name]["NDCG@10"]
        for name in HEADLINE_SLICES
        if summary["test"].get(name, {}).get("users")
    }


def plot_variants(runs: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Bars of test NDCG@10 (full ranking) per variant, one panel per slice."""
    names = list(runs)
    first = runs[names[0]]["test"]
    slices = [s for s in HEADLINE_SLICES if first.get(s, {}).get("users")]
    fig, axes = plt.subplots(1, len(slices), figsize=(max(6, 1.6 * len(names) * len(slices) / 2), 3.8))
    for ax, name in zip(np.atleast_1d(axes), slices, strict=True):
        values = [runs[n]["test"][name]["NDCG@10"] for n in names]
        colours = ["grey" if n in BASE_VARIANTS else "tab:blue" for n in names]
        ax.bar(range(len(names)), values, color=colours)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{name} ({first[name]['users']} users)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        for x, v in enumerate(values):
            ax.text(x, v, f"{v:.4f}", ha="center", va="bottom", fontsize=7)
    np.atleast_1d(axes)[0].set_ylabel("test NDCG@10, full ranking")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _codebooks(
    run: SolidStudySettings, raw: Any, data: DeviceData, item_table: Tensor, variants: list[str]
) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]]]:
    """Semantic ids and report of each codebook the variants need: ``main`` (``solid.features``) and ``old``
    (``solid_old_features``, for ``solid_old_codebook``)."""
    codebooks: dict[str, dict[str, Any]] = {}
    codes: dict[str, Tensor] = {}
    for label, features in (("main", list(run.solid.features)), ("old", list(run.solid_old_features))):
        needed = [v for v in variants if v in VARIANTS and (v == "solid_old_codebook") == (label == "old")]
        if needed:
            codes[label], codebooks[label] = _codebook(run, raw, data, item_table, [str(f) for f in features])
    return codes, codebooks


def _solid_result(
    run: SolidStudySettings,
    model_cfg: SolidConfig,
    data: DeviceData,
    codebooks: dict[str, dict[str, Any]],
    runs: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The headline result: each variant's test NDCG@10 by slice, at equal cost, and its cost."""
    split = data.split
    base_all = runs["base"]["test"]["all"]["NDCG@10"]
    result: dict[str, Any] = {
        "experiment": "solid",
        "dataset": run.data.name,
        "base": model_cfg.base,
        "device_users": len(split.train),
        "protocol": protocol_description(run.eval),
        "features": {"main": list(run.solid.features), "old": list(run.solid_old_features)},
        "codebook": {
            label: {k: book[k] for k in ("sizes", "perplexity", "dead_codes", "distinct_semantic_ids")}
            for label, book in codebooks.items()
        },
        "new_items": data.report()["new_items"],
        "variants": {name: _headline(run) for name, run in runs.items()},
        "equal_epochs": {n: r["equal_epochs"]["test"] for n, r in runs.items() if "equal_epochs" in r},
        "equal_seconds": {n: r["equal_seconds"]["test"] for n, r in runs.items() if "equal_seconds" in r},
        "cost": {
            name: {
                "parameters": run["parameters"],
                "bytes_per_round": run.get("bytes_per_round", run["bytes_per_model"]),
                "seconds_per_epoch": run["seconds_per_epoch"],
            }
            for name, run in runs.items()
        },
    }
    if "solid" in runs and base_all:
        result["solid_vs_base_full_NDCG@10"] = round(
            runs["solid"]["test"]["all"]["NDCG@10"] / base_all - 1.0, 4
        )
    return result


def run_solid(cfg: DictConfig, output_dir: Path | None = None) -> dict[str, Any]:
    """Run the base model, SOLID and its ablations as the composed config ``cfg`` describes (typed here,
    once); write outputs; return the result."""
    wall_start = time.perf_counter()
    run = typed_run(cfg, SolidStudySettings, SOLID_STUDY_IGNORES)
    plain, out = run.record, begin_run(run, output_dir)
    # Checks tracking.* now; logs the study's final table when it ends (its variants' results).
    tracker = RunTracker(out, run.tracking, plain)
    model_cfg = run.model
    if not isinstance(model_cfg, SolidConfig):
        raise ValueError(f"the SOLID experiment needs model=solid (got model.name={model_cfg.name!r})")
    variants = list(run.solid_variants)
    unknown = [v for v in variants if v not in BASE_VARIANTS and v not in VARIANTS]
    if unknown:
        raise ValueError(f"solid_variants: unknown {unknown}; valid: {[*BASE_VARIANTS, *VARIANTS]}")

    raw = load_dataset(
        run.data.name, run.data.path, run.data.format, run.data.text_path, kcore=run.data.kcore
    )
    everyone = leave_one_out(raw)
    max_len = run.data.max_len
    data = device_data(everyone, run, run.train, run.device_users, run.new_item_share)
    split, seed = data.split, run.seed

    # The base SRM trains first: its item table can feed a codebook and its cost is everyone's budget.
    torch.manual_seed(seed)
    base = _base_model(model_cfg, split.num_items, max_len)
    runs: dict[str, dict[str, Any]] = {"base": train_variant(f"base {model_cfg.base}", base, data, seed)}
    item_table = base.item_embedding.weight.detach().clone()
    budget = {"epochs": runs["base"]["epochs_run"], "seconds": runs["base"]["train_seconds"]}
    if "text_srm" in variants:
        torch.manual_seed(seed)
        model = _base_model(model_cfg, split.num_items, max_len)
        init = text_initialised_srm(model, split, run.text)
        runs["text_srm"] = {**train_variant("text_srm", model, data, seed, budget=budget), "text_init": init}

    codes, codebooks = _codebooks(run, raw, data, item_table, variants)

    for name in variants:
        if name in BASE_VARIANTS:
            continue
        torch.manual_seed(seed)
        model = _solid_model(model_cfg, split.num_items, max_len, VARIANTS[name])
        model.set_semantic_ids(codes["old" if name == "solid_old_codebook" else "main"])
        init = text_initialised_srm(model, split, run.text) if name == "solid_text_init" else None
        runs[name] = train_variant(name, model, data, seed, budget=budget)
        if init is not None:
            runs[name]["text_init"] = init
        if model.use_codebook:
            book = codebooks["old" if name == "solid_old_codebook" else "main"]
            runs[name]["bytes_per_round"] = runs[name]["bytes_per_model"] + book["bytes"]

    result = _solid_result(run, model_cfg, data, codebooks, runs)
    payload = {
        "status": "completed",
        "config": plain,
        "dataset_report": split.report,
        "device_data": data.report(),
        "codebook": codebooks,
        "runs": runs,
        "result": result,
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "output_dir": str(out),
    }
    write_json(out / "metrics.json", payload)
    plot_variants(
        runs, out / "solid.png", f"SOLID on {model_cfg.base}, {run.data.name} ({len(split.train)} users)"
    )
    tracker.finish(result)
    result["output_dir"] = str(out)
    return result


@hydra.main(config_path=str(config_dir()), config_name="solid_run", version_base="1.3")
@exit_on_bad_input
def main(cfg: DictConfig) -> None:
    """Command-line entry point (Hydra): run and print the ``RESULT`` line."""
    refuse_unread_keys(cfg, "solid_run", SOLID_STUDY_IGNORES, "the SOLID study")
    emit_result(run_solid(cfg, Path(HydraConfig.get().runtime.output_dir)))


if __name__ == "__main__":
    main()
