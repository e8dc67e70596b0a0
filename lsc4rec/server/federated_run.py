"""A federated run in the ServerApp: build the parts the config asks for, run the rounds, report.

:func:`run_federated` loads the data, builds the global SRM and the strategy, switches on the loop's
components (:mod:`lsc4rec.server.components.registry`: checkpoints always; the cloud LLM with
``collab.enabled``; SOLID's codebook for ``model=solid``; MergeNet with ``mergenet.every_rounds``; privacy
accounting with ``privacy.mode``), runs :func:`lsc4rec.server.loop.run_rounds`, and evaluates the best
round (server validation NDCG@10) and the last round on the test items. The run's
:class:`~lsc4rec.tracking.RunTracker` logs the warm start's epochs, every round and the final table as they
happen (TensorBoard files in ``<out>/tensorboard``; docs/tracking.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.serverapp import Grid

from lsc4rec.data import LeaveOneOutSplit, leave_one_out, load_dataset
from lsc4rec.data.partition import federation_size
from lsc4rec.models.solid import SolidRecommender
from lsc4rec.models.solid.saved_ids import save_semantic_ids
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.reporting import emit_result, peak_memory_mb, plot_rounds, write_json
from lsc4rec.server.components import (
    LoopExtension,
    LoopState,
    SolidOnServer,
)
from lsc4rec.server.components.catalogue_text import CatalogueVectors, catalogue_vectors
from lsc4rec.server.components.loop_hooks import state_dict_of
from lsc4rec.server.components.registry import BuildContext, build_extensions, check_components
from lsc4rec.server.final_table import final_table, log_final_table, test_on_devices
from lsc4rec.server.loop import RoundPlan, ranking_of, run_rounds
from lsc4rec.server.phase_clock import PhaseClock
from lsc4rec.server.reply_stream import dispatch_window
from lsc4rec.server.strategy_config import build_strategy
from lsc4rec.server.warm_start import load_initial_weights, warm_start_on_cloud
from lsc4rec.settings import FederatedRunSettings
from lsc4rec.strategies.loop_strategy import LoopStrategy
from lsc4rec.tracking import RunTracker
from lsc4rec.training import (
    EvalSet,
    build_eval_sets,
    build_model_from_config,
    evaluate,
    start_item_table_from_text,
)

__all__ = ["round_plan", "run_and_report", "run_federated"]

logger = logging.getLogger(__name__)


def round_plan(run: FederatedRunSettings, grid: Grid | None = None) -> RoundPlan:
    """The loop's schedule from ``federated.*`` and ``eval.*``; the dispatch window for ``grid`` (None: all
    at once unless ``federated.dispatch_window`` sets one)."""
    return RoundPlan(
        rounds=run.federated.rounds,
        round_timeout=run.federated.round_timeout,
        client_evaluation=run.federated.fraction_evaluate > 0,
        server_eval_every=run.federated.server_eval_every,
        ks=run.eval.ks,
        full_ranking=run.eval.full_ranking,
        dispatch_window=dispatch_window(grid, run.federated.dispatch_window),
    )


def run_federated(grid: Grid, run: FederatedRunSettings, out: Path) -> dict[str, Any]:
    """Run (or resume) the federated training of ``run``; write outputs to ``out``; return a summary.

    The run is tracked (``tracking.*``): the warm start's epochs, each round and the final table.
    """
    check_components(run)
    # Opens nothing until the first epoch or round: a run that fails before has no tracker files.
    with RunTracker(out, run.tracking, run.record) as tracker:
        summary = _tracked_run(grid, run, out, tracker)
        tracker.finish(summary)
    return summary


def _tracked_run(grid: Grid, run: FederatedRunSettings, out: Path, tracker: RunTracker) -> dict[str, Any]:
    """:func:`run_federated` with the run's ``tracker``, which logs epochs and rounds (the caller finishes
    it)."""
    wall_start = time.perf_counter()
    clock = PhaseClock()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(run.seed)
    if run.privacy.seeded_noise:
        # Flower's central-DP noise draws from numpy's global generator: seed it so a run is repeatable
        # (a deployment sets privacy.seeded_noise=false and the noise comes from OS entropy).
        np.random.seed(run.seed)
    with clock.phase("data and model"):
        split, catalogue, model, solid = _data_and_model(run)
    resume = run.federated.resume
    with clock.phase("warm start"):
        warm = _warm_start(model, run, split, solid, tracker) if not resume else None
    valid_set, test_set = build_eval_sets(split, run.eval, run.data.max_len)
    if warm is not None and run.collab.enabled:
        with clock.phase("server evaluation"):
            # The final table's reference: the warm-started model on the devices' test items, before any
            # round.
            if solid is not None:
                solid.before_server_eval(model)
            protocol = "full" if run.eval.full_ranking else "sampled"
            warm["test"] = evaluate(model, test_set, run.eval.ks, full_ranking=run.eval.full_ranking)[
                protocol
            ]
    strategy = build_strategy(run, population=_federation_size(run, split))
    strategy.summary()
    context = BuildContext(run, split, model, strategy, out, catalogue, solid, tracker)
    with clock.phase("components (cloud LLM, codebook, ...)"):
        extensions = build_extensions(context)
    try:
        plan = round_plan(run, grid)
        with clock.phase("server evaluation"):
            initial = _initial_valid(model, valid_set, run, extensions) if not resume else None
        warm, initial = _start_report(out / START_REPORT, warm, initial, resume)
        if initial is not None:
            # Round 0 on the same curve as the rounds: what round 1 starts from.
            tracker.log_scalars("round", 0, {"server_valid": initial})
        with clock.phase("rounds"):
            state = run_rounds(grid, strategy, model, valid_set, plan, extensions)
        with clock.phase("devices' test"):
            devices = (
                test_on_devices(
                    grid,
                    strategy,
                    state.arrays,
                    extensions,
                    plan.rounds,
                    plan.round_timeout,
                    plan.dispatch_window,
                )
                if run.collab.enabled and plan.client_evaluation
                else None
            )
        if devices is not None and warm is not None and "test" in warm:
            devices.update({f"test-warm-start-{key}": value for key, value in warm["test"].items()})
        with clock.phase("server test and report"):
            summary = final_report(
                run, out, split, model, test_set, strategy, state, extensions, wall_start, devices
            )
        # What round 1 started from (the warm start's report and the server's validation of that model), and
        # where the time went.
        start = {"warm_start": warm, "round_0_valid": initial, "phase_seconds": clock.report()}
        start = {key: value for key, value in start.items() if value is not None}
        summary.update(start)
        payload = json.loads((out / "metrics.json").read_text())
        payload["final"].update(start)
        write_json(out / "metrics.json", payload)
        return summary
    finally:
        for extension in extensions:
            extension.close()


def _data_and_model(
    run: FederatedRunSettings,
) -> tuple[LeaveOneOutSplit, CatalogueVectors | None, SequentialRecommender, SolidOnServer | None]:
    """The run's data and split, the catalogue's text vectors, the global model (its initial weights loaded
    unless the run resumes) and SOLID's server side for a SOLID model."""
    data = run.data
    raw = load_dataset(data.name, data.path, data.format, data.text_path, kcore=data.kcore)
    split = leave_one_out(raw)
    catalogue = catalogue_vectors(run, split)
    vectors = None if catalogue is None else catalogue.vectors
    model_vectors = vectors if run.model.item_text != "none" else None
    model = build_model_from_config(run.model, split.num_items, run.data.max_len, model_vectors)
    if run.federated.initial_weights and not run.federated.resume:
        load_initial_weights(model, Path(run.federated.initial_weights))
    if run.federated.text_started_items and not run.federated.resume:
        _start_items_from_text(model, run, split)
    solid = (
        SolidOnServer.from_initial_model(run.solid, raw, split, model, seed=run.seed)
        if isinstance(model, SolidRecommender)
        else None
    )
    return split, catalogue, model, solid


def _start_items_from_text(
    model: SequentialRecommender, run: FederatedRunSettings, split: LeaveOneOutSplit
) -> None:
    """``federated.text_started_items``: the global model's item rows start as the items' projected text."""
    remedy = ": drop the override or give the data an X_item_text.jsonl / data.text_path"
    report = start_item_table_from_text(
        model, split, run.text, run.data.name, "federated.text_started_items=true", remedy
    )
    logger.info("item table started from the items' text: %s", report)


def _warm_start(
    model: SequentialRecommender,
    run: FederatedRunSettings,
    split: LeaveOneOutSplit,
    solid: SolidOnServer | None,
    tracker: RunTracker,
) -> dict[str, Any] | None:
    """The warm start on the cloud's stale copy when ``federated.warm_start_epochs > 0`` (its report); its
    epochs are tracked under ``warm_start/``."""
    if run.federated.warm_start_epochs <= 0:
        return None
    if solid is not None:
        # SOLID trains with its items' semantic ids: version 0 of the codebook labels them first.
        solid.label(model)
    return warm_start_on_cloud(model, run, split, on_epoch=tracker.epoch_logger("warm_start"))


#: What round 1 started from (the warm start's report, the server's validation of that model), kept beside
#: the checkpoint so a resumed run reports it as the uninterrupted one does.
START_REPORT = "start.json"


def _start_report(
    path: Path, warm: dict | None, initial: dict | None, resume: bool
) -> tuple[dict | None, dict | None]:
    """A fresh run writes its start report; a resumed one reads the interrupted run's (when there is one)."""
    if resume:
        if path.is_file():
            saved = json.loads(path.read_text())
            return saved.get("warm_start"), saved.get("round_0_valid")
        return warm, initial
    write_json(path, {"warm_start": warm, "round_0_valid": initial})
    return warm, initial


def _initial_valid(
    model: SequentialRecommender,
    valid_set: EvalSet,
    run: FederatedRunSettings,
    extensions: Sequence[LoopExtension],
) -> dict[str, float]:
    """Server validation of the model the first round starts from (random, loaded or warm-started)."""
    for extension in extensions:
        extension.before_server_eval(model)
    protocol = "full" if run.eval.full_ranking else "sampled"
    metrics = evaluate(model, valid_set, run.eval.ks, full_ranking=run.eval.full_ranking)[protocol]
    logger.info("round 0 (the model round 1 starts from): server valid NDCG@10 %.4f", metrics["NDCG@10"])
    return metrics


def _federation_size(run: FederatedRunSettings, split: LeaveOneOutSplit) -> int:
    return federation_size(len(split.train), run.federated.num_supernodes, run.federated.users_per_node)


def final_report(
    run: FederatedRunSettings,
    out: Path,
    split: LeaveOneOutSplit,
    model: SequentialRecommender,
    test_set: EvalSet,
    strategy: LoopStrategy,
    state: LoopState,
    extensions: Sequence[LoopExtension],
    wall_start: float,
    device_test: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Test the last and the best round, save both models, write ``metrics.json`` and ``rounds.png``.

    ``device_test``: the nodes' test-phase metrics (:mod:`lsc4rec.server.final_table`), which become the
    summary's ``final_table``.
    """
    ks, full_ranking = run.eval.ks, run.eval.full_ranking
    final_state = state_dict_of(state.arrays)
    model.load_state_dict(final_state)
    for extension in extensions:
        extension.before_server_eval(model)
    test_last = evaluate(ranking_of(model, extensions, "test"), test_set, ks, full_ranking=full_ranking)
    last_codes = model.semantic_codes if isinstance(model, SolidRecommender) else None
    if state.best.round == len(state.history):
        # The best round is the last: the same weights and extension state, already tested.
        test_best = test_last
    else:
        model.load_state_dict(state.best.arrays)
        for extension in extensions:
            # The best round's weights go with what the extensions kept of that round (SOLID: its codebook).
            if extension.name in state.best.snapshots:
                extension.before_server_eval(model, state.best.snapshots[extension.name])
        test_best = evaluate(ranking_of(model, extensions, "test"), test_set, ks, full_ranking=full_ranking)
    torch.save(final_state, out / "model_last.pt")
    torch.save(state.best.arrays, out / "model_best.pt")
    if last_codes is not None:
        # The items' semantic ids come from the codebook, not the weights: kept beside the last round's model
        # so that it can be scored again as it was tested.
        save_semantic_ids(last_codes, out / "model_last.pt")
    history = state.history
    summary: dict[str, Any] = {
        "experiment": str(run.record.get("experiment", "federated")),
        "dataset": run.data.name,
        "model": str(run.model.name),
        "strategy": run.strategy.name,
        "rounds": run.federated.rounds,
        "best_round": state.best.round,
        "test": test_best,
        "test_last_round": test_last,
        "failures": len(strategy.failures),
        "bytes_sent": sum(int(r["train"].get("bytes-sent", 0)) for r in history),
        "bytes_received": sum(int(r["train"].get("bytes-received", 0)) for r in history),
        "mean_round_seconds": sum(r["round_seconds"] for r in history) / max(len(history), 1),
    }
    summary.update({e.name: part for e in extensions if (part := e.summary(history)) is not None})
    if device_test:
        summary["final_table"] = final_table(device_test, privacy=summary.get("privacy"))
        summary["device_test"] = device_test
        log_final_table(summary["final_table"])
    payload = {
        "status": "completed",
        "config": run.record,
        "dataset_report": split.report,
        "rounds": history,
        "failed_nodes": [vars(f) for f in strategy.failures],
        "final": summary,
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "output_dir": str(out),
    }
    write_json(out / "metrics.json", payload)
    system = str(run.record.get("experiment", "federated"))
    plot_rounds(history, out / "rounds.png", title=f"{system}: {run.model.name} devices on {run.data.name}")
    summary["output_dir"] = str(out)
    summary["wall_seconds"] = payload["wall_seconds"]
    return summary


def run_and_report(grid: Grid, run: FederatedRunSettings, out: Path) -> dict[str, Any]:
    """:func:`run_federated`, then print the ``RESULT`` line."""
    summary = run_federated(grid, run, out)
    emit_result(summary)
    return summary
