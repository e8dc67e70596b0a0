"""The federated round loop: send, aggregate, evaluate, keep the best; optional parts plug in as extensions.

Runs on any Flower ``Grid`` (simulation, real SuperNodes, the in-process grid of the tests). Each round
samples nodes and sends the global SRM (the strategy decides who and how to aggregate: lsc4rec's
:class:`~lsc4rec.strategies.SRMStrategy` or any Flower strategy, :mod:`lsc4rec.strategies.loop_strategy`),
lets the nodes evaluate it on their devices, ranks every user's validation item with it on the
server (full ranking) and keeps the best round. Train replies are folded into the aggregate as they arrive
where the strategy's rule allows it (:func:`train`), so the ServerApp does not hold a whole round of
updates. Everything else (cloud LLM, SOLID codebook sync, MergeNet, privacy accounting, checkpoints) is a
:class:`~lsc4rec.server.components.LoopExtension`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from lsc4rec.messages import TRAIN_LOSS
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.server.components.checkpoint_files import restore_rng_states
from lsc4rec.server.components.loop_hooks import Best, LoopExtension, LoopState, Scorer, state_dict_of
from lsc4rec.server.reply_stream import exchange, stream_replies
from lsc4rec.strategies.loop_strategy import LoopStrategy
from lsc4rec.strategies.train_fold import train_fold
from lsc4rec.training import EvalSet, evaluate

__all__ = ["SELECTION_METRIC", "RoundPlan", "ranking_of", "run_rounds", "train"]

logger = logging.getLogger(__name__)

#: The server's validation metric that picks the best round.
SELECTION_METRIC = "NDCG@10"


@dataclass(frozen=True)
class RoundPlan:
    """How many rounds, how long to wait for replies, and when who evaluates (``federated.*``, ``eval.*``)."""

    rounds: int
    round_timeout: float
    client_evaluation: bool
    server_eval_every: int
    ks: tuple[int, ...]
    full_ranking: bool
    #: Instructions in flight at most (None: all at once; see
    #: :func:`~lsc4rec.server.reply_stream.dispatch_window`).
    dispatch_window: int | None = None

    @property
    def protocol(self) -> str:
        """The ranking protocol the server's metrics come from."""
        return "full" if self.full_ranking else "sampled"


def ranking_of(model: SequentialRecommender, extensions: Sequence[LoopExtension], phase: str) -> Scorer:
    """What the server ranks with in ``phase``: ``model`` with every extension's ranking terms added."""
    scorer: Scorer = model
    for extension in extensions:
        scorer = extension.ranking(scorer, phase)
    return scorer


def run_rounds(
    grid: Grid,
    strategy: LoopStrategy,
    model: SequentialRecommender,
    valid_set: EvalSet,
    plan: RoundPlan,
    extensions: Sequence[LoopExtension] = (),
) -> LoopState:
    """Run rounds ``state.next_round..plan.rounds``; return the final state (``model``: scratch to rank)."""
    state = LoopState.initial(model)
    for extension in extensions:
        extension.restore(state)
    for extension in extensions:
        extension.start(state)
    if state.restored is not None:
        # Last: starting an extension may seed torch (building an adapter); the resumed run continues from the
        # interrupted one's generators.
        restore_rng_states(state.restored["rng"])
    for server_round in range(state.next_round, plan.rounds + 1):
        round_start = time.perf_counter()
        arrays = state.arrays
        for extension in extensions:
            arrays = extension.outgoing(server_round, arrays)
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        for extension in extensions:
            extension.attach(messages, "train")
        replies, new_arrays, train_metrics = train(
            grid, strategy, server_round, messages, plan.round_timeout, plan.dispatch_window
        )
        state.arrays = new_arrays if new_arrays is not None else arrays
        for extension in extensions:
            extension.after_train(server_round, replies, new_arrays)
        row: dict = {"round": server_round, "train": dict(train_metrics or {})}
        train_seconds = time.perf_counter() - round_start
        if plan.client_evaluation:
            config = ConfigRecord({k: v for e in extensions for k, v in e.evaluate_config().items()})
            eval_messages = list(strategy.configure_evaluate(server_round, state.arrays, config, grid))
            for extension in extensions:
                extension.attach(eval_messages, "evaluate")
            eval_replies = exchange(grid, eval_messages, plan.round_timeout, plan.dispatch_window)
            for extension in extensions:
                extension.after_evaluate(eval_replies)
            row["client_evaluate"] = dict(strategy.aggregate_evaluate(server_round, eval_replies) or {})
        if server_round % plan.server_eval_every == 0 or server_round == plan.rounds:
            model.load_state_dict(state.arrays.to_torch_state_dict())
            for extension in extensions:
                extension.before_server_eval(model)
            ranker = ranking_of(model, extensions, "valid")
            row["server_valid"] = evaluate(ranker, valid_set, plan.ks, full_ranking=plan.full_ranking)[
                plan.protocol
            ]
            if row["server_valid"][SELECTION_METRIC] > state.best.value:
                snapshots = {e.name: s for e in extensions if (s := e.snapshot()) is not None}
                value = row["server_valid"][SELECTION_METRIC]
                state.best = Best(server_round, value, state_dict_of(state.arrays), snapshots)
        row["round_seconds"] = time.perf_counter() - round_start
        row["train_seconds"] = train_seconds
        row["failed_nodes"] = [vars(f) for f in strategy.failures if f.round == server_round]
        row.update({e.name: part for e in extensions if (part := e.round_row()) is not None})
        state.history.append(row)
        log_round(row, plan.rounds, [note for e in extensions if (note := e.progress(row))])
        for extension in extensions:
            extension.round_end(server_round, state, extensions)
        for extension in extensions:
            extension.commit(server_round, state, extensions)
    return state


def _describe(strategy: LoopStrategy) -> str:
    rule = getattr(strategy, "rule", None)
    return f"{type(strategy).__name__}" + (f" (strategy.rule={rule})" if rule else "")


def train(
    grid: Grid,
    strategy: LoopStrategy,
    server_round: int,
    messages: list[Message],
    timeout: float,
    window: int | None = None,
) -> tuple[list[Message], ArrayRecord | None, MetricRecord | None]:
    """Send the round's train ``messages``; the replies (what the extensions read), the new global model and
    the train metrics. Where the strategy can (:func:`~lsc4rec.strategies.train_fold.train_fold`: FedAvg-style
    means) each reply is folded as it arrives and its update dropped; otherwise (median, trimmed mean,
    central DP, Flower strategies) the strategy aggregates the whole round at once. ``window``: instructions
    in flight at most (:func:`~lsc4rec.server.reply_stream.dispatch_window`)."""
    fold = train_fold(strategy, server_round)
    if fold is None:
        if server_round == 1:
            logger.info("%s aggregates each round's replies at once (no streaming)", _describe(strategy))
        replies = exchange(grid, messages, timeout, window)
        return replies, *strategy.aggregate_train(server_round, replies)
    replies = stream_replies(grid, messages, timeout, fold.add, window=window)
    return replies, *fold.finish()


def log_round(row: dict, rounds: int, notes: Sequence[str] = ()) -> None:
    """One line per round: valid updates, train loss, server validation metric, model traffic per node,
    seconds, and what the extensions add (``notes``)."""
    train = row["train"]
    nodes = max(int(train.get("nodes-sampled", 0)), 1)
    traffic = (train.get("bytes-sent", 0) + train.get("bytes-received", 0)) / nodes / 2**20
    logger.info(
        "round %d/%d: %d/%d valid updates, train loss %.4f, server valid %s %s, model %.1f MiB/node, "
        "%.0f s%s",
        row["round"],
        rounds,
        int(train.get("valid-replies", 0)),
        int(train.get("nodes-sampled", 0)),
        train.get(TRAIN_LOSS, float("nan")),
        SELECTION_METRIC,
        f"{row['server_valid'][SELECTION_METRIC]:.4f}" if "server_valid" in row else "-",
        traffic,
        row["round_seconds"],
        "".join(f"; {note}" for note in notes),
    )
