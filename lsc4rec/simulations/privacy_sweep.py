"""Privacy sweep: NDCG@10 against ε for local DP-SGD and central DP, with the non-private federated run.

    python -m lsc4rec.simulations.privacy_sweep dataset=beauty
    python -m lsc4rec.simulations.privacy_sweep sweep.epsilons=[2,8] sweep.modes=[local] federated.rounds=3

Every setting is one federated run (the same ``federated.*`` / ``strategy.*`` / ``train.*`` settings, on
the in-process grid unless ``sweep.runtime=flower``) from the same initial model: ``privacy.mode=none``
(ε = ∞), then for each mode in ``sweep.modes`` and each ε in ``sweep.epsilons`` a run whose noise is derived
so that the planned rounds end at that ε (``privacy.target_epsilon``; δ = ``privacy.delta`` or 1/devices). The
metric is the **last** round's full-ranking test NDCG@10: picking the best round on the devices' validation
items would itself spend privacy. Also random-recommender NDCG@10 as the floor. With
``federated.warm_start_epochs`` the global SRM is first trained once on the cloud's stale data (what the cloud
already holds, see :mod:`lsc4rec.server.warm_start`) and every setting starts from those weights. Writes
``metrics.json`` and ``privacy_sweep.png`` under ``outputs/<run>/`` and prints ``RESULT {json}``. Each
setting's federated run is tracked in its own folder (``tracking.*``, docs/tracking.md), the sweep's table in
the sweep's.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lsc4rec.cli import exit_on_bad_input
from lsc4rec.config import config_dir, to_plain_dict
from lsc4rec.data import LeaveOneOutSplit, RawDataset, leave_one_out, load_dataset
from lsc4rec.data.slices import evaluation_slices
from lsc4rec.data.staleness import held_by_cloud
from lsc4rec.models.fresh_popularity import PriorRanking
from lsc4rec.models.solid import SolidRecommender
from lsc4rec.models.solid.saved_ids import load_semantic_ids
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.reporting import emit_result, peak_memory_mb, write_json
from lsc4rec.server.components.catalogue_text import catalogue_vectors
from lsc4rec.server.components.fresh_prior import load_saved_prior
from lsc4rec.server.components.solid_codebook import SolidOnServer
from lsc4rec.server.federated_run import run_federated
from lsc4rec.server.warm_start import load_initial_weights, warm_start_on_cloud
from lsc4rec.settings import FederatedRunSettings, federated_settings_from_overrides, typed_section
from lsc4rec.simulations.federated import launch
from lsc4rec.simulations.launch.inprocess import InProcessGrid
from lsc4rec.simulations.launch.runs import begin_run
from lsc4rec.tracking import RunTracker
from lsc4rec.training import build_eval_sets, build_model_from_config, evaluate, metrics_by_slice

logger = logging.getLogger(__name__)

METRIC = "NDCG@10"


@dataclass(frozen=True)
class SweepSettings:
    """Which privacy settings the sweep runs (``sweep.*`` in ``conf/privacy_sweep.yaml``)."""

    epsilons: tuple[float, ...]
    modes: tuple[str, ...]
    runtime: str
    local_overrides: tuple[str, ...]
    central_overrides: tuple[str, ...]
    setting: tuple[str, ...] = ()
    ablations: tuple[str, ...] = ()
    ablation_epsilon: float = 8.0

    def __post_init__(self) -> None:
        if self.runtime not in ("inprocess", "flower"):
            raise ValueError(f"sweep.runtime must be inprocess or flower, got {self.runtime!r}")
        if not self.ablation_epsilon > 0:
            raise ValueError(f"sweep.ablation_epsilon must be > 0, got {self.ablation_epsilon}")
        names = [ablation_name(a) for a in self.ablations]
        if len(set(names)) != len(names):
            raise ValueError(f"sweep.ablations repeats a name: {names}")


def ablation_name(ablation: str) -> str:
    """The name of a ``sweep.ablations`` entry (``"name override override ..."``), checked."""
    parts = ablation.split()
    if len(parts) < 2 or "=" in parts[0] or not all("=" in p for p in parts[1:]):
        raise ValueError(
            f"sweep.ablations entry {ablation!r} must be a name then key=value overrides, e.g. "
            "'clip-0.1 privacy.clipping_norm=0.1'"
        )
    return parts[0]


def settings_of(sweep: SweepSettings) -> list[dict[str, Any]]:
    """The sweep's runs: ``{"name", "mode", "target_epsilon", "overrides"}``, non-private first, then each
    mode's ε curve, then the ablations (local DP at ``sweep.ablation_epsilon``, one knob changed each)."""
    runs = [{"name": "non-private", "mode": "none", "target_epsilon": math.inf, "overrides": []}]
    for mode in sweep.modes:
        if str(mode) not in ("local", "central"):
            raise ValueError(f"sweep.modes holds {mode!r}; use local and/or central")
        for epsilon in sweep.epsilons:
            if not float(epsilon) > 0:
                raise ValueError(f"sweep.epsilons holds {epsilon}; every epsilon must be > 0")
            runs.append(
                {
                    "name": f"{mode}-eps{float(epsilon):g}",
                    "mode": str(mode),
                    "target_epsilon": float(epsilon),
                    "overrides": [
                        f"privacy.mode={mode}",
                        f"privacy.target_epsilon={float(epsilon)}",
                        "privacy.noise_multiplier=0",
                        *(sweep.local_overrides if mode == "local" else sweep.central_overrides),
                    ],
                }
            )
    for ablation in sweep.ablations:
        name, *overrides = ablation.split()
        epsilon = float(sweep.ablation_epsilon)
        runs.append(
            {
                "name": f"local-eps{epsilon:g}-{ablation_name(ablation)}",
                "mode": "local",
                "ablation": name,
                "target_epsilon": epsilon,
                "overrides": [
                    "privacy.mode=local",
                    f"privacy.target_epsilon={epsilon}",
                    "privacy.noise_multiplier=0",
                    *sweep.local_overrides,
                    *overrides,
                ],
            }
        )
    return runs


def run_setting(sweep: SweepSettings, base_overrides: list[str], setting: dict[str, Any], out: Path) -> dict:
    """One federated run of the sweep; returns its summary (test metrics, privacy spent)."""
    overrides = [*base_overrides, *setting["overrides"], f"run_name={out.name}", f"output_dir={out.parent}"]
    run = federated_settings_from_overrides(overrides)
    if sweep.runtime == "inprocess":
        grid = InProcessGrid(run.federated.num_supernodes, {"overrides": shlex.join(overrides)})
        return run_federated(grid, run, out)
    return launch(run, overrides, out)


def run_model(
    run: FederatedRunSettings, raw: RawDataset, split: LeaveOneOutSplit, weights: Path | None
) -> SequentialRecommender:
    """The run's SRM with ``weights`` (a saved state dict), or else what every setting starts from (the
    initial weights, or the seeded fresh init); with the text part (``model.item_text``), built on the
    catalogue's text vectors as the nodes receive them. A SOLID model gets the semantic ids its run saved
    beside ``weights``, or else those of the codebook's version 0, which every setting starts from."""
    torch.manual_seed(run.seed)
    # Saved weights replace every initial value: the text projection's SVD start is skipped then.
    loaded = weights is not None or bool(run.federated.initial_weights)
    vectors = _text_vectors(run, split)
    max_len = run.data.max_len
    model = build_model_from_config(run.model, split.num_items, max_len, vectors, weights_follow=loaded)
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    elif run.federated.initial_weights:
        load_initial_weights(model, Path(run.federated.initial_weights))
    if isinstance(model, SolidRecommender):
        if weights is not None:
            load_semantic_ids(model, weights)
        else:
            SolidOnServer.from_initial_model(run.solid, raw, split, model, seed=run.seed).label(model)
    return model


def _text_vectors(run: FederatedRunSettings, split: LeaveOneOutSplit) -> torch.Tensor | None:
    """The catalogue's text vectors as every node and the server read them (None without a text part)."""
    if run.model.item_text == "none":
        return None
    catalogue = catalogue_vectors(run, split)
    return None if catalogue is None else catalogue.vectors


def initial_test_metrics(
    run: FederatedRunSettings, raw: RawDataset, split: LeaveOneOutSplit
) -> dict[str, float]:
    """Full-ranking test metrics of the model every setting starts from (initial weights or a fresh init)."""
    model = run_model(run, raw, split, None)
    _, test = build_eval_sets(split, run.eval, run.data.max_len)
    return evaluate(model, test, run.eval.ks)["full"]


def slice_report(
    run: FederatedRunSettings, raw: RawDataset, split: LeaveOneOutSplit, weights: Path | None
) -> dict[str, dict]:
    """Test NDCG@10 / HR@10 (full ranking) by slice of the model in ``weights`` (a setting's last round;
    None: the initial model): all users, rare and popular targets (by the devices' training data), cold and
    warm users, and the users the cloud held against those it never saw (``collab.cloud_users``). A run
    with the fresh prior (``privacy.fresh_prior``) is ranked as it was tested: with its saved prior."""
    model = run_model(run, raw, split, weights)
    term = None if weights is None else load_saved_prior(weights.parent, "test")
    scorer = model if term is None else PriorRanking(model, term)
    _, test = build_eval_sets(split, run.eval, run.data.max_len)
    held = held_by_cloud(len(split.train), run.collab.cloud_users, run.seed)
    slices = {
        **evaluation_slices(split),
        "users_the_cloud_held": [u for u, kept in enumerate(held) if kept],
        "users_the_cloud_never_saw": [u for u, kept in enumerate(held) if not kept],
    }
    return metrics_by_slice(scorer, test, slices, (10,))


def report_slices(
    run: FederatedRunSettings, raw: RawDataset, split: LeaveOneOutSplit, out: Path, rows: list[dict]
) -> dict:
    """Slices of the initial model and of every setting's last-round model (``<out>/<name>/model_last.pt``),
    added to ``rows`` in place; returns the initial model's."""
    for row in rows:
        row["slices"] = slice_report(run, raw, split, out / row["name"] / "model_last.pt")
    return slice_report(run, raw, split, None)


def random_ndcg(num_items: int, k: int = 10) -> float:
    """Expected NDCG@k of a uniformly random full ranking of ``num_items`` items (the target's rank is
    uniform, and only ranks 1..k count)."""
    return sum(1.0 / math.log2(rank + 1) for rank in range(1, k + 1)) / num_items


def plot_sweep(
    rows: list[dict[str, Any]], floor: float, path: Path, title: str, initial: float | None = None
) -> Path:
    """Left: NDCG@10 against ε per mode, with the non-private run, the initial model and random as lines.
    Right: each local DP setting's per-device ε over the rounds."""
    fig, (ax, spent) = plt.subplots(1, 2, figsize=(12, 4.4))
    reference = next((r for r in rows if r["mode"] == "none"), None)
    curve = [r for r in rows if not r.get("ablation")]
    for mode, marker in (("local", "o"), ("central", "s")):
        points = sorted((r["epsilon"], r[METRIC]) for r in curve if r["mode"] == mode)
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=f"{mode} DP")
    if reference is not None:
        ax.axhline(reference[METRIC], color="black", linestyle="--", label="non-private (ε = ∞)")
        if initial is not None:
            half = initial + (reference[METRIC] - initial) / 2
            ax.axhline(half, color="grey", linestyle=":", label="initial + 50% of the non-private gain")
    ax.axhline(floor, color="red", linestyle="-.", linewidth=0.8, label="random")
    if initial is not None:
        ax.axhline(initial, color="green", linestyle="-.", linewidth=0.8, label="initial model (round 0)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ε (final, δ fixed)")
    ax.set_ylabel(f"test {METRIC} (last round, full ranking)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    for row in rows:
        if row["mode"] == "local" and not row.get("ablation"):
            values = row.get("epsilon_by_round") or []
            spent.plot(range(1, len(values) + 1), values, marker=".", label=row["name"])
    spent.set_xlabel("round")
    spent.set_ylabel("ε spent by every device (cumulative)")
    spent.set_title("local DP: per-device ε over the rounds")
    spent.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _warm_start(
    base: FederatedRunSettings, base_overrides: list[str], raw: RawDataset, split: LeaveOneOutSplit, out: Path
) -> tuple[FederatedRunSettings, list[str], dict[str, Any]]:
    """Warm-start the global SRM once on the cloud's stale data (saved as ``warm_start.pt``); the settings
    and overrides of runs that start from it, and the warm start's report."""
    # Every setting starts from the same warm-started weights, trained once on the cloud's stale data.
    torch.manual_seed(base.seed)  # the same warm start every time the sweep is run
    vectors = _text_vectors(base, split)
    model = build_model_from_config(base.model, split.num_items, base.data.max_len, vectors)
    if isinstance(model, SolidRecommender):
        # SOLID trains with its semantic ids: the codebook's version 0 labels them, as in a federated run.
        SolidOnServer.from_initial_model(base.solid, raw, split, model, seed=base.seed).label(model)
    warm_start = warm_start_on_cloud(model, base, split)
    torch.save(model.state_dict(), out / "warm_start.pt")
    base_overrides = [
        # The warm start is done (and train.patience, its early stopping, was read by it alone).
        *[o for o in base_overrides if not o.startswith(("federated.warm_start_epochs=", "train.patience="))],
        "federated.warm_start_epochs=0",
        f"federated.initial_weights={out / 'warm_start.pt'}",
    ]
    return federated_settings_from_overrides(base_overrides), base_overrides, warm_start


def _setting_row(setting: dict[str, Any], summary: dict[str, Any], rounds: list[dict]) -> dict[str, Any]:
    """One setting's row of the sweep: its privacy, last-round test metrics and per-round ε."""
    last = summary["test_last_round"]["full"]
    privacy = summary.get("privacy", {})
    return {
        "name": setting["name"],
        "mode": setting["mode"],
        "ablation": setting.get("ablation"),
        "target_epsilon": setting["target_epsilon"],
        "epsilon": privacy.get("epsilon", math.inf) if setting["mode"] != "none" else math.inf,
        "delta": privacy.get("delta"),
        "noise_multiplier": privacy.get("noise_multiplier"),
        METRIC: last[METRIC],
        "HR@10": last["HR@10"],
        "best_round_NDCG@10": summary["test"]["full"][METRIC],
        # The server's validation NDCG@10 of the last round: what settings are chosen on.
        "valid_NDCG@10": (rounds[-1].get("server_valid") or {}).get(METRIC),
        # Every device of a node shares its mechanism: the largest node ε is each device's, by round
        # (central DP: the run's ε, whose unit is a node).
        "epsilon_by_round": [row["train"].get("epsilon-max", row["train"].get("epsilon")) for row in rounds],
        "mean_round_seconds": summary["mean_round_seconds"],
    }


def _sweep_figures(
    rows: list[dict[str, Any]], initial: dict[str, float], initial_slices: dict[str, dict], gain: float
) -> dict[str, Any]:
    """The result's figures: the initial model's NDCG@10, NDCG@10 by slice and each setting's share."""
    return {
        # What the federated runs start from, on the same test items: the share any run adds lies above it.
        "initial_NDCG@10": initial[METRIC],
        # NDCG@10 by slice: where the devices' data adds to the initial model, and what each setting keeps.
        "slices_NDCG@10": {
            "initial": {name: part.get(METRIC) for name, part in initial_slices.items()},
            **{row["name"]: {name: part.get(METRIC) for name, part in row["slices"].items()} for row in rows},
        },
        "non_private_gain": gain / initial[METRIC] if initial[METRIC] > 0 else math.nan,
        "settings": [
            {k: row[k] for k in ("name", "epsilon", METRIC, "fraction_of_gain", "fraction_of_non_private")}
            | {"seconds_per_round": row["mean_round_seconds"]}
            for row in rows
        ],
    }


@hydra.main(config_path=str(config_dir()), config_name="privacy_sweep", version_base="1.3")
@exit_on_bad_input
def main(cfg: DictConfig) -> None:
    """Command-line entry point (Hydra)."""
    started = time.perf_counter()
    # Typed once, here: the sweep's own keys, and the federated run every setting varies (whose keys a
    # federated run cannot honour are refused as in any federated run).
    sweep = typed_section(cfg.sweep, SweepSettings, "sweep")
    # Every setting is a plain federated run (system=base: no cloud) plus the user's overrides.
    base_overrides = [
        "system=base",
        # The experiment's setting first, so that the command line's own overrides win.
        *sweep.setting,
        *[o for o in HydraConfig.get().overrides.task if not o.startswith(("run_name=", "sweep."))],
    ]
    base = federated_settings_from_overrides(base_overrides)
    out = begin_run(base, Path(HydraConfig.get().runtime.output_dir))
    plain = to_plain_dict(cfg)
    # Checks tracking.* now; the sweep's own table is logged at its end (each setting's federated run is
    # tracked in its own folder as it goes).
    tracker = RunTracker(out, base.tracking, plain)
    raw = load_dataset(
        base.data.name, base.data.path, base.data.format, base.data.text_path, kcore=base.data.kcore
    )
    split = leave_one_out(raw)
    warm_start = None
    if base.federated.warm_start_epochs > 0:
        base, base_overrides, warm_start = _warm_start(base, base_overrides, raw, split, out)
    initial = initial_test_metrics(base, raw, split)
    rows: list[dict[str, Any]] = []
    for setting in settings_of(sweep):
        logger.info("privacy sweep: %s", setting["name"])
        summary = run_setting(sweep, base_overrides, setting, out / setting["name"])
        rounds = json.loads((out / setting["name"] / "metrics.json").read_text(encoding="utf-8"))["rounds"]
        rows.append(_setting_row(setting, summary, rounds))
        write_json(out / "metrics.json", {"status": "running", "config": plain, "settings": rows})
    reference = rows[0][METRIC]
    gain = reference - initial[METRIC]
    for row in rows:
        row["fraction_of_non_private"] = row[METRIC] / reference if reference > 0 else math.nan
        # The share of what non-private fine-tuning adds to the initial model that this setting keeps.
        row["fraction_of_gain"] = (row[METRIC] - initial[METRIC]) / gain if gain > 0 else math.nan
    initial_slices = report_slices(base, raw, split, out, rows)
    floor = random_ndcg(split.num_items)
    plot_sweep(
        rows, floor, out / "privacy_sweep.png", f"{base.model.name} on {base.data.name}", initial[METRIC]
    )
    result = {
        "experiment": "privacy_sweep",
        "dataset": base.data.name,
        "model": str(base.model.name),
        "rounds": base.federated.rounds,
        "nodes": base.federated.num_supernodes,
        "random_NDCG@10": floor,
        "warm_start": warm_start,
        **_sweep_figures(rows, initial, initial_slices, gain),
        "output_dir": str(out),
    }
    write_json(
        out / "metrics.json",
        {
            "status": "completed",
            "config": plain,
            "settings": rows,
            "final": result,
            "wall_seconds": round(time.perf_counter() - started, 1),
            "peak_memory_mb": round(peak_memory_mb(), 1),
        },
    )
    tracker.finish(result)
    emit_result(result)


if __name__ == "__main__":
    main()
