"""The Flower ClientApp of a device node: local SRM training and client-side evaluation.

A SuperNode hosts the devices of one shard (``partition-id`` of ``num-partitions`` in its node config, see
:mod:`lsc4rec.client.shard`). ``@app.train()`` loads the global weights, trains on what the devices hold when
the round starts (after a pass over the cloud's lists with collaborative training) and replies with the new
weights and ``num-examples``. ``@app.evaluate()`` serves the interactions arriving during the round when time
moves, else ranks every device's validation item (full ranking, or the sampled protocol where
``eval.full_ranking`` is off), fusing with the cloud's lists when the cloud is on; in the run's test phase it
gives the devices' rows of the final table. Node state that must survive rounds lives in ``context.state``
(saved to the node's disk every round for a resume: :mod:`lsc4rec.client.node_state`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from lsc4rec.client.collaboration import (
    candidate_root_certificates,
    collaborate,
    collaborate_at_test,
    serve_round,
)
from lsc4rec.client.fault_drills import fault_drill_mod
from lsc4rec.client.fresh_prior_on_node import RANKING_TERM
from lsc4rec.client.local_training import (
    derive_seed,
    final_decay_epochs,
    optimizer_state_keeper,
    saved_optimizer_state,
    train_on_shard,
)
from lsc4rec.client.node import (
    device_item_text,
    model_from_message,
    model_reads_text,
    node_settings,
    shard_of,
)
from lsc4rec.client.node_component import NodeComponent, NodeStep
from lsc4rec.client.node_registry import active_node_components
from lsc4rec.client.node_state import node_state_mod
from lsc4rec.client.onnx_folders import onnx_dir, remove_onnx_dir
from lsc4rec.client.onnx_runtime import OnnxRecommender
from lsc4rec.client.privacy_mods import central_dp_clipping_mod
from lsc4rec.client.shard import DeviceShard
from lsc4rec.messages import (
    ARRAYS,
    CONFIG,
    FUSION_ALPHA,
    METRICS,
    NUM_EXAMPLES,
    PHASE,
    PHASE_ROUND,
    PHASE_TEST,
    PRIVACY_EXHAUSTED,
    PROXIMAL_MU,
    ROW_COUNTS,
    SERVER_ROUND,
    CandidateService,
)
from lsc4rec.models.fresh_popularity import PriorRanking
from lsc4rec.models.srm import ITEM_TABLE_KEY, SequentialRecommender
from lsc4rec.settings import FederatedRunSettings
from lsc4rec.training import EvalSet, TrainSettings, evaluate

logger = logging.getLogger(__name__)

app = ClientApp()


def round_settings(
    settings: TrainSettings, decay: float, server_round: int, first_lr: float | None = None
) -> TrainSettings:
    """This round's local settings: round 1's lr (``first_lr``, ``federated.local_lr``; None: the settings'
    own) decayed by ``decay`` (``federated.round_lr_decay``) per round after the first."""
    base = settings.lr if first_lr is None else first_lr
    return replace(settings, lr=base * decay ** (server_round - 1))


def _local_update(
    model: SequentialRecommender,
    shard: DeviceShard,
    run: FederatedRunSettings,
    context: Context,
    server_round: int,
    mu: float,
    settings: TrainSettings,
) -> dict[str, float]:
    """The round's standard local epochs on the devices, keeping the Adam moments in ``context.state`` across
    rounds with ``federated.keep_optimizer_state`` (a component may train instead: local DP)."""
    keep = run.federated.keep_optimizer_state
    return train_on_shard(
        model,
        shard,
        settings,
        run.data.max_len,
        run.federated.local_epochs,
        mu,
        seed=derive_seed(run.seed, server_round, shard.partition_id),
        optimizer_state=saved_optimizer_state(context) if keep else None,
        keep_state=optimizer_state_keeper(context) if keep else None,
        frozen_item_table=run.privacy.freeze_item_embeddings,
        decay_epochs=final_decay_epochs(run.federated, server_round),
    )


def _count_round(context: Context, metrics: dict[str, float]) -> int:
    """Node state across rounds (sim and deployment): rounds trained and examples seen; the rounds so far."""
    fresh = MetricRecord({"rounds-trained": 0, "examples-trained": 0.0})
    state = context.state.metric_records.get("node", fresh)
    # A node out of privacy budget answered without training.
    rounds = int(state["rounds-trained"]) + (0 if metrics.get(PRIVACY_EXHAUSTED, 0.0) else 1)
    examples = float(state["examples-trained"]) + metrics[NUM_EXAMPLES]
    context.state["node"] = MetricRecord({"rounds-trained": rounds, "examples-trained": examples})
    return rounds


def _reply_content(
    step: NodeStep, components: list[NodeComponent], metrics: dict[str, float], arrays: ArrayRecord | None
) -> RecordDict:
    """The reply: the update (a training reply) and the metrics, plus what each component adds."""
    content = RecordDict({} if arrays is None else {ARRAYS: arrays})
    content[METRICS] = MetricRecord(metrics)
    if arrays is not None and step.run.strategy.row_weighting:
        # Per-item counts of the node's data: the strategy averages each item row over the nodes with it.
        content[ROW_COUNTS] = ArrayRecord({ITEM_TABLE_KEY: Array(step.shard.item_counts())})
    for component in components:
        component.reply(step, content)
    return content


@app.train(mods=[node_state_mod, central_dp_clipping_mod, fault_drill_mod])
def train(msg: Message, context: Context) -> Message:
    """Train the global SRM on this node's devices and reply with the update and ``num-examples``; the run's
    components (:mod:`lsc4rec.client.node_registry`) prepare the model, train before the local epochs, may
    run the local epochs themselves, and add to the reply."""
    run = node_settings(context)
    server_round = int(msg.content[CONFIG][SERVER_ROUND])
    # With time moving, the devices train on what they hold when the round starts.
    shard = shard_of(context, run).at_round(run.federated.replay, server_round)
    item_text = device_item_text(msg, context, shard.num_items)
    vectors = None if item_text is None or not model_reads_text(run) else item_text[0]
    model = model_from_message(msg, run, shard.num_items, vectors)
    step = NodeStep(msg, context, run, shard, model, True, server_round, item_text)
    components = active_node_components(run)
    for component in components:
        component.prepare(step)
    mu = float(msg.content[CONFIG].get(PROXIMAL_MU, 0.0))
    settings = round_settings(run.train, run.federated.round_lr_decay, server_round, run.federated.local_lr)
    start = time.perf_counter()
    before: dict[str, float] = {}
    for component in components:
        before.update(component.before_update(step, settings))
    updates = (component.local_update(step, settings, mu) for component in components)
    metrics = next((m for m in updates if m is not None), None)
    if metrics is None:
        metrics = _local_update(model, shard, run, context, server_round, mu, settings)
    metrics.update(before)
    metrics["lr"] = settings.lr
    metrics["train-seconds"] = time.perf_counter() - start
    metrics["rounds-trained"] = float(_count_round(context, metrics))
    reply = _reply_content(step, components, metrics, ArrayRecord(model.state_dict()))
    return Message(reply, reply_to=msg)


@app.evaluate(mods=[node_state_mod])
def evaluate_on_devices(msg: Message, context: Context) -> Message:
    """The devices' side of a round, or of the run's final test (``phase``); reply with the metrics.

    A round: with time moving, the devices serve the interactions arriving during it (streaming updates,
    requests); else they rank their validation items (and, with the cloud, fuse and request). The test phase:
    the devices rank their test items and, with the cloud, fuse at no, budgeted and all requests — scored
    through ONNX Runtime when ``runtime=onnx``.
    """
    run = node_settings(context)
    shard = shard_of(context, run)
    item_text = device_item_text(msg, context, shard.num_items)
    vectors = None if item_text is None else item_text[0]
    model = model_from_message(msg, run, shard.num_items, vectors if model_reads_text(run) else None)
    config = msg.content[CONFIG]
    testing = str(config.get(PHASE, PHASE_ROUND)) == PHASE_TEST
    server_round = None if testing else int(config[SERVER_ROUND])
    step = NodeStep(msg, context, run, shard, model, False, server_round, item_text)
    components = active_node_components(run)
    for component in components:
        component.prepare(step)
    service = CandidateService.from_config(config)
    with_cloud = run.collab.enabled and service is not None
    trust = candidate_root_certificates(context, run) if with_cloud and service.tls else None
    alpha = float(config[FUSION_ALPHA]) if FUSION_ALPHA in config else None
    if not testing and run.federated.replay.enabled:
        # The server validates every round on all users' validation items; the devices serve the present.
        metrics = serve_round(
            model, shard, run, server_round, service if with_cloud else None, trust, alpha, vectors
        )
    else:
        # At test with the cloud and full ranking, the device-alone row is read from the catalogue scores
        # the fused rows use: the devices' histories are encoded once.
        shared = testing and with_cloud and run.eval.full_ranking
        # The fresh prior's term (privacy.fresh_prior), in the test phase only: every ranking adds it.
        term = step.scratch.get(RANKING_TERM)
        assert term is None or isinstance(term, torch.Tensor)
        if shared:
            scorer, metrics = _device_scorer(model, run, context, term)
        else:
            scorer, metrics = _rank_held_out_items(model, shard, run, context, testing, term)
        if testing and with_cloud:
            metrics.update(
                collaborate_at_test(scorer, shard, run, service, trust, alpha, vectors, rank_alone=shared)
            )
        elif with_cloud:
            metrics.update(collaborate(scorer, shard, run, service, trust, alpha, vectors))
        if testing and run.runtime == "onnx":
            remove_onnx_dir(context)  # the run's last use of its graphs
    metrics[NUM_EXAMPLES] = float(shard.num_devices)
    return Message(_reply_content(step, components, metrics, None), reply_to=msg)


def _device_scorer(
    model: SequentialRecommender,
    run: FederatedRunSettings,
    context: Context,
    term: torch.Tensor | None = None,
) -> tuple[SequentialRecommender, dict[str, float]]:
    """What the devices score with, and what it cost: with ``runtime=onnx`` the node's ONNX graph (this
    round's weights go into the graph it already holds, the first use exports it), checked against the model
    before it scores anything; else the model itself. A ranking ``term`` (the fresh prior) is added to
    either's scores."""
    if term is not None:
        scorer, cost = _device_scorer(model, run, context)
        return PriorRanking(scorer, term), cost  # type: ignore[return-value]  # scores like the model
    if run.runtime != "onnx":
        return model, {}
    # One graph per device: with full ranking the "all" graph also scores the cloud's lists.
    kinds = ("all",) if run.eval.full_ranking else ("candidates",)
    onnx, onnx_cost = OnnxRecommender.export_or_update(
        model, onnx_dir(context), run.data.max_len, kinds=kinds, providers=run.onnx_providers
    )
    return onnx, onnx_cost  # type: ignore[return-value]  # scores like the model (score_all, score_candidates)


def _rank_held_out_items(
    model: SequentialRecommender,
    shard: DeviceShard,
    run: FederatedRunSettings,
    context: Context,
    testing: bool,
    term: torch.Tensor | None = None,
) -> tuple[SequentialRecommender, dict[str, float]]:
    """Rank each device's validation (or test) item with :func:`_device_scorer`; return the scorer and the
    metrics."""
    full_ranking = run.eval.full_ranking
    eval_set = EvalSet.build(
        "client-test" if testing else "client-valid",
        shard.test_histories if testing else shard.valid_histories,
        shard.test_targets if testing else shard.valid_targets,
        shard.num_items,
        run.data.max_len,
        run.eval.batch_size,
        exclude_history=run.eval.exclude_history,
        # Without full ranking (DIN), the node ranks against seeded negatives of its own devices.
        sampled_negatives=0 if full_ranking else run.eval.sampled_negatives,
        sampled_seed=run.eval.sampled_seed + shard.partition_id,
    )
    scorer, onnx_cost = _device_scorer(model, run, context, term)
    with torch.no_grad():
        result = evaluate(scorer, eval_set, run.eval.ks, full_ranking=full_ranking)
    protocol = "full" if full_ranking else "sampled"
    prefix = "test-device-" if testing else "client-"
    metrics = {f"{prefix}{key}": value for key, value in result[protocol].items()}
    metrics.update(onnx_cost)
    return scorer, metrics
