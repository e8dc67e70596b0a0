"""SOLID experiment: the base SRM, SOLID on top of it, and SOLID's ablations, on one dataset.

    python -m lsc4rec.simulations.solid dataset=beauty
    python -m lsc4rec.simulations.solid dataset=ml100k data.path=/abs/ml-100k solid.features=[embedding,text]
    python -m lsc4rec.simulations.solid dataset=beauty model.base=gru4rec model.base_params={num_layers:1}

Trains the base model (``model.base`` with the same width, dropout and ``model.base_params``) first; its item
embeddings can feed the codebook (``solid.features`` containing ``embedding``). Then builds the codebook and
trains each variant of ``solid_variants`` from scratch with the same training settings: ``solid`` (full),
``no_codebook`` (no semantic ids: generation from the item trunk only), ``no_semantic_trunk`` (VQ loss kept),
``no_generation`` (static classifier). Every model is selected on validation full-ranking NDCG@10 and
evaluated on test under full ranking and the sampled protocol. Writes ``metrics.json`` and ``solid.png`` under
``outputs/<run>/`` and prints ``RESULT {json}``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lsc4rec.config import config_dir
from lsc4rec.data import TrainBatches, leave_one_out, load_dataset
from lsc4rec.models.solid import SolidRecommender
from lsc4rec.models.solid.setup import build_codebook, item_representations, semantic_ids
from lsc4rec.models.srm import SequentialRecommender, build_srm
from lsc4rec.reporting import emit_result, peak_memory_mb, write_json
from lsc4rec.simulations.centralized import protocol_description
from lsc4rec.simulations.runs import begin_run
from lsc4rec.training import TrainSettings, build_eval_sets, evaluate, fit

logger = logging.getLogger(__name__)

# Model flags of each SOLID variant (the ablations of issue 6 / papers.md §3.3).
VARIANTS: dict[str, dict[str, bool]] = {
    "solid": {},
    "no_codebook": {"use_codebook": False},
    "no_semantic_trunk": {"semantic_trunk": False},
    "no_generation": {"generation": False},
}


def _base_model(model_cfg: dict[str, Any], num_items: int, max_len: int) -> SequentialRecommender:
    """The plain base SRM SOLID is built on, with the same width, dropout and base parameters."""
    params = dict(model_cfg.get("base_params") or {})
    base = str(model_cfg["base"])
    if base == "sasrec":
        params.setdefault("max_len", max_len)
    return build_srm(
        base,
        num_items,
        hidden_size=int(model_cfg["hidden_size"]),
        dropout=float(model_cfg["dropout"]),
        **params,
    )


def _solid_model(model_cfg: dict[str, Any], num_items: int, max_len: int, flags: dict) -> SolidRecommender:
    params = {k: v for k, v in model_cfg.items() if k != "name"}
    params.update(flags)
    return SolidRecommender(num_items, max_len=max_len, **params)


def _train_and_test(
    name: str, model: SequentialRecommender, data: dict[str, Any], settings: TrainSettings, cfg: DictConfig
) -> dict[str, Any]:
    """Fit with early stopping, evaluate the best epoch on test; the variant's summary."""
    logger.info("training %s (%d parameters)", name, sum(p.numel() for p in model.parameters()))
    result = fit(
        model,
        data["train"],
        data["valid"],
        settings,
        seed=int(cfg.seed),
        ks=data["ks"],
        full_ranking=bool(cfg.eval.full_ranking),
    )
    model.to(settings.resolve_device())
    test = evaluate(model, data["test"], data["ks"], full_ranking=bool(cfg.eval.full_ranking))
    model.to("cpu")
    logger.info("%s test NDCG@10 full %.4f", name, test.get("full", {}).get("NDCG@10", float("nan")))
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "seconds_to_best": round(result.seconds_to_best, 1),
        "train_seconds": round(result.train_seconds, 1),
        "stopped_because": result.stopped_because,
        "valid": result.best_valid,
        "test": test,
        "epochs": result.history,
    }


def _headline(summary: dict[str, Any]) -> dict[str, float]:
    test = summary["test"]
    out = {}
    for protocol in ("full", "sampled"):
        if protocol in test:
            out[f"{protocol}_NDCG@10"] = round(test[protocol]["NDCG@10"], 4)
            out[f"{protocol}_HR@10"] = round(test[protocol]["HR@10"], 4)
    return out


def plot_variants(headlines: dict[str, dict[str, float]], path: Path, title: str) -> None:
    """Bars of test NDCG@10 (full ranking and sampled) per variant."""
    names = list(headlines)
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.8 * len(names)), 3.8))
    for ax, protocol in zip(axes, ("full", "sampled"), strict=True):
        values = [headlines[n].get(f"{protocol}_NDCG@10", 0.0) for n in names]
        ax.bar(range(len(names)), values, color=["grey", *["tab:blue"] * (len(names) - 1)])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(f"test NDCG@10, {protocol}")
        ax.grid(axis="y", alpha=0.3)
        for x, v in enumerate(values):
            ax.text(x, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_solid(cfg: DictConfig, output_dir: Path | None = None) -> dict[str, Any]:
    """Run the base model, SOLID and its ablations as ``cfg`` describes; write outputs; return the result."""
    wall_start = time.perf_counter()
    plain, out = begin_run(cfg, output_dir)
    model_cfg = plain["model"]
    if model_cfg.get("name") != "solid":
        raise ValueError(f"the SOLID experiment needs model=solid (got model.name={model_cfg.get('name')!r})")
    variants = [str(v) for v in cfg.solid_variants]
    unknown = [v for v in variants if v != "base" and v not in VARIANTS]
    if unknown:
        raise ValueError(
            f"solid_variants: unknown {unknown}; valid: ['base', {', '.join(map(repr, VARIANTS))}]"
        )

    raw = load_dataset(cfg.data.name, cfg.data.path, cfg.data.format, cfg.data.get("text_path"))
    split = leave_one_out(raw)
    max_len = int(cfg.data.max_len)
    settings = TrainSettings(**plain["train"])
    valid_set, test_set = build_eval_sets(split, cfg.eval, max_len)
    data = {
        "train": TrainBatches(split.train_sequences(), max_len, settings.batch_size, seed=int(cfg.seed)),
        "valid": valid_set,
        "test": test_set,
        "ks": tuple(int(k) for k in cfg.eval.ks),
    }
    runs: dict[str, dict[str, Any]] = {}
    item_table = None
    features_needed = "embedding" in [str(f) for f in cfg.solid.features]
    if "base" in variants or features_needed:
        torch.manual_seed(int(cfg.seed))
        base = _base_model(model_cfg, split.num_items, max_len)
        runs["base"] = _train_and_test(f"base {model_cfg['base']}", base, data, settings, cfg)
        item_table = base.item_embedding.weight.detach().clone()

    features, feature_report = item_representations(cfg.solid, raw, split, item_table)
    codebook = build_codebook(cfg.solid, features, seed=int(cfg.seed))
    codes = semantic_ids(codebook, features)
    codebook_report = {
        **feature_report,
        "quantizer": str(cfg.solid.quantizer),
        "sizes": codebook.sizes,
        "quantisation_mse": round(codebook.quantisation_error(features), 6),
        "distinct_semantic_ids": len({tuple(r) for r in codes[1:].tolist()}),
        **codebook.usage(codes[1:]),
    }
    logger.info("codebook: %s", codebook_report)

    for name in variants:
        if name == "base":
            continue
        torch.manual_seed(int(cfg.seed))
        model = _solid_model(model_cfg, split.num_items, max_len, VARIANTS[name])
        model.set_semantic_ids(codes)
        runs[name] = _train_and_test(name, model, data, settings, cfg)

    headlines = {name: _headline(run) for name, run in runs.items()}
    result: dict[str, Any] = {
        "experiment": "solid",
        "dataset": cfg.data.name,
        "base": model_cfg["base"],
        "protocol": protocol_description(cfg),
        "codebook": {
            k: codebook_report[k] for k in ("sizes", "perplexity", "dead_codes", "distinct_semantic_ids")
        },
        "variants": headlines,
    }
    if "base" in headlines and "solid" in headlines:
        base_value = headlines["base"].get("full_NDCG@10", 0.0)
        result["solid_vs_base_full_NDCG@10"] = round(
            headlines["solid"]["full_NDCG@10"] / base_value - 1.0 if base_value else 0.0, 4
        )
    payload = {
        "status": "completed",
        "config": plain,
        "dataset_report": split.report,
        "codebook": codebook_report,
        "runs": runs,
        "result": result,
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "output_dir": str(out),
    }
    write_json(out / "metrics.json", payload)
    plot_variants(headlines, out / "solid.png", f"SOLID on {model_cfg['base']}, {cfg.data.name}")
    result["output_dir"] = str(out)
    return result


@hydra.main(config_path=str(config_dir()), config_name="solid_run", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Command-line entry point (Hydra): run and print the ``RESULT`` line."""
    emit_result(run_solid(cfg, Path(HydraConfig.get().runtime.output_dir)))


if __name__ == "__main__":
    main()
