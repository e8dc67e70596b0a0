"""Probe: how much a differentially private fresh-popularity prior adds to a trained model's ranking.

    python benchmarks/popularity_prior.py --model dp=outputs/A/model_last.pt --model plain=outputs/B/model.pt
    python benchmarks/popularity_prior.py --overrides "model=sasrec_device model.item_text=projected" ...

Every device releases which of the catalogue's items are among its last ``--recent`` distinct interactions;
the server sums the releases into fresh item counts. Each device adds 1 to at most ``recent`` counts, so the
counts' L2 sensitivity to one device (user-level, as local DP-SGD's unit) is ``sqrt(recent)``: Gaussian noise
of std ``noise_multiplier x sqrt(recent)`` on every count is the Gaussian mechanism with that noise
multiplier, whose ε (RDP, δ = 1/users) is reported alone and composed with the run's own DP-SGD ledger where
the model's folder has one (``privacy-ledgers/``, the largest node's). A model's ranking scores then get
``weight x log(1 + max(noisy count, 0))`` added.

The weight is chosen on the devices' validation items, privately: with the counts released from what the
devices held before their validation item, each weight's sum of the devices' validation NDCG@10 is released
with Gaussian noise (each device adds a value in [0, 1] to each of the G sums: L2 sensitivity sqrt(G), noise
std ``selection_noise_multiplier x sqrt(G)``) and the best noisy sum wins. The model with that weight is then
tested once with counts released at test time (each device's validation item now part of its history). The
three releases (two counts, one selection) are all in the reported ε. This is a probe of what the prior
carries, measured on saved models with one noise draw on the devices' total (a trusted sum); the federated
run's own prior (``privacy.fresh_prior``, :mod:`lsc4rec.models.fresh_popularity`) has each node noise its own
counts and gains, in its ledger.

Reports test NDCG@10 by slice (rare/popular targets, cold/warm users) with and without the prior. Writes
``<out>/popularity_prior.json`` and ``.png`` and prints ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from lsc4rec.argument_types import non_negative_float, non_negative_int, positive_int
from lsc4rec.client.private_training import HistoryEntry, epsilon_of
from lsc4rec.data import LeaveOneOutSplit, leave_one_out, load_dataset
from lsc4rec.data.slices import evaluation_slices
from lsc4rec.models.fresh_popularity import (
    PriorRanking,
    fresh_item_counts,
    log_prior,
    noised,
    per_device_ndcg,
    release_std,
)
from lsc4rec.reporting import emit_result, write_json
from lsc4rec.settings import federated_settings_from_overrides
from lsc4rec.simulations.privacy_sweep import run_model
from lsc4rec.training import EvalSet, build_eval_sets, evaluate, metrics_by_slice, test_ranks

logger = logging.getLogger(__name__)
METRIC = "NDCG@10"


def noised_counts(
    counts: torch.Tensor, recent: int, noise_multiplier: float, generator: torch.Generator
) -> torch.Tensor:
    """The Gaussian mechanism on the devices' summed fresh counts: std ``noise_multiplier x sqrt(recent)`` on
    every item, drawn once on the total (the federated run's nodes each noise their own counts instead)."""
    noisy = noised(counts, release_std(noise_multiplier, recent), generator)
    noisy[0] = 0.0
    return noisy


def release_epsilon(
    releases: Sequence[HistoryEntry], delta: float, ledger: Sequence[HistoryEntry]
) -> dict[str, float | None]:
    """ε of the Gaussian ``releases`` ``[(noise multiplier, 1.0, count)]`` alone, and composed with a DP-SGD
    ledger (RDP, at ``delta``)."""
    if any(noise <= 0 for noise, _, _ in releases):
        return {"alone": math.inf, "with_training": math.inf, "training_alone": None}
    return {
        "alone": epsilon_of(releases, delta),
        "with_training": epsilon_of([*ledger, *releases], delta) if ledger else None,
        "training_alone": epsilon_of(ledger, delta) if ledger else None,
    }


def private_choice(
    gains: dict[float, torch.Tensor], noise_multiplier: float, generator: torch.Generator
) -> tuple[float, dict[float, float]]:
    """The weight whose noised sum of per-device gains (each in [0, 1]) is largest, and the noised sums.

    One device moves the vector of sums by at most sqrt(len(gains)) in L2 norm: Gaussian noise of std
    ``noise_multiplier x sqrt(len(gains))`` on every sum is the Gaussian mechanism at that noise multiplier.
    """
    std = noise_multiplier * math.sqrt(len(gains))
    noisy = {w: float(g.sum()) + std * float(torch.randn((), generator=generator)) for w, g in gains.items()}
    return max(noisy, key=lambda w: (noisy[w], -w)), noisy


def largest_ledger(run_dir: Path, delta: float) -> list[HistoryEntry]:
    """The DP-SGD history of the run's node that spent the most ε (empty when the run kept no ledger)."""
    folder = run_dir / "privacy-ledgers"
    histories = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))["entries"]
            histories.append([(float(e["noise"]), float(e["rate"]), int(e["steps"])) for e in entries])
        except (ValueError, KeyError, TypeError) as error:
            raise SystemExit(f"error: privacy ledger {path} is not a ledger ({error!r})") from None
    return max(histories, key=lambda h: epsilon_of(h, delta), default=[])


def ndcg_with_prior(model: torch.nn.Module, eval_set: EvalSet, prior: torch.Tensor, weight: float) -> float:
    """Full-ranking NDCG@10 of ``model`` with ``weight x prior`` added to every item's score."""
    return float(evaluate(PriorRanking(model, weight * prior), eval_set, (10,))["full"][METRIC])


def slices_with_prior(
    model: torch.nn.Module, eval_set: EvalSet, slices: dict, prior: torch.Tensor, weight: float
) -> dict[str, float]:
    """Test NDCG@10 by slice (rare/popular targets, cold/warm users) with ``weight x prior`` added."""
    by_slice = metrics_by_slice(PriorRanking(model, weight * prior), eval_set, slices, (10,))
    return {name: values.get(METRIC, 0.0) for name, values in by_slice.items()}


def device_sequences(split: LeaveOneOutSplit, with_validation_item: bool) -> list[list[int]]:
    """Every device's sequence as it stands before its validation item, or with it (at test time)."""
    evaluated = [
        [*sequence, split.valid_targets[user]] if with_validation_item else list(sequence)
        for user, sequence in enumerate(split.train)
    ]
    return [*evaluated, *[list(s) for s in split.train_only]]


def parse_models(values: Sequence[str]) -> dict[str, Path]:
    """``label=path`` pairs, each path an existing saved state dict."""
    models: dict[str, Path] = {}
    for value in values:
        label, sep, path = value.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"error: --model {value!r} must be label=path/to/model.pt")
        if not Path(path).is_file():
            raise SystemExit(f"error: --model {label}: no such file {path}")
        models[label] = Path(path)
    return models


def main() -> None:
    """Measure the prior on each ``--model`` and print ``RESULT``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", required=True, help="label=path of a saved state dict")
    parser.add_argument(
        "--overrides", default="", help="the runs' config overrides (one shell-quoted string)"
    )
    parser.add_argument("--recent", type=positive_int, default=3, help="distinct last items per device")
    parser.add_argument(
        "--noise-multiplier", type=non_negative_float, default=6.0, help="counts' noise / sqrt(recent)"
    )
    parser.add_argument(
        "--selection-noise-multiplier",
        type=non_negative_float,
        default=6.0,
        help="noise / sqrt(weights) on validation sums",
    )
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()
    if 0.0 not in args.weights:
        raise SystemExit("error: --weights must include 0 (the model without the prior)")
    models = parse_models(args.model)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    run = federated_settings_from_overrides(shlex.split(args.overrides))
    data = run.data
    raw = load_dataset(data.name, data.path, data.format, data.text_path, kcore=data.kcore)
    split = leave_one_out(raw)
    valid, test = build_eval_sets(split, run.eval, data.max_len)
    delta = run.privacy.resolved_delta(len(split.train) + len(split.train_only))
    generator = torch.Generator().manual_seed(args.seed)
    counts = {
        "valid": fresh_item_counts(device_sequences(split, False), split.num_items, args.recent),
        "test": fresh_item_counts(device_sequences(split, True), split.num_items, args.recent),
    }
    priors = {
        k: log_prior(noised_counts(c, args.recent, args.noise_multiplier, generator))
        for k, c in counts.items()
    }

    slices = evaluation_slices(split)
    rows = []
    for label, path in models.items():
        model = run_model(run, raw, split, path)
        gains = {}
        for weight in args.weights:
            ranked = PriorRanking(model, weight * priors["valid"])
            gains[weight] = per_device_ndcg(test_ranks(ranked, valid))
        by_weight = {w: float(g.mean()) for w, g in gains.items()}
        chosen, noisy_sums = private_choice(gains, args.selection_noise_multiplier, generator)
        releases = [(args.noise_multiplier, 1.0, 2), (args.selection_noise_multiplier, 1.0, 1)]
        row = {
            "model": label,
            "path": str(path),
            "valid_by_weight": by_weight,
            "valid_noisy_sums": noisy_sums,
            "weight": chosen,
            "weight_without_noise": max(by_weight, key=lambda w: (by_weight[w], -w)),
            "test_without": ndcg_with_prior(model, test, priors["test"], 0.0),
            "test_with": ndcg_with_prior(model, test, priors["test"], chosen) if chosen else None,
            "test_slices_without": slices_with_prior(model, test, slices, priors["test"], 0.0),
            "test_slices_with": slices_with_prior(model, test, slices, priors["test"], chosen),
            "epsilon": release_epsilon(releases, delta, largest_ledger(path.parent, delta)),
        }
        if row["test_with"] is None:
            row["test_with"] = row["test_without"]
        logger.info("%s: weight %s, test %s %.4f -> %.4f", label, chosen, METRIC, row["test_without"],
                    row["test_with"])  # fmt: skip
        rows.append(row)

    result = {
        "benchmark": "popularity_prior",
        "dataset": data.name,
        "overrides": args.overrides,
        "recent": args.recent,
        "noise_multiplier": args.noise_multiplier,
        "count_noise_std": args.noise_multiplier * math.sqrt(args.recent),
        "selection_noise_multiplier": args.selection_noise_multiplier,
        "delta": delta,
        "metric": f"test {METRIC}",
        "models": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "popularity_prior.json", result)
    figure, axes = plt.subplots(figsize=(1.6 + 1.4 * len(rows), 3.2))
    positions = range(len(rows))
    axes.bar([p - 0.2 for p in positions], [r["test_without"] for r in rows], width=0.4, label="model alone")
    axes.bar(
        [p + 0.2 for p in positions], [r["test_with"] for r in rows], width=0.4, label="with the DP prior"
    )
    axes.set_xticks(list(positions), [r["model"] for r in rows])
    axes.set_ylabel(f"test {METRIC}")
    axes.set_title(f"fresh-popularity prior (last {args.recent}, noise multiplier {args.noise_multiplier:g})")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out / "popularity_prior.png", dpi=120)
    emit_result(result)


if __name__ == "__main__":
    main()
