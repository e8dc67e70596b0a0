"""Centralized baseline: train one SRM on all users' sequences, early-stop on validation, report test metrics.

    python -m lsc4rec.simulations.centralized dataset=beauty model=sasrec
    python -m lsc4rec.simulations.centralized dataset=ml100k data.path=/abs/ml-100k model=gru4rec

Writes ``outputs/<run>/metrics.json`` (config, dataset report, per-epoch metrics, final test metrics under the
full-ranking and sampled protocols, wall time, peak memory), ``learning_curve.png`` and ``model.pt``, and
prints ``RESULT {json}`` with the final test metrics as its last line. The run is tracked (``tracking.*``,
docs/tracking.md): every epoch as it ends, the refit's epochs and the final table.

``train.refit=true`` adds a second model: trained from scratch with the same seed for the selected number
of epochs (replaying the learning rates) on the training *and* validation interactions, i.e. everything
before the test moment, as a deployed model would be. Its test metrics are reported under ``refit``
(weights in ``model_refit.pt``); ``test`` stays the early-stopped model's.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lsc4rec.cli import exit_on_bad_input
from lsc4rec.config import config_dir
from lsc4rec.data import LeaveOneOutSplit, RawDataset, TrainBatches, leave_one_out, load_dataset
from lsc4rec.models.solid import SolidRecommender
from lsc4rec.models.solid.pipeline import prepare_solid_model
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.reporting import emit_result, peak_memory_mb, plot_learning_curve, write_json
from lsc4rec.settings import (
    CENTRALIZED_IGNORES,
    CentralizedSettings,
    EvalSettings,
    refuse_unread_keys,
    typed_run,
)
from lsc4rec.simulations.launch.runs import begin_run
from lsc4rec.tracking import RunTracker
from lsc4rec.training import (
    EvalSet,
    FitResult,
    TrainSettings,
    build_eval_sets,
    build_model_from_config,
    evaluate,
    fit,
    model_item_vectors,
    train_epochs,
)

logger = logging.getLogger(__name__)


def protocol_description(evaluation: EvalSettings) -> str:
    """One sentence naming the evaluation protocol, written next to every reported number."""
    negatives, seed = evaluation.sampled_negatives, evaluation.sampled_seed
    sampled = f"sampled = target + {negatives} uniform negatives (seed {seed})"
    if not evaluation.full_ranking:
        return f"leave-one-out; {sampled} only (full ranking disabled: eval.full_ranking=false)"
    validation = (
        "validation on every user"
        if evaluation.validation_users is None
        else f"validation on {evaluation.validation_users} seeded users, the others train on their "
        "validation item"
    )
    return (
        f"leave-one-out ({validation}); full = ranking over all items"
        f" (already-seen items excluded: {evaluation.exclude_history}); {sampled}"
    )


def build_model(
    run: CentralizedSettings,
    raw: RawDataset,
    split: LeaveOneOutSplit,
    training_sequences: list[list[int]] | None = None,
) -> tuple[SequentialRecommender, dict | None]:
    """The configured SRM, with SOLID's semantic ids prepared when it is SOLID (and SOLID's report).

    With a text part, items ``training_sequences`` (default: the split's training part) never hold score by
    their text alone.
    """
    vectors = model_item_vectors(run.model, split, run.text, run.data.name)
    sequences = split.train_sequences() if training_sequences is None else training_sequences
    model = build_model_from_config(run.model, split.num_items, run.data.max_len, vectors, sequences)
    if not isinstance(model, SolidRecommender):
        return model, None
    _, _, report = prepare_solid_model(model, run.solid, raw, split, seed=run.seed)
    return model, report


def refit_with_validation(
    run: CentralizedSettings,
    raw: RawDataset,
    split: LeaveOneOutSplit,
    settings: TrainSettings,
    result: FitResult,
    test_set: EvalSet,
    out: Path,
) -> dict:
    """Train a fresh model for ``result.best_epoch`` epochs on train + validation interactions; test it."""
    seed, max_len = run.seed, run.data.max_len
    torch.manual_seed(seed)
    sequences = split.train_sequences(include_valid=True)
    model, _ = build_model(run, raw, split, sequences)
    batches = TrainBatches(sequences, max_len, settings.batch_size, seed=seed)
    epochs = result.best_epoch
    rates = [float(row.get("epoch_lr", settings.lr)) for row in result.history[:epochs]]
    start = time.perf_counter()
    history = train_epochs(model, batches, settings, epochs, seed=seed, learning_rates=rates)
    seconds = time.perf_counter() - start
    model.to(settings.resolve_device())
    test = evaluate(model, test_set, run.eval.ks, full_ranking=run.eval.full_ranking)
    model.to("cpu")
    torch.save(model.state_dict(), out / "model_refit.pt")
    logger.info("refit on train + validation (%d epochs, %.0f s): test %s", epochs, seconds, test.get("full"))
    return {"epochs": epochs, "train_seconds": round(seconds, 1), "test": test, "history": history}


def _load_split(run: CentralizedSettings) -> tuple[RawDataset, LeaveOneOutSplit]:
    """The configured dataset and its leave-one-out split (with held-out validation users when set)."""
    raw = load_dataset(
        run.data.name, run.data.path, run.data.format, run.data.text_path, kcore=run.data.kcore
    )
    split = leave_one_out(raw)
    logger.info("dataset %s: %s", run.data.name, split.report)
    if run.eval.validation_users is not None:
        split = split.with_validation_users(run.eval.validation_users, seed=run.seed)
        logger.info(
            "validation on %d held-out users; the other %d train on their validation item",
            len(split.validation_rows()),
            len(split.train) - len(split.validation_rows()),
        )
    return raw, split


def _fit_with_checkpoints(
    model: SequentialRecommender,
    train_batches: TrainBatches,
    valid_set: EvalSet,
    run: CentralizedSettings,
    out: Path,
    tracker: RunTracker,
) -> FitResult:
    """:func:`fit` with the run's settings, rewriting ``metrics.json`` and logging to ``tracker`` after
    every epoch."""

    def checkpoint_progress(record: dict) -> None:
        # Rewrite metrics.json every epoch so a killed run still leaves its learning curve behind.
        history_so_far.append(record)
        progress = {"config": run.record, "status": "running", "epochs": history_so_far}
        write_json(out / "metrics.json", progress)
        tracker.log_epoch(record)

    history_so_far: list[dict] = []
    return fit(
        model,
        train_batches,
        valid_set,
        run.train,
        seed=run.seed,
        ks=run.eval.ks,
        full_ranking=run.eval.full_ranking,
        on_epoch=checkpoint_progress,
    )


def run_centralized(cfg: DictConfig, output_dir: Path | None = None) -> dict:
    """Run the centralized baseline the composed config ``cfg`` describes (typed here, once); write outputs
    and return the final summary."""
    wall_start = time.perf_counter()
    run = typed_run(cfg, CentralizedSettings, CENTRALIZED_IGNORES)
    out = begin_run(run, output_dir)
    # Opens nothing until the first epoch: a run that fails before leaves no tracker files.
    with RunTracker(out, run.tracking, run.record) as tracker:
        summary = _tracked_run(run, out, tracker, wall_start)
        tracker.finish(summary)
    return summary


def _tracked_run(run: CentralizedSettings, out: Path, tracker: RunTracker, wall_start: float) -> dict:
    """:func:`run_centralized` with the run's ``tracker``, which logs the epochs (the caller finishes it)."""
    plain_cfg = run.record
    torch.manual_seed(run.seed)

    raw, split = _load_split(run)
    max_len = run.data.max_len
    settings = run.train
    model, solid_report = build_model(run, raw, split)
    if solid_report is not None:
        logger.info("SOLID codebook: %s", solid_report["codebook"])
    num_parameters = sum(p.numel() for p in model.parameters())
    logger.info("model %s with %d parameters", run.model.name, num_parameters)

    train_batches = TrainBatches(split.train_sequences(), max_len, settings.batch_size, seed=run.seed)
    full_ranking = run.eval.full_ranking
    valid_set, test_set = build_eval_sets(split, run.eval, max_len)
    ks = run.eval.ks
    result = _fit_with_checkpoints(model, train_batches, valid_set, run, out, tracker)
    model.to(settings.resolve_device())
    test = evaluate(model, test_set, ks, full_ranking=full_ranking)
    torch.save(result.best_state, out / "model.pt")

    summary = {
        "experiment": "centralized",
        "dataset": run.data.name,
        "model": run.model.name,
        "loss": settings.loss,
        "protocol": protocol_description(run.eval),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "seconds_to_best": round(result.seconds_to_best, 1),
        "train_seconds": round(result.train_seconds, 1),
        "test": test,
        "valid": result.best_valid,
    }
    refit_history: list[dict] = []
    if settings.refit:
        refit = refit_with_validation(run, raw, split, settings, result, test_set, out)
        refit_history = refit.pop("history")
        tracker.log_history("refit", refit_history, "epoch")
        summary["refit"] = refit
        summary["seconds_to_refit"] = round(result.seconds_to_best + refit["train_seconds"], 1)
    payload = {
        "status": "completed",
        "config": plain_cfg,
        "dataset_report": split.report,
        "num_parameters": num_parameters,
        "solid": solid_report,
        "stopped_because": result.stopped_because,
        "epochs": result.history,
        "refit_epochs": refit_history,
        "final": summary,
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "torch_threads": torch.get_num_threads(),
        "device": str(settings.resolve_device()),
        "output_dir": str(out),
    }
    write_json(out / "metrics.json", payload)
    plot_learning_curve(
        result.history,
        out / "learning_curve.png",
        best_epoch=result.best_epoch,
        title=f"{run.model.name} on {run.data.name}",
    )
    summary["output_dir"] = str(out)
    summary["wall_seconds"] = payload["wall_seconds"]
    summary["peak_memory_mb"] = payload["peak_memory_mb"]
    return summary


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
@exit_on_bad_input
def main(cfg: DictConfig) -> None:
    """Command-line entry point (Hydra): run and print the ``RESULT`` line."""
    refuse_unread_keys(cfg, "config", CENTRALIZED_IGNORES, "the centralized baseline")
    summary = run_centralized(cfg, Path(HydraConfig.get().runtime.output_dir))
    emit_result(summary)


if __name__ == "__main__":
    main()
