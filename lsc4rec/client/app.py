"""The Flower ClientApp of a device node: local SRM training and client-side evaluation.

A SuperNode hosts the devices of one shard (``partition-id`` of ``num-partitions`` in its node config, see
:mod:`lsc4rec.client.shard`). ``@app.train()`` loads the global weights, trains on the shard's sequences and
replies with the new weights and ``num-examples``; ``@app.evaluate()`` ranks every device's validation item
with the global model (full ranking, or the sampled protocol where ``eval.full_ranking`` is off). Node state
that must survive rounds lives in ``context.state``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from omegaconf import DictConfig

from lsc4rec.client.candidate_client import CandidateServiceClient
from lsc4rec.client.codebook_sync import device_statistics, item_features_of, prepare_device_model
from lsc4rec.client.collaborative_devices import CollaborationSettings, serve_devices
from lsc4rec.client.local_training import derive_seed, train_on_shard
from lsc4rec.client.onnx_runtime import OnnxRecommender
from lsc4rec.client.privacy_mods import central_dp_clipping_mod
from lsc4rec.client.private_training import history_from_lists, history_to_lists, train_on_shard_private
from lsc4rec.client.request_model import LearnedRequestModel
from lsc4rec.client.shard import DeviceShard, load_shard
from lsc4rec.config import config_from_run_config, to_plain_dict
from lsc4rec.models.srm import ITEM_TABLE_KEY, SequentialRecommender
from lsc4rec.privacy import PrivacySettings
from lsc4rec.strategies.codebook import STATS_KEY, VERSION_KEY, statistics_record
from lsc4rec.strategies.srm import ROW_COUNTS_KEY
from lsc4rec.training import EvalSet, TrainSettings, build_model_from_config, evaluate

logger = logging.getLogger(__name__)

app = ClientApp()


@lru_cache(maxsize=8)
def _config(run_config_items: tuple) -> DictConfig:
    return config_from_run_config(dict(run_config_items))


def node_config(context: Context) -> DictConfig:
    """The composed experiment config of this run (cached per process: composing costs ~0.1 s)."""
    return _config(tuple(sorted(context.run_config.items())))


def partition_of(context: Context) -> tuple[int, int]:
    """``(partition-id, num-partitions)`` from the node config, with a clear error when missing."""
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as missing:
        raise KeyError(
            f"node config lacks {missing}: start the SuperNode with "
            '--node-config "partition-id=<i> num-partitions=<n>"'
        ) from None


def shard_of(context: Context, cfg: DictConfig) -> DeviceShard:
    """The devices this node hosts and their data."""
    partition_id, num_partitions = partition_of(context)
    return load_shard(
        str(cfg.data.name),
        cfg.data.path,
        str(cfg.data.format),
        partition_id,
        num_partitions,
        int(cfg.federated.users_per_node),
        int(cfg.federated.partition_seed),
    )


def model_from_message(msg: Message, cfg: DictConfig, num_items: int) -> SequentialRecommender:
    """Build the configured SRM and load the global weights sent by the server."""
    model = build_model_from_config(cfg.model, num_items, int(cfg.data.max_len))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


#: context.state key of the node's Adam moments (``federated.keep_optimizer_state``).
OPTIMIZER_STATE_KEY = "optimizer"
#: context.state key of the node's privacy ledger (Opacus RDP history over all rounds, local DP).
PRIVACY_STATE_KEY = "privacy-ledger"


def round_settings(settings: TrainSettings, cfg: DictConfig, server_round: int) -> TrainSettings:
    """This round's local settings: lr decayed by ``federated.round_lr_decay`` per round after the first."""
    decay = float(cfg.federated.round_lr_decay)
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"federated.round_lr_decay must be in (0, 1], got {decay}")
    return replace(settings, lr=settings.lr * decay ** (server_round - 1))


def _faulty(cfg: DictConfig, kind: str, partition_id: int) -> bool:
    listed = str(cfg.federated.faults[kind]).replace(" ", "")
    return bool(listed) and str(partition_id) in listed.split(",")


def _inject_faults(cfg: DictConfig, partition_id: int) -> None:
    # Fault drills (config federated.faults): exercise the server's handling of real failure modes.
    if _faulty(cfg, "delay", partition_id):
        time.sleep(float(cfg.federated.faults.delay_seconds))
    if _faulty(cfg, "crash", partition_id):
        raise RuntimeError(f"partition {partition_id}: injected crash (federated.faults.crash)")


def _malformed(arrays: ArrayRecord) -> ArrayRecord:
    """Drop the last array and reshape the first: what a client with the wrong model version would send."""
    keys = list(arrays.keys())
    out = {key: arrays[key] for key in keys[:-1]}
    first = arrays[keys[0]].numpy()
    out[keys[0]] = Array(np.ascontiguousarray(first.reshape(-1)[: max(1, first.size // 2)]))
    return ArrayRecord(out)


def train_privately(
    model: SequentialRecommender,
    shard: DeviceShard,
    settings: TrainSettings,
    cfg: DictConfig,
    context: Context,
    server_round: int,
) -> dict[str, float]:
    """Local DP-SGD on this node's devices; the privacy ledger lives on in ``context.state``."""
    if bool(cfg.federated.keep_optimizer_state):
        # Opacus wraps a fresh optimizer every round; carrying Adam moments across DP rounds is not wired in.
        raise ValueError("privacy.mode=local does not support federated.keep_optimizer_state=true")
    ledger = context.state.config_records.get(PRIVACY_STATE_KEY)
    result = train_on_shard_private(
        model,
        shard.train_sequences,
        settings,
        PrivacySettings.from_config(cfg.privacy),
        int(cfg.data.max_len),
        int(cfg.federated.local_epochs),
        planned_rounds=int(cfg.federated.rounds),
        num_devices=shard.population or shard.num_devices,
        seed=derive_seed(cfg.seed, server_round, shard.partition_id),
        history=history_from_lists(dict(ledger) if ledger is not None else None),
        label=f"partition {shard.partition_id}",
    )
    context.state[PRIVACY_STATE_KEY] = ConfigRecord(history_to_lists(result.history))
    return result.metrics


@app.train(mods=[central_dp_clipping_mod])
def train(msg: Message, context: Context) -> Message:
    """Train the global SRM on this node's devices and reply with the update and ``num-examples``."""
    cfg = node_config(context)
    partition_id, _ = partition_of(context)
    _inject_faults(cfg, partition_id)
    shard = shard_of(context, cfg)
    model = model_from_message(msg, cfg, shard.num_items)
    codebook = prepare_device_model(msg, context, cfg, model)
    server_round = int(msg.content["config"]["server-round"])
    mu = float(msg.content["config"].get("proximal-mu", 0.0))
    settings = round_settings(TrainSettings(**to_plain_dict(cfg.train)), cfg, server_round)
    keep = bool(cfg.federated.keep_optimizer_state)
    saved = context.state.array_records.get(OPTIMIZER_STATE_KEY) if keep else None

    def keep_state(flat: dict[str, torch.Tensor]) -> None:
        context.state[OPTIMIZER_STATE_KEY] = ArrayRecord({k: Array(v.numpy()) for k, v in flat.items()})

    start = time.perf_counter()
    if str(cfg.privacy.mode) == "local":
        if mu > 0:
            raise ValueError("privacy.mode=local does not support FedProx (strategy.proximal_mu > 0)")
        metrics = train_privately(model, shard, settings, cfg, context, server_round)
    else:
        metrics = train_on_shard(
            model,
            shard,
            settings,
            int(cfg.data.max_len),
            int(cfg.federated.local_epochs),
            mu,
            seed=derive_seed(cfg.seed, server_round, partition_id),
            optimizer_state={k: torch.from_numpy(a.numpy()) for k, a in saved.items()} if saved else None,
            keep_state=keep_state if keep else None,
        )
    metrics["lr"] = settings.lr
    metrics["train-seconds"] = time.perf_counter() - start
    # Node state across rounds (sim and deployment): how often this node trained and on how many examples.
    fresh = MetricRecord({"rounds-trained": 0, "examples-trained": 0.0})
    state = context.state.metric_records.get("node", fresh)
    # A node out of privacy budget answered without training.
    rounds = int(state["rounds-trained"]) + (0 if metrics.get("privacy-exhausted", 0.0) else 1)
    examples = float(state["examples-trained"]) + metrics["num-examples"]
    context.state["node"] = MetricRecord({"rounds-trained": rounds, "examples-trained": examples})
    metrics["rounds-trained"] = float(rounds)
    arrays = ArrayRecord(model.state_dict())
    if _faulty(cfg, "malformed", partition_id):
        arrays = _malformed(arrays)
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
    if bool(cfg.strategy.row_weighting):
        content[ROW_COUNTS_KEY] = ArrayRecord({ITEM_TABLE_KEY: Array(shard.item_counts())})
    if codebook is not None:
        # SOLID: statistics of this node's items under the codebook, on the locally updated representations.
        stats = device_statistics(codebook, item_features_of(cfg, model), shard)
        content[STATS_KEY] = statistics_record(stats)
        content["metrics"][VERSION_KEY] = codebook.version
    return Message(content, reply_to=msg)


def _onnx_dir(context: Context) -> Path:
    """Where this node keeps its exported ONNX graphs (one folder per node, reused every round)."""
    folder = Path(tempfile.gettempdir()) / "lsc4rec-onnx" / f"run{context.run_id}-node{context.node_id}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@app.evaluate()
def evaluate_on_devices(msg: Message, context: Context) -> Message:
    """Rank each device's validation item with the global SRM (full ranking); reply with the metrics."""
    cfg = node_config(context)
    shard = shard_of(context, cfg)
    model = model_from_message(msg, cfg, shard.num_items)
    codebook = prepare_device_model(msg, context, cfg, model)
    full_ranking = bool(cfg.eval.full_ranking)
    eval_set = EvalSet.build(
        "client-valid",
        shard.valid_histories,
        shard.valid_targets,
        shard.num_items,
        int(cfg.data.max_len),
        int(cfg.eval.batch_size),
        exclude_history=bool(cfg.eval.exclude_history),
        # Without full ranking (DIN), the node ranks against seeded negatives of its own devices.
        sampled_negatives=0 if full_ranking else int(cfg.eval.sampled_negatives),
        sampled_seed=int(cfg.eval.sampled_seed) + shard.partition_id,
    )
    scorer: torch.nn.Module = model
    export_seconds = 0.0
    if str(cfg.runtime) == "onnx":
        # The device ranks with ONNX Runtime: re-export this round's global model, then score through it.
        start = time.perf_counter()
        kinds = ("all",) if full_ranking else ("candidates",)
        scorer = OnnxRecommender.export(
            model, _onnx_dir(context), int(cfg.data.max_len), kinds=kinds, providers=tuple(cfg.onnx_providers)
        )
        export_seconds = time.perf_counter() - start
    elif str(cfg.runtime) != "torch":
        raise ValueError(f"runtime must be 'torch' or 'onnx', got {cfg.runtime!r}")
    with torch.no_grad():
        result = evaluate(scorer, eval_set, tuple(int(k) for k in cfg.eval.ks), full_ranking=full_ranking)
    protocol = "full" if full_ranking else "sampled"
    metrics = {f"client-{key}": value for key, value in result[protocol].items()}
    if str(cfg.runtime) == "onnx":
        metrics["onnx-export-seconds"] = export_seconds
    config = msg.content["config"]
    if bool(cfg.collab.enabled) and "candidate-service" in config:
        trust = (
            candidate_root_certificates(context, cfg) if bool(config.get("candidate-tls", False)) else None
        )
        metrics.update(
            collaborate(
                model, shard, cfg, str(config["candidate-service"]), str(config["candidate-token"]), trust
            )
        )
    metrics["num-examples"] = float(shard.num_devices)
    if codebook is not None:
        metrics[VERSION_KEY] = codebook.version
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def candidate_root_certificates(context: Context, cfg: DictConfig) -> Path:
    """The CA file a device trusts for the candidate service: node config ``candidate-ca``, else
    ``collab.service_root_certificates``; a clear error when neither names a readable file."""
    path = context.node_config.get("candidate-ca") or cfg.collab.get("service_root_certificates")
    if not path:
        raise ValueError(
            "the candidate service uses TLS: set collab.service_root_certificates or the SuperNode's node "
            "config candidate-ca to the CA certificate (PEM) to trust"
        )
    if not Path(str(path)).is_file():
        raise FileNotFoundError(f"candidate-service CA certificate {path} does not exist on this device")
    return Path(str(path))


def collaborate(
    model: SequentialRecommender,
    shard: DeviceShard,
    cfg: DictConfig,
    target: str,
    token: str,
    root_certificates: Path | None = None,
) -> dict[str, float]:
    """LSC4Rec on this node's devices: fetch the cloud's lists, rerank, request within the budget, rank.

    Returns the client-side collaborative metrics, plus per-device request rate and bytes (rates, so that the
    strategy's device-weighted mean is the global rate).
    """
    settings = CollaborationSettings(
        candidates=int(cfg.collab.candidates),
        alpha=0.5 if str(cfg.collab.alpha) == "auto" else float(cfg.collab.alpha),
        normalization=str(cfg.collab.normalization),
        score=str(cfg.request.score),
        k=int(cfg.request.k),
        mode=str(cfg.request.mode),
        ratio=float(cfg.request.target_ratio),
        exclude_history=bool(cfg.eval.exclude_history),
        candidate_pool=str(cfg.collab.candidate_pool),
        device_candidates=int(cfg.collab.device_candidates),
        request_model=LearnedRequestModel.load(Path(cfg.request.model_path))
        if str(cfg.request.score) == "learned" and cfg.request.get("model_path")
        else None,
    )
    client = CandidateServiceClient(
        target, token=token, root_certificates=root_certificates, timeout=float(cfg.collab.service_timeout)
    )
    with client as cloud:
        stale = cloud.recommend_for_users(list(shard.users), settings.candidates)
        stale_bytes = 8 * shard.num_devices + stale.items.size * 12
        result = serve_devices(
            model,
            shard.valid_histories,
            shard.valid_targets,
            stale,
            cloud,
            settings,
            int(cfg.data.max_len),
            torch.Generator().manual_seed(derive_seed(cfg.seed, "requests", shard.partition_id)),
            tuple(int(k) for k in cfg.eval.ks),
        )
    devices = max(shard.num_devices, 1)
    out = {f"client-{k}": v for k, v in result.items() if k.startswith("collab")}
    out["request-rate"] = result["requests"] / devices
    out["request-bytes-per-device"] = result["request-bytes"] / devices
    out["list-bytes-per-device"] = stale_bytes / devices
    out["mean-inconsistency"] = result["mean-inconsistency"]
    return out
