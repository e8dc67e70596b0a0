"""MergeNet experiment: knowledge from the cloud LLM into the device SRM, against KD, text init and nothing.

    python -m lsc4rec.simulations.mergenet dataset=beauty mergenet.device_users=0.1
    python -m lsc4rec.simulations.mergenet dataset=beauty llm.path=outputs/<run>/llm mergenet.t_cycle=4
    python -m lsc4rec.simulations.mergenet mergenet.source=llm:lm.model.layers.1.mlp.down_proj.weight

The cloud LLM (text-grounded when the data has item text: ``llm.item_init=auto``) is trained, or loaded with
``llm.path``, on the cloud's stale view (``collab.cloud_lag``) of every user, as in LSC4Rec. Cloud -> device:
the device SRM is trained from scratch with the same settings as each of ``mergenet_variants``: alone
(``srm``), with its item table started from projected item text (``text_srm``: how much text a device can hold
by itself) or from the LLM's item rows (``llm_rows_srm``: all an item-table transfer could carry), with a text
part in its item vectors (``text_part``, ``model.item_text=projected``), with the MergeNet transfer from the
LLM (``mergenet``: ``mergenet.source`` -> ``mergenet.target`` every ``mergenet.t_cycle`` steps, the LLM taking
its own steps alongside when ``mergenet.train_source``; ``mergenet_kd``: the same with KD, so the adapter's
learning signal, the target's gradient, carries the KD loss too), and with knowledge distillation towards the
LLM (``kd``: over all items; ``list_kd``: over only the ``mergenet.kd_list`` items the LLM lists per position,
what a device receives), the text part with each KD (``text_part_kd``, ``text_part_list_kd``), and the text
part from vectors rebuilt from a codebook and semantic ids (``text_part_codes``, ``mergenet.text_codes``).
Device -> cloud (``mergenet.directions`` has ``device_to_cloud``): the LLM is fine-tuned for
``mergenet.llm_finetune_epochs`` more epochs with and without a transfer from the trained SRM into its item
tokens.

The device's data and the measurement are :mod:`lsc4rec.simulations.transfer_study`'s:
``mergenet.device_users`` < 1 models a sparse device (a seeded share of the users; the LLM still learns from
all of them, stale); the newest ``new_item_share`` of the catalogue is held out of device training; test
NDCG@10 (full ranking) is reported overall and on rare targets, cold users and new items, at each variant's
best epoch and at the SRM's epochs and wall-clock. Writes ``metrics.json`` and ``mergenet.png`` under
``outputs/<run>/`` and prints ``RESULT {json}``; its final table also goes to the run's trackers
(``tracking.*``, docs/tracking.md).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field, replace
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

from lsc4rec.cli import exit_on_bad_input
from lsc4rec.config import config_dir
from lsc4rec.data import LeaveOneOutSplit, leave_one_out, load_dataset
from lsc4rec.data.staleness import CloudView, cloud_view
from lsc4rec.models.llm.llm_training import LLMTrainSettings, evaluate_llm, fit_llm
from lsc4rec.models.llm.pretrained import build_llm
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.models.mergenet import (
    Distillation,
    ListDistillation,
    MergeNetTransfer,
    SourceTraining,
    resolve_slice,
)
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.models.srm.text_init import init_item_table_from_vectors
from lsc4rec.reporting import emit_result, peak_memory_mb, write_json
from lsc4rec.settings import MERGENET_STUDY_IGNORES, MergeNetStudySettings, refuse_unread_keys, typed_run
from lsc4rec.simulations.launch.runs import begin_run
from lsc4rec.simulations.transfer_study import (
    HEADLINE_SLICES,
    DeviceData,
    device_data,
    text_initialised_srm,
    train_variant,
)
from lsc4rec.text import item_text_vectors_from_config
from lsc4rec.text.compact import CompactItemVectors
from lsc4rec.tracking import RunTracker
from lsc4rec.training import build_model_from_config

logger = logging.getLogger(__name__)

DIRECTIONS = ("cloud_to_device", "device_to_cloud")


VARIANTS = (
    "srm",
    "text_srm",
    "llm_rows_srm",
    "mergenet",
    "mergenet_kd",
    "kd",
    "list_kd",
    "text_part",
    "text_part_kd",
    "text_part_list_kd",
    "text_part_codes",
)
#: Variants whose SRM item vectors have a text part (model.item_text=projected).
TEXT_PART_VARIANTS = ("text_part", "text_part_kd", "text_part_list_kd", "text_part_codes")


def transfer_from_config(run: MergeNetStudySettings, target: Any, source: Any) -> MergeNetTransfer:
    """A :class:`MergeNetTransfer` for ``source`` -> ``target`` with the ``mergenet.*`` settings."""
    return MergeNetTransfer.from_config(run.mergenet, target, source, seed=run.seed)


def _fresh_srm(
    run: MergeNetStudySettings,
    num_items: int,
    item_vectors: Tensor | None = None,
    training_sequences: list[list[int]] | None = None,
) -> SequentialRecommender:
    """The configured SRM, freshly seeded; with ``item_vectors`` its item vectors get a text part (items
    that ``training_sequences`` never hold score by their text alone)."""
    torch.manual_seed(run.seed)
    model_cfg = run.model if item_vectors is None else replace(run.model, item_text="projected")
    return build_model_from_config(model_cfg, num_items, run.data.max_len, item_vectors, training_sequences)


def _plot(result: dict[str, Any], path: Path, title: str) -> None:
    variants = result["cloud_to_device"]
    first = next(iter(variants.values()))
    groups = [g for g in HEADLINE_SLICES if first.get(g, {}).get("users")]
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


def _checked_choices(run: MergeNetStudySettings) -> tuple[list[str], list[str]]:
    """The run's ``mergenet.directions`` and ``mergenet_variants``; unknown names are refused."""
    directions = [str(d) for d in run.mergenet.directions]
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"mergenet.directions: unknown {bad}; valid: {list(DIRECTIONS)}")
    variants = list(run.mergenet_variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "srm" not in variants:
        raise ValueError(
            f"mergenet_variants must include 'srm' and name only {list(VARIANTS)}, got {variants}"
        )
    return directions, variants


def _cloud_llm(
    run: MergeNetStudySettings,
    split: LeaveOneOutSplit,
    view: CloudView,
    variants: list[str],
    out: Path,
) -> tuple[CloudLLM, LLMTrainSettings, dict[str, Any]]:
    """The cloud LLM trained on the cloud's stale ``view`` (or loaded from ``llm.path``), its training
    settings and its report (item init, best epoch, test metrics on the device users' full histories)."""
    llm = build_llm(run.llm, split.num_items, seed=run.seed, item_text=split.item_text, text_cfg=run.text)
    if any(v in variants for v in ("kd", "text_part_kd")) and llm.max_len < run.data.max_len:
        # Checked before any training: KD needs the teacher's logits at every position the SRM trains.
        raise ValueError(
            f"mergenet_variants has kd but the cloud LLM reads {llm.max_len} items (llm.max_len) and the SRM "
            f"{run.data.max_len} (data.max_len): set data.max_len <= {llm.max_len} or drop kd"
        )
    llm_settings = run.llm.train
    llm_report: dict[str, Any] = {"item_init": llm.item_init}
    if not run.llm.path:
        fitted = fit_llm(
            llm, view.train, view.valid_histories, view.valid_targets, llm_settings, seed=run.seed
        )
        llm.save_pretrained(out / "llm")
        llm_report.update(best_epoch=fitted.best_epoch, valid=fitted.best_valid)
    llm.eval()
    llm_report["test_full_history"] = evaluate_llm(llm, split.test_histories(), split.test_targets)
    return llm, llm_settings, llm_report


@dataclass
class _Study:
    """What every cloud -> device variant trains with: the settings, the trained LLM and the device data."""

    run: MergeNetStudySettings
    llm: CloudLLM
    view: CloudView
    data: DeviceData
    #: The base SRM's epochs and training seconds: every other variant is also measured within them.
    budget: dict[str, Any] = field(default_factory=dict)

    def fresh_srm(
        self, item_vectors: Tensor | None = None, training_sequences: list[list[int]] | None = None
    ) -> SequentialRecommender:
        """:func:`_fresh_srm` for the device's catalogue."""
        return _fresh_srm(self.run, self.data.split.num_items, item_vectors, training_sequences)

    def distillation(self) -> Distillation:
        """KD towards the LLM over all items, with the ``mergenet.kd_*`` settings."""
        return Distillation(
            self.llm,
            weight=float(self.run.mergenet.kd_weight),
            temperature=float(self.run.mergenet.kd_temperature),
        )

    def mergenet_hooks(self, model: SequentialRecommender) -> list:
        """The MergeNet transfer from the LLM into ``model`` (and the LLM's own steps with train_source)."""
        run = self.run
        # The LLM the transfer reads trains alongside (a copy: the other variants see the trained LLM).
        source_llm = copy.deepcopy(self.llm)
        hooks: list = [
            transfer_from_config(
                run,
                resolve_slice(str(run.mergenet.target), model, source_llm),
                resolve_slice(str(run.mergenet.source), model, source_llm),
            )
        ]
        if bool(run.mergenet.train_source):
            hooks.append(
                SourceTraining(source_llm, self.view.train, lr=float(run.mergenet.source_lr), seed=run.seed)
            )
        return hooks


def _train_baselines(
    study: _Study, variants: list[str], runs: dict[str, dict[str, Any]]
) -> SequentialRecommender:
    """Train the SRM alone (setting ``study.budget``), from item text and from the LLM's item rows; return
    the SRM trained alone."""
    data, seed = study.data, study.run.seed
    srm = study.fresh_srm()
    runs["srm"] = train_variant("srm", srm, data, seed)
    study.budget = budget = {"epochs": runs["srm"]["epochs_run"], "seconds": runs["srm"]["train_seconds"]}
    if "text_srm" in variants:
        model = study.fresh_srm()
        init = text_initialised_srm(model, data.split, study.run.text)
        runs["text_srm"] = {**train_variant("text_srm", model, data, seed, budget=budget), "text_init": init}
    if "llm_rows_srm" in variants:
        # The most an item-table transfer can carry at once: the SRM table started from the LLM's item rows.
        model = study.fresh_srm()
        rows = resolve_slice("llm.item_embeddings", model, study.llm).value()
        vectors = torch.cat([rows.new_zeros(1, rows.shape[1]), rows])
        present = torch.ones(vectors.shape[0], dtype=torch.bool)
        init = init_item_table_from_vectors(model, vectors, present)
        runs["llm_rows_srm"] = {
            **train_variant("llm_rows_srm", model, data, seed, budget=budget),
            "llm_rows_init": init,
        }
    return srm


def _train_transfers(study: _Study, variants: list[str], runs: dict[str, dict[str, Any]]) -> None:
    """Train the cloud -> device MergeNet variants (with and without KD) and plain KD into ``runs``."""
    data, seed, budget = study.data, study.run.seed, study.budget
    if "mergenet" in variants:
        model = study.fresh_srm()
        hooks = study.mergenet_hooks(model)
        runs["mergenet"] = train_variant("mergenet", model, data, seed, hooks, budget)
        overhead = hooks[0].stats.summary()
        overhead["adapter_parameters"] = sum(p.numel() for p in hooks[0].adapter.parameters())
        overhead["share_of_train_time"] = round(
            hooks[0].stats.seconds / max(runs["mergenet"]["train_seconds"], 1e-9), 3
        )
        runs["mergenet"]["transfer"] = overhead
    if "mergenet_kd" in variants:
        # The adapter learns through the KD objective: its signal is the target's gradient of the task loss
        # plus the KL towards the LLM (with mergenet.signal=gradient, the default): it can carry what KD does.
        model = study.fresh_srm()
        hooks = study.mergenet_hooks(model)
        kd = study.distillation()
        runs["mergenet_kd"] = train_variant("mergenet_kd", model, data, seed, [*hooks, kd], budget)
        overhead = hooks[0].stats.summary()
        overhead["share_of_train_time"] = round(
            hooks[0].stats.seconds / max(runs["mergenet_kd"]["train_seconds"], 1e-9), 3
        )
        runs["mergenet_kd"]["transfer"] = overhead
    if "kd" in variants:
        kd = study.distillation()
        runs["kd"] = train_variant("kd", study.fresh_srm(), data, seed, [kd], budget)


def _train_text_parts(
    study: _Study, variants: list[str], directions: list[str], runs: dict[str, dict[str, Any]]
) -> None:
    """Train list KD and the variants whose item vectors have a text part (with KD, list KD or from codes)."""
    run, data, seed, budget = study.run, study.data, study.run.seed, study.budget
    split = data.split
    vectors = None
    if any(v in variants for v in TEXT_PART_VARIANTS):
        if not split.item_text:
            raise ValueError(
                f"mergenet_variants {list(TEXT_PART_VARIANTS)} need item text; {run.data.name!r} has none"
            )
        vectors = item_text_vectors_from_config(split.item_text, split.num_items, run.text).vectors
    for name in ("list_kd", "text_part", "text_part_kd", "text_part_list_kd"):
        if name not in variants or "cloud_to_device" not in directions:
            continue
        hooks = []
        if name.endswith("list_kd"):
            hooks.append(
                ListDistillation(
                    study.llm,
                    int(run.mergenet.kd_list),
                    weight=float(run.mergenet.kd_weight),
                    temperature=float(run.mergenet.kd_temperature),
                )
            )
        elif name.endswith("kd"):
            hooks.append(study.distillation())
        if name.startswith("text_part"):
            model = study.fresh_srm(vectors, data.train_sequences)
        else:
            model = study.fresh_srm()
        runs[name] = train_variant(name, model, data, seed, hooks, budget)
    if "text_part_codes" in variants and "cloud_to_device" in directions:
        # The text part from vectors rebuilt from a residual codebook and one semantic id per item: what a
        # device would receive instead of the full matrix (lsc4rec.text.compact).
        compact = CompactItemVectors.from_vectors(vectors, list(run.mergenet.text_codes), seed=run.seed)
        model = study.fresh_srm(compact.vectors(), data.train_sequences)
        runs["text_part_codes"] = train_variant("text_part_codes", model, data, seed, [], budget)
        runs["text_part_codes"]["carrier"] = compact.report(vectors)


def _study_result(
    study: _Study, llm_report: dict[str, Any], runs: dict[str, dict[str, Any]], cloud: dict[str, Any]
) -> dict[str, Any]:
    """The headline result: test metrics of every variant overall, at equal cost and device -> cloud."""
    run, data = study.run, study.data
    result: dict[str, Any] = {
        "experiment": "mergenet",
        "dataset": run.data.name,
        "pair": f"{run.mergenet.source} -> {run.mergenet.target}",
        "device_users": len(data.split.train),
        "llm_item_init": study.llm.item_init,
        "llm_test_NDCG@10": round(llm_report["test_full_history"]["NDCG@10"], 4),
        "new_items": data.report()["new_items"],
        "cloud_to_device": {name: run["test"] for name, run in runs.items()},
        "equal_epochs": {n: r["equal_epochs"]["test"] for n, r in runs.items() if "equal_epochs" in r},
        "equal_seconds": {n: r["equal_seconds"]["test"] for n, r in runs.items() if "equal_seconds" in r},
        "cost": {
            name: {
                "parameters": run["parameters"],
                "bytes_per_model": run["bytes_per_model"],
                "seconds_per_epoch": run["seconds_per_epoch"],
                # Cloud -> device transfers run where the LLM is; devices receive an SRM of the same size.
                "extra_bytes_per_round": 0,
            }
            for name, run in runs.items()
        },
    }
    if "mergenet" in runs:
        result["overhead"] = {
            k: v for k, v in runs["mergenet"]["transfer"].items() if k != "adapter_loss_recent"
        }
        result["overhead"]["extra_bytes_per_round"] = 0
    if cloud:
        result["device_to_cloud"] = {k: v["test"] for k, v in cloud.items()}
    return result


def run_mergenet(cfg: DictConfig, output_dir: Path | None = None) -> dict[str, Any]:
    """Run the MergeNet experiment of the composed config ``cfg`` (typed here, once); write outputs; return
    the result."""
    wall_start = time.perf_counter()
    run = typed_run(cfg, MergeNetStudySettings, MERGENET_STUDY_IGNORES)
    plain, out = run.record, begin_run(run, output_dir)
    # Checks tracking.* now; logs the study's final table when it ends (its variants' results).
    tracker = RunTracker(out, run.tracking, plain)
    directions, variants = _checked_choices(run)
    everyone = leave_one_out(
        load_dataset(run.data.name, run.data.path, run.data.format, run.data.text_path, kcore=run.data.kcore)
    )
    # The cloud LLM sees every user's stale history; the device SRM only its own users' fresh data.
    view = cloud_view(everyone, run.collab.cloud_lag, users=run.collab.cloud_users, seed=run.seed)
    settings = run.train
    data = device_data(
        everyone,
        run,
        settings,
        float(run.mergenet.device_users),
        run.new_item_share,
        fraction_key="mergenet.device_users",
    )
    llm, llm_settings, llm_report = _cloud_llm(run, data.split, view, variants, out)

    study = _Study(run, llm, view, data)
    runs: dict[str, dict[str, Any]] = {}
    srm = _train_baselines(study, variants, runs)
    if "cloud_to_device" in directions:
        _train_transfers(study, variants, runs)
    _train_text_parts(study, variants, directions, runs)

    cloud: dict[str, Any] = {}
    if "device_to_cloud" in directions:
        cloud = _device_to_cloud(run, llm, srm, view, everyone, llm_settings)

    result = _study_result(study, llm_report, runs, cloud)
    payload = {
        "status": "completed",
        "config": plain,
        "device_data": data.report(),
        "llm": llm_report,
        "runs": runs,
        "device_to_cloud": cloud,
        "result": result,
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
    }
    write_json(out / "metrics.json", payload)
    _plot(result, out / "mergenet.png", f"LLM knowledge -> device SRM, {run.data.name}")
    tracker.finish(result)
    result["output_dir"] = str(out)
    return result


def _device_to_cloud(
    run: MergeNetStudySettings,
    llm: CloudLLM,
    srm: SequentialRecommender,
    view: Any,
    split: LeaveOneOutSplit,
    llm_settings: LLMTrainSettings,
) -> dict[str, Any]:
    """Fine-tune copies of the LLM with and without a transfer from the trained SRM's item table."""
    settings = replace(llm_settings, epochs=int(run.mergenet.llm_finetune_epochs), patience=10**6)
    out: dict[str, Any] = {}
    for name in ("llm_finetuned", "llm_mergenet"):
        student = copy.deepcopy(llm)
        hooks = []
        if name == "llm_mergenet":
            target = resolve_slice("llm.item_embeddings", srm, student)
            hooks.append(
                transfer_from_config(run, target, resolve_slice("srm.item_embeddings", srm, student))
            )
        start = time.perf_counter()
        fitted = fit_llm(
            student,
            view.train,
            view.valid_histories,
            view.valid_targets,
            settings,
            seed=run.seed,
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
@exit_on_bad_input
def main(cfg: DictConfig) -> None:
    """Command-line entry point (Hydra): run and print the ``RESULT`` line."""
    refuse_unread_keys(cfg, "mergenet_run", MERGENET_STUDY_IGNORES, "the MergeNet study")
    emit_result(run_mergenet(cfg, Path(HydraConfig.get().runtime.output_dir)))


if __name__ == "__main__":
    main()
