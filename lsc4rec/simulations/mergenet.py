"""MergeNet experiment: knowledge transfer between the cloud LLM and the device SRM, against KD and nothing.

    python -m lsc4rec.simulations.mergenet dataset=beauty
    python -m lsc4rec.simulations.mergenet dataset=beauty llm.path=outputs/<run>/llm mergenet.t_cycle=4
    python -m lsc4rec.simulations.mergenet mergenet.source=llm:lm.model.layers.1.mlp.down_proj.weight

The cloud LLM is trained (or loaded with ``llm.path``) on the cloud's stale view (``collab.cloud_lag``), as in
LSC4Rec. Cloud -> device: the SRM is trained from scratch three times with the same settings: alone
(``srm``), with the MergeNet transfer from the LLM (``mergenet``: ``mergenet.source`` -> ``mergenet.target``
every ``mergenet.t_cycle`` steps, the LLM taking its own steps alongside when ``mergenet.train_source``), and
with knowledge distillation towards the LLM (``kd``). Device -> cloud (``mergenet.directions`` has
``device_to_cloud``): the LLM is fine-tuned for ``mergenet.llm_finetune_epochs`` more epochs with and without
a transfer from the trained SRM into its item-token embeddings. ``mergenet.device_users < 1`` models a sparse
device: the SRM trains and is tested on a seeded share of the users while the LLM still learns from all of
them (stale), the setting where knowledge from the cloud has the most to add. Test metrics are full-ranking,
overall and for cold users (short histories) and rare target items, so one can see where transfer helps.
Writes ``metrics.json`` and ``mergenet.png`` under ``outputs/<run>/`` and prints ``RESULT {json}``.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from collections.abc import Callable
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

from lsc4rec.config import config_dir
from lsc4rec.data import LeaveOneOutSplit, TrainBatches, leave_one_out, load_dataset
from lsc4rec.data.staleness import cloud_view
from lsc4rec.models.llm.pretrained import build_llm
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.models.llm.training import LLMTrainSettings, evaluate_llm, fit_llm
from lsc4rec.models.mergenet import Distillation, MergeNetTransfer, SourceTraining, resolve_slice
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.reporting import emit_result, peak_memory_mb, write_json
from lsc4rec.simulations.runs import begin_run
from lsc4rec.training import EvalSet, TrainSettings, build_eval_sets, build_model_from_config, evaluate, fit

logger = logging.getLogger(__name__)

DIRECTIONS = ("cloud_to_device", "device_to_cloud")


def transfer_from_config(cfg: DictConfig, target: Any, source: Any) -> MergeNetTransfer:
    """A :class:`MergeNetTransfer` for ``source`` -> ``target`` with the ``mergenet.*`` settings."""
    return MergeNetTransfer.from_config(cfg.mergenet, target, source, seed=int(cfg.seed))


def device_users(split: LeaveOneOutSplit, fraction: float, seed: int) -> LeaveOneOutSplit:
    """The users a device SRM trains on and is tested on: a seeded ``fraction`` of all (1.0 = everyone)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"mergenet.device_users must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return split
    count = max(1, round(fraction * len(split.train)))
    users = np.sort(np.random.default_rng(seed).permutation(len(split.train))[:count])
    return split.subset(users.tolist())


def user_groups(split: LeaveOneOutSplit, short_history: int, rare_count: int) -> dict[str, list[int]]:
    """Test users by situation: all, cold (train history <= short_history), rare target item, the rest."""
    popularity = Counter(item for seq in split.train_sequences() for item in seq)
    users = range(len(split.train))
    return {
        "all": list(users),
        "cold_users": [u for u in users if len(split.train[u]) <= short_history],
        "warm_users": [u for u in users if len(split.train[u]) > short_history],
        "rare_targets": [u for u in users if popularity[split.test_targets[u]] <= rare_count],
    }


def evaluate_groups(
    model: SequentialRecommender,
    split: LeaveOneOutSplit,
    groups: dict[str, list[int]],
    cfg: DictConfig,
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """Full-ranking test NDCG@10 / HR@10 on every group of users."""
    histories = split.test_histories()
    out = {}
    model.to(device)
    for name, users in groups.items():
        if not users:
            continue
        eval_set = EvalSet.build(
            f"test-{name}",
            [histories[u] for u in users],
            [split.test_targets[u] for u in users],
            split.num_items,
            int(cfg.data.max_len),
            int(cfg.eval.batch_size),
            exclude_history=bool(cfg.eval.exclude_history),
        )
        full = evaluate(model, eval_set, (10,), full_ranking=True)["full"]
        out[name] = {
            "users": len(users),
            "NDCG@10": round(full["NDCG@10"], 4),
            "HR@10": round(full["HR@10"], 4),
        }
    model.to("cpu")
    return out


def _train_srm(
    name: str,
    cfg: DictConfig,
    split: LeaveOneOutSplit,
    data: dict[str, Any],
    make_hooks: Callable[[SequentialRecommender], list] = lambda model: [],
) -> tuple[SequentialRecommender, dict[str, Any]]:
    """Train a fresh SRM with the hooks ``make_hooks(model)`` returns; its test metrics per user group."""
    torch.manual_seed(int(cfg.seed))
    model = build_model_from_config(cfg.model, split.num_items, int(cfg.data.max_len))
    hooks = make_hooks(model)
    settings: TrainSettings = data["settings"]
    start = time.perf_counter()
    result = fit(
        model, data["train"], data["valid"], settings, seed=int(cfg.seed), ks=data["ks"], hooks=hooks
    )
    seconds = time.perf_counter() - start
    device = settings.resolve_device()
    summary: dict[str, Any] = {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "seconds_to_best": round(result.seconds_to_best, 1),
        "train_seconds": round(seconds, 1),
        "valid_NDCG@10": round(result.best_valid["full"]["NDCG@10"], 4),
        "test": evaluate_groups(model, split, data["groups"], cfg, device),
        "epochs": result.history,
    }
    for hook in hooks:
        if isinstance(hook, MergeNetTransfer):
            overhead = hook.stats.summary()
            overhead["adapter_parameters"] = sum(p.numel() for p in hook.adapter.parameters())
            overhead["share_of_train_time"] = round(hook.stats.seconds / max(seconds, 1e-9), 3)
            summary["transfer"] = overhead
    logger.info("%s: test %s", name, summary["test"]["all"])
    return model, summary


def _plot(result: dict[str, Any], path: Path, title: str) -> None:
    variants = result["cloud_to_device"]
    groups = [g for g in ("all", "cold_users", "warm_users", "rare_targets") if g in variants["srm"]]
    fig, ax = plt.subplots(figsize=(max(6, 2 * len(groups)), 3.8))
    width = 0.8 / len(variants)
    for index, (name, metrics) in enumerate(variants.items()):
        xs = [g + index * width for g in range(len(groups))]
        ax.bar(xs, [metrics[g]["NDCG@10"] for g in groups], width=width, label=name)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups)
    ax.set_ylabel("test NDCG@10 (full ranking)")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_mergenet(cfg: DictConfig, output_dir: Path | None = None) -> dict[str, Any]:
    """Run the MergeNet experiment of ``cfg``; write outputs; return the result."""
    wall_start = time.perf_counter()
    plain, out = begin_run(cfg, output_dir)
    directions = [str(d) for d in cfg.mergenet.directions]
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"mergenet.directions: unknown {bad}; valid: {list(DIRECTIONS)}")
    everyone = leave_one_out(
        load_dataset(cfg.data.name, cfg.data.path, cfg.data.format, cfg.data.get("text_path"))
    )
    # The cloud LLM sees every user's stale history; the device SRM only its own users' fresh data.
    view = cloud_view(everyone, int(cfg.collab.cloud_lag))
    split = device_users(everyone, float(cfg.mergenet.device_users), int(cfg.seed))
    max_len = int(cfg.data.max_len)
    settings = TrainSettings(**plain["train"])
    valid_set, _ = build_eval_sets(split, cfg.eval, max_len)
    data = {
        "settings": settings,
        "train": TrainBatches(split.train_sequences(), max_len, settings.batch_size, seed=int(cfg.seed)),
        "valid": valid_set,
        "ks": tuple(int(k) for k in cfg.eval.ks),
        "groups": user_groups(split, int(cfg.mergenet.short_history), int(cfg.mergenet.rare_item_count)),
    }

    llm = build_llm(
        cfg.llm, split.num_items, seed=int(cfg.seed), item_text=split.item_text, text_cfg=cfg.text
    )
    llm_settings = LLMTrainSettings(**plain["llm"]["train"])
    llm_report: dict[str, Any] = {}
    if not cfg.llm.path:
        fitted = fit_llm(
            llm, view.train, view.valid_histories, view.valid_targets, llm_settings, seed=int(cfg.seed)
        )
        llm.save_pretrained(out / "llm")
        llm_report = {"best_epoch": fitted.best_epoch, "valid": fitted.best_valid}
    llm.eval()
    llm_report["test_full_history"] = evaluate_llm(llm, split.test_histories(), split.test_targets)

    runs: dict[str, dict[str, Any]] = {}
    source_spec, target_spec = str(cfg.mergenet.source), str(cfg.mergenet.target)

    def mergenet_hooks(model: SequentialRecommender) -> list:
        # The LLM the transfer reads trains alongside (a copy: the other variants see the trained LLM).
        source_llm = copy.deepcopy(llm)
        hooks: list = [
            transfer_from_config(
                cfg,
                resolve_slice(target_spec, model, source_llm),
                resolve_slice(source_spec, model, source_llm),
            )
        ]
        if bool(cfg.mergenet.train_source):
            hooks.append(
                SourceTraining(source_llm, view.train, lr=float(cfg.mergenet.source_lr), seed=int(cfg.seed))
            )
        return hooks

    srm = None
    if "cloud_to_device" in directions or "device_to_cloud" in directions:
        srm, runs["srm"] = _train_srm("srm", cfg, split, data)
    if "cloud_to_device" in directions:
        runs["mergenet"] = _train_srm("mergenet", cfg, split, data, mergenet_hooks)[1]
        kd = Distillation(
            llm, weight=float(cfg.mergenet.kd_weight), temperature=float(cfg.mergenet.kd_temperature)
        )
        runs["kd"] = _train_srm("kd", cfg, split, data, lambda model: [kd])[1]

    cloud: dict[str, Any] = {}
    if "device_to_cloud" in directions and srm is not None:
        cloud = _device_to_cloud(cfg, llm, srm, view, everyone, llm_settings)

    result: dict[str, Any] = {
        "experiment": "mergenet",
        "dataset": cfg.data.name,
        "pair": f"{source_spec} -> {target_spec}",
        "device_users": len(split.train),
        "llm_test_NDCG@10": round(llm_report["test_full_history"]["NDCG@10"], 4),
        "cloud_to_device": {name: run["test"] for name, run in runs.items()},
    }
    if "mergenet" in runs:
        result["overhead"] = {
            k: v for k, v in runs["mergenet"]["transfer"].items() if k != "adapter_loss_recent"
        }
        result["overhead"]["extra_bytes_per_round"] = 0
    if cloud:
        result["device_to_cloud"] = {k: v["test"] for k, v in cloud.items()}
    payload = {
        "status": "completed",
        "config": plain,
        "llm": llm_report,
        "runs": runs,
        "device_to_cloud": cloud,
        "result": result,
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
    }
    write_json(out / "metrics.json", payload)
    if "cloud_to_device" in directions:
        _plot(result, out / "mergenet.png", f"MergeNet LLM -> SRM, {cfg.data.name}")
    result["output_dir"] = str(out)
    return result


def _device_to_cloud(
    cfg: DictConfig,
    llm: CloudLLM,
    srm: SequentialRecommender,
    view: Any,
    split: LeaveOneOutSplit,
    llm_settings: LLMTrainSettings,
) -> dict[str, Any]:
    """Fine-tune copies of the LLM with and without a transfer from the trained SRM's item table."""
    from dataclasses import replace

    settings = replace(llm_settings, epochs=int(cfg.mergenet.llm_finetune_epochs), patience=10**6)
    out: dict[str, Any] = {}
    for name in ("llm_finetuned", "llm_mergenet"):
        student = copy.deepcopy(llm)
        hooks = []
        if name == "llm_mergenet":
            target = resolve_slice("llm.item_embeddings", srm, student)
            hooks.append(
                transfer_from_config(cfg, target, resolve_slice("srm.item_embeddings", srm, student))
            )
        start = time.perf_counter()
        fitted = fit_llm(
            student,
            view.train,
            view.valid_histories,
            view.valid_targets,
            settings,
            seed=int(cfg.seed),
            hooks=hooks,
        )
        test = evaluate_llm(student, split.test_histories(), split.test_targets)
        out[name] = {
            "valid_NDCG@10": round(fitted.best_valid["NDCG@10"], 4),
            "test": {"NDCG@10": round(test["NDCG@10"], 4), "HR@10": round(test["HR@10"], 4)},
            "seconds": round(time.perf_counter() - start, 1),
        }
        if hooks:
            out[name]["transfer"] = hooks[0].stats.summary()
        logger.info("%s: test %s", name, out[name]["test"])
    return out


@hydra.main(config_path=str(config_dir()), config_name="mergenet_run", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Command-line entry point (Hydra): run and print the ``RESULT`` line."""
    emit_result(run_mergenet(cfg, Path(HydraConfig.get().runtime.output_dir)))


if __name__ == "__main__":
    main()
