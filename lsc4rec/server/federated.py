"""The federated round loop of the ServerApp: train, aggregate, evaluate, checkpoint; resume after a crash.

Runs on any Flower ``Grid`` (simulation, real SuperNodes, or the in-process grid of the tests). Per round:
sample nodes and send the global SRM; aggregate the valid updates (:class:`SRMStrategy`); aggregate the nodes'
own evaluation; evaluate the global model on every user's validation item on the server (full ranking); write
the checkpoint and ``metrics.json``. At the end the best round (server validation NDCG@10) and the last round
are evaluated on the test items.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from omegaconf import DictConfig

from lsc4rec.config import to_plain_dict
from lsc4rec.data import LeaveOneOutSplit, RawDataset, leave_one_out, load_dataset
from lsc4rec.data.partition import federation_size
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.models.mergenet import MergeNetTransfer, resolve_slice
from lsc4rec.models.solid import SemanticCodebook, SolidRecommender
from lsc4rec.models.solid.setup import build_codebook, item_representations, semantic_ids
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.privacy import PrivacySettings
from lsc4rec.reporting import emit_result, peak_memory_mb, plot_rounds, write_json
from lsc4rec.server.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from lsc4rec.server.cloud import Cloud, start_cloud
from lsc4rec.server.warm_start import load_initial_weights, warm_start_on_cloud
from lsc4rec.strategies import ServerOptimizer, SRMStrategy
from lsc4rec.strategies.codebook import CodebookSync
from lsc4rec.strategies.privacy import CentralDP, central_noise_for_target
from lsc4rec.training import build_eval_sets, build_model_from_config, evaluate

logger = logging.getLogger(__name__)

SELECTION_METRIC = "NDCG@10"


def check_privacy_config(cfg: DictConfig) -> None:
    """Refuse combinations that would release un-noised information about devices under DP."""
    mode = str(cfg.privacy.mode)
    if mode == "none":
        return
    if bool(cfg.strategy.row_weighting):
        raise ValueError(f"privacy.mode={mode}: strategy.row_weighting sends per-item counts in clear")
    if str(cfg.model.name) == "solid":
        raise ValueError(f"privacy.mode={mode}: SOLID's codebook statistics are not privatised")
    if mode == "central" and str(cfg.strategy.rule) != "fedavg":
        raise ValueError(
            f"privacy.mode=central calibrates its noise to a mean: strategy.rule must be fedavg, "
            f"not {cfg.strategy.rule}"
        )


def central_dp_from_config(cfg: DictConfig, inner: SRMStrategy, population: int) -> CentralDP:
    """Central DP around ``inner``: noise from ``privacy.noise_multiplier`` or ``privacy.target_epsilon``."""
    privacy = PrivacySettings.from_config(cfg.privacy)
    nodes = max(1, math.ceil(float(cfg.strategy.fraction_train) * int(cfg.federated.num_supernodes)))
    delta = privacy.resolved_delta(population)
    noise = privacy.noise_multiplier or central_noise_for_target(
        float(privacy.target_epsilon), int(cfg.federated.rounds), delta, nodes
    )
    return CentralDP(
        inner,
        noise_multiplier=noise,
        clipping_norm=privacy.clipping_norm,
        num_sampled_nodes=nodes,
        delta=delta,
        clipping=privacy.central_clipping,
        max_epsilon=privacy.budget,
    )


def strategy_from_config(cfg: DictConfig, population: int = 0) -> SRMStrategy | CentralDP:
    """The SRM strategy described by ``cfg.strategy`` and ``cfg.federated`` (wrapped for central DP).

    ``population``: devices in the federation (central DP's default δ is 1 / population).
    """
    check_privacy_config(cfg)
    central = str(cfg.privacy.mode) == "central"
    strategy = SRMStrategy(
        rule=str(cfg.strategy.rule),
        trim_fraction=float(cfg.strategy.trim_fraction),
        proximal_mu=float(cfg.strategy.proximal_mu),
        fraction_train=float(cfg.strategy.fraction_train),
        # 0 switches client-side evaluation off in the round loop; the strategy itself needs a valid fraction.
        fraction_evaluate=float(cfg.federated.fraction_evaluate) or 1.0,
        min_train_replies=int(cfg.strategy.min_train_replies),
        min_available_nodes=int(cfg.federated.min_available_nodes),
        wait_for_nodes_seconds=float(cfg.federated.wait_for_nodes_seconds),
        seed=int(cfg.seed),
        server_optimizer=ServerOptimizer(
            name=str(cfg.strategy.server_optimizer.name),
            lr=float(cfg.strategy.server_optimizer.lr),
            momentum=float(cfg.strategy.server_optimizer.momentum),
            beta2=float(cfg.strategy.server_optimizer.beta2),
            eps=float(cfg.strategy.server_optimizer.eps),
        ),
        row_weighting=bool(cfg.strategy.row_weighting),
        uniform_weights=central,
    )
    return central_dp_from_config(cfg, strategy, population) if central else strategy


def _state_dict(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in arrays.to_torch_state_dict().items()}


def run_federated(grid: Grid, cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Run (or resume) the federated training of ``cfg``, write outputs to ``out``, return a summary."""
    wall_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(cfg.seed))
    raw = load_dataset(cfg.data.name, cfg.data.path, cfg.data.format, cfg.data.get("text_path"))
    split = leave_one_out(raw)
    max_len = int(cfg.data.max_len)
    model = build_model_from_config(cfg.model, split.num_items, max_len)
    if cfg.federated.initial_weights and not bool(cfg.federated.resume):
        load_initial_weights(model, Path(str(cfg.federated.initial_weights)))
    warm_start = (
        warm_start_on_cloud(model, cfg, split)
        if int(cfg.federated.warm_start_epochs) > 0 and not bool(cfg.federated.resume)
        else None
    )
    strategy = strategy_from_config(cfg, population=_federation_size(cfg, split))
    strategy.summary()
    codebook = SolidOnServer.start(cfg, raw, split, model) if isinstance(model, SolidRecommender) else None

    cloud = start_cloud(cfg, split, out) if bool(cfg.collab.enabled) else None
    if int(cfg.mergenet.every_rounds) > 0 and cloud is None:
        raise ValueError(
            "mergenet.every_rounds > 0 transfers from the cloud LLM: it needs collab.enabled=true"
        )
    try:
        summary = _round_loop(grid, cfg, out, split, model, strategy, cloud, wall_start, codebook)
        if warm_start is not None:
            summary["warm_start"] = warm_start
            payload = json.loads((out / "metrics.json").read_text())
            payload["final"]["warm_start"] = warm_start
            write_json(out / "metrics.json", payload)
        return summary
    finally:
        if cloud is not None:
            cloud.stop()


def _federation_size(cfg: DictConfig, split: LeaveOneOutSplit) -> int:
    nodes, cap = int(cfg.federated.num_supernodes), int(cfg.federated.users_per_node)
    return federation_size(len(split.train), nodes, cap)


class SolidOnServer:
    """The server's half of SOLID: the global codebook sync plus labelling the global model's items."""

    def __init__(self, cfg: DictConfig, raw: RawDataset, split: LeaveOneOutSplit, sync: CodebookSync) -> None:
        self.cfg, self.raw, self.split, self.sync = cfg, raw, split, sync

    @classmethod
    def start(
        cls, cfg: DictConfig, raw: RawDataset, split: LeaveOneOutSplit, model: SolidRecommender
    ) -> SolidOnServer:
        """Version 0 of the codebook, fitted on the initial global model's item representations."""
        features, _ = item_representations(cfg.solid, raw, split, model.item_embedding.weight.detach())
        codebook = build_codebook(cfg.solid, features, seed=int(cfg.seed))
        sync = CodebookSync(
            codebook,
            momentum=float(cfg.solid.sync_momentum),
            reseed_scale=float(cfg.solid.reseed_scale),
            sync_every=int(cfg.solid.sync_every),
            seed=int(cfg.seed),
        )
        logger.info(
            "SOLID codebook version 0: sizes %s, features %s", codebook.sizes, list(cfg.solid.features)
        )
        return cls(cfg, raw, split, sync)

    def label(self, model: SequentialRecommender, codebook: SemanticCodebook | None = None) -> dict[str, Any]:
        """Give ``model`` the semantic ids of ``codebook`` (default: the current one); return code usage."""
        assert isinstance(model, SolidRecommender)
        codebook = codebook or self.sync.codebook
        features, _ = item_representations(
            self.cfg.solid, self.raw, self.split, model.item_embedding.weight.detach()
        )
        codes = semantic_ids(codebook, features)
        model.set_semantic_ids(codes)
        return codebook.usage(codes[1:])


class MergeNetOnServer:
    """MergeNet in the federated loop: the cloud LLM -> the global SRM, on the server, every k rounds.

    The round is the transfer cycle: before sending, the adapter rewrites the global SRM's paired parameters
    (``θ' = adapter(θ_global, factors(θ_LLM))``); the nodes train from ``θ'``; the aggregate is the
    post-step parameters the adapter learns from (``½‖θ' − θ_aggregate‖²``: the server holds no gradient,
    and ``θ' − θ_aggregate`` is the round's pseudo-gradient, so the ``step`` signal is the only one here).
    Nodes receive the same-sized model, so the transfer costs server time, not bytes.
    """

    def __init__(self, cfg: DictConfig, model: SequentialRecommender, llm: CloudLLM) -> None:
        self.model = model
        self.every = int(cfg.mergenet.every_rounds)
        # The round is the cycle: one transfer per transferring round.
        self.transfer = MergeNetTransfer.from_config(
            cfg.mergenet,
            resolve_slice(str(cfg.mergenet.target), model, llm),
            resolve_slice(str(cfg.mergenet.source), model, llm),
            seed=int(cfg.seed),
            t_cycle=1,
            signal="step",
        )
        self.pending: torch.Tensor | None = None

    def before_round(self, server_round: int, arrays: ArrayRecord) -> tuple[ArrayRecord, dict[str, float]]:
        """The global model to send this round (transferred on the cycle) and the transfer's cost."""
        if self.every <= 0 or (server_round - 1) % self.every != 0:
            return arrays, {}
        start = time.perf_counter()
        self.model.load_state_dict(arrays.to_torch_state_dict())
        self.pending = self.transfer.transfer()
        out = ArrayRecord(self.model.state_dict())
        return out, {"mergenet-seconds": time.perf_counter() - start, "mergenet-extra-bytes": 0}

    def state_dict(self) -> dict[str, Any]:
        """Adapter and optimizer state for the checkpoint (a resumed run keeps learning the same adapter)."""
        return {
            "adapter": self.transfer.adapter.state_dict(),
            "optimizer": self.transfer.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.transfer.adapter.load_state_dict(state["adapter"])
        self.transfer.optimizer.load_state_dict(state["optimizer"])

    def after_round(self, arrays: ArrayRecord) -> dict[str, float]:
        """Learn from the aggregate that followed a transfer."""
        if self.pending is None:
            return {}
        start = time.perf_counter()
        self.model.load_state_dict(arrays.to_torch_state_dict())
        loss = self.transfer.learn(self.pending)
        self.pending = None
        return {
            "mergenet-adapter-loss": loss,
            "mergenet-learn-seconds": time.perf_counter() - start,
            "mergenet-relative-change": self.transfer.stats.relative_changes[-1],
        }


def _evaluate_config(cloud: Cloud | None) -> ConfigRecord:
    """What client-side evaluation needs besides the weights: where the cloud's candidate service is."""
    if cloud is None:
        return ConfigRecord()
    return ConfigRecord(
        {
            "candidate-service": cloud.public_address or cloud.service.target,
            "candidate-token": cloud.token,
            "candidate-tls": bool(cloud.service.tls),
        }
    )


def _round_loop(
    grid: Grid,
    cfg: DictConfig,
    out: Path,
    split: LeaveOneOutSplit,
    model: SequentialRecommender,
    strategy: SRMStrategy | CentralDP,
    cloud: Cloud | None,
    wall_start: float,
    solid: SolidOnServer | None = None,
) -> dict[str, Any]:
    """The rounds themselves (resume, train, evaluate, checkpoint) and the final report."""
    plain_cfg = to_plain_dict(cfg)
    max_len = int(cfg.data.max_len)
    full_ranking = bool(cfg.eval.full_ranking)
    valid_set, test_set = build_eval_sets(split, cfg.eval, max_len)
    protocol = "full" if full_ranking else "sampled"
    ks = tuple(int(k) for k in cfg.eval.ks)
    arrays = ArrayRecord(model.state_dict())
    best: dict[str, Any] = {
        "round": 0,
        "value": float("-inf"),
        "arrays": _state_dict(arrays),
        "codebook": None,
    }
    history: list[dict] = []
    start_round = 1
    checkpoint_path = out / "checkpoint.pt"
    state: dict[str, Any] = {}
    if bool(cfg.federated.resume):
        state = load_checkpoint(checkpoint_path, reference=model.state_dict())
        arrays = ArrayRecord(state["arrays"])
        best = {
            "round": state["best_round"],
            "value": state["best_value"],
            "arrays": state["best_arrays"],
            "codebook": state.get("best_codebook"),
        }
        if solid is not None:
            solid.sync.load_state_dict(state["codebook"])
        history = state["history"]
        strategy.load_state_dict(state["strategy"])
        restore_rng_states(state["rng"])
        start_round = int(state["round"]) + 1
        logger.info("resuming %s after round %d of %d", out.name, state["round"], cfg.federated.rounds)

    rounds = int(cfg.federated.rounds)
    timeout = float(cfg.federated.round_timeout)
    mergenet = None
    if cloud is not None and int(cfg.mergenet.every_rounds) > 0:
        # The adapter works on its own copy of the global model; the evaluation model stays untouched.
        mergenet = MergeNetOnServer(cfg, copy.deepcopy(model), cloud.llm)
        if start_round > 1 and state.get("mergenet") is not None:
            mergenet.load_state_dict(state["mergenet"])
    for server_round in range(start_round, rounds + 1):
        round_start = time.perf_counter()
        transfer_row: dict[str, float] = {}
        if mergenet is not None:
            arrays, transfer_row = mergenet.before_round(server_round, arrays)
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        codebook_row: dict[str, Any] = solid.sync.attach(messages) if solid is not None else {}
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
            if mergenet is not None:
                transfer_row.update(mergenet.after_round(arrays))
        if solid is not None:
            stats, collected = solid.sync.collect(replies)
            codebook_row.update(collected)
            codebook_row.update(solid.sync.update(server_round, stats))
        train_seconds = time.perf_counter() - round_start
        row: dict[str, Any] = {"round": server_round, "train": dict(train_metrics or {})}
        if float(cfg.federated.fraction_evaluate) > 0:
            eval_messages = list(
                strategy.configure_evaluate(server_round, arrays, _evaluate_config(cloud), grid)
            )
            if solid is not None:
                attached = solid.sync.attach(eval_messages)
                codebook_row["codebook-bytes-sent"] += attached["codebook-bytes-sent"]
            eval_replies = list(grid.send_and_receive(eval_messages, timeout=timeout))
            if solid is not None:
                solid.sync.acknowledge(eval_replies)
            client_eval = strategy.aggregate_evaluate(server_round, eval_replies)
            row["client_evaluate"] = dict(client_eval or {})
        every = int(cfg.federated.server_eval_every)
        if server_round % every == 0 or server_round == rounds:
            model.load_state_dict(arrays.to_torch_state_dict())
            if solid is not None:
                usage = solid.label(model)
                codebook_row.update({"perplexity": usage["perplexity"], "dead_codes": usage["dead_codes"]})
            valid = evaluate(model, valid_set, ks, full_ranking=full_ranking)[protocol]
            row["server_valid"] = valid
            if valid[SELECTION_METRIC] > best["value"]:
                best = {
                    "round": server_round,
                    "value": valid[SELECTION_METRIC],
                    "arrays": _state_dict(arrays),
                    "codebook": solid.sync.codebook.to_arrays() if solid is not None else None,
                }
        row["round_seconds"] = time.perf_counter() - round_start
        row["train_seconds"] = train_seconds
        row["failed_nodes"] = [vars(f) for f in strategy.failures if f.round == server_round]
        if solid is not None:
            row["codebook"] = codebook_row
        if transfer_row:
            row["mergenet"] = transfer_row
        history.append(row)
        logger.info(
            "round %d/%d: %d/%d valid updates, train loss %.4f, server valid %s %s, %.1f s",
            server_round,
            rounds,
            int(row["train"].get("valid-replies", 0)),
            int(row["train"].get("nodes-sampled", 0)),
            row["train"].get("train_loss", float("nan")),
            SELECTION_METRIC,
            f"{row['server_valid'][SELECTION_METRIC]:.4f}" if "server_valid" in row else "-",
            row["round_seconds"],
        )
        if bool(cfg.federated.checkpoint):
            save_checkpoint(
                checkpoint_path,
                {
                    "round": server_round,
                    "arrays": _state_dict(arrays),
                    "best_round": best["round"],
                    "best_value": best["value"],
                    "best_arrays": best["arrays"],
                    "best_codebook": best["codebook"],
                    "codebook": solid.sync.state_dict() if solid is not None else None,
                    "mergenet": mergenet.state_dict() if mergenet is not None else None,
                    "strategy": strategy.state_dict(),
                    "rng": rng_states(),
                    "history": history,
                },
            )
        write_json(out / "metrics.json", {"status": "running", "config": plain_cfg, "rounds": history})

    final_state = _state_dict(arrays)
    model.load_state_dict(final_state)
    if solid is not None:
        solid.label(model)
    test_last = evaluate(model, test_set, ks, full_ranking=full_ranking)
    model.load_state_dict(best["arrays"])
    if solid is not None and best["codebook"] is not None:
        # The best round's weights go with the codebook version they were evaluated under.
        solid.label(model, SemanticCodebook.from_arrays(best["codebook"]))
    test_best = evaluate(model, test_set, ks, full_ranking=full_ranking)
    torch.save(final_state, out / "model_last.pt")
    torch.save(best["arrays"], out / "model_best.pt")
    total_sent = sum(int(r["train"].get("bytes-sent", 0)) for r in history)
    total_received = sum(int(r["train"].get("bytes-received", 0)) for r in history)
    summary = {
        "experiment": "federated",
        "dataset": str(cfg.data.name),
        "model": str(cfg.model.name),
        "strategy": str(cfg.strategy.name),
        "rounds": rounds,
        "best_round": best["round"],
        "test": test_best,
        "test_last_round": test_last,
        "failures": len(strategy.failures),
        "bytes_sent": total_sent,
        "bytes_received": total_received,
        "mean_round_seconds": sum(r["round_seconds"] for r in history) / max(len(history), 1),
    }
    if str(cfg.privacy.mode) != "none":
        summary["privacy"] = privacy_summary(cfg, history)
    if solid is not None:
        summary["codebook"] = {
            "version": solid.sync.version,
            "sizes": solid.sync.codebook.sizes,
            "bytes_sent": sum(int(r["codebook"].get("codebook-bytes-sent", 0)) for r in history),
            "bytes_received": sum(int(r["codebook"].get("codebook-bytes-received", 0)) for r in history),
            "last_round": history[-1]["codebook"] if history else {},
        }
    if cloud is not None:
        last = history[-1].get("client_evaluate", {}) if history else {}
        summary["collaboration"] = {
            "cloud": cloud.report,
            "last_round": {k: v for k, v in last.items() if k.startswith(("client-collab", "request"))},
        }
    payload = {
        "status": "completed",
        "config": plain_cfg,
        "dataset_report": split.report,
        "rounds": history,
        "failed_nodes": [vars(f) for f in strategy.failures],
        "final": summary,
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "output_dir": str(out),
    }
    write_json(out / "metrics.json", payload)
    plot_rounds(history, out / "rounds.png", title=f"federated {cfg.model.name} on {cfg.data.name}")
    summary["output_dir"] = str(out)
    summary["wall_seconds"] = payload["wall_seconds"]
    return summary


def privacy_summary(cfg: DictConfig, history: list[dict]) -> dict[str, Any]:
    """The privacy spent by the end of the run (from the last round that reported it)."""
    keys = ("epsilon", "epsilon-max", "epsilon-mean", "delta", "noise-multiplier", "privacy-stopped")
    last = next((row["train"] for row in reversed(history) if "epsilon" in row.get("train", {})), {})
    out: dict[str, Any] = {"mode": str(cfg.privacy.mode), "clipping_norm": float(cfg.privacy.clipping_norm)}
    out.update({key.replace("-", "_"): last[key] for key in keys if key in last})
    return out


def run_and_report(grid: Grid, cfg: DictConfig, out: Path) -> dict[str, Any]:
    """:func:`run_federated`, then print the ``RESULT`` line."""
    summary = run_federated(grid, cfg, out)
    emit_result(summary)
    return summary
