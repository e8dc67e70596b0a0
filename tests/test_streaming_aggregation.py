"""Streaming aggregation (issue 39): folding train replies as they arrive gives the whole round's bits."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from lsc4rec.messages import ARRAYS, EPSILON, METRICS, NUM_EXAMPLES, PRIVACY_EXHAUSTED, ROW_COUNTS
from lsc4rec.server.reply_stream import stream_replies
from lsc4rec.strategies import ServerOptimizer, SRMStrategy
from lsc4rec.strategies.exact_sum import ReproducibleSum
from lsc4rec.strategies.train_fold import TrainFold, train_fold

pytestmark = pytest.mark.usefixtures("task_identity")

NODES = list(range(101, 113))
ROWS, DIM = 37, 5


class ListGrid:
    """Just enough of a Grid for ``configure_train``: a fixed set of node ids."""

    def get_node_ids(self) -> list[int]:
        return NODES


def _global() -> ArrayRecord:
    return ArrayRecord(
        {
            "items": Array(np.zeros((ROWS, DIM), dtype=np.float32)),
            "bias": Array(np.zeros(7, dtype=np.float32)),
            "steps": Array(np.zeros(1, dtype=np.int64)),
        }
    )


def _update(rng: np.random.Generator) -> dict[str, np.ndarray]:
    scale = 10.0 ** rng.integers(-4, 4, size=(ROWS, 1))
    return {
        "items": (rng.standard_normal((ROWS, DIM)) * scale).astype(np.float32),
        "bias": rng.standard_normal(7).astype(np.float32) * 1e3,
        "steps": rng.integers(0, 100, size=1).astype(np.int64),
    }


def _replies(messages: list[Message], row_weighting: bool) -> list[Message]:
    """One reply per message but the last (it times out): valid ones with random updates, example counts and
    row counts, and malformed and failed ones that must be left out."""
    rng = np.random.default_rng(7)
    replies = []
    for index, message in enumerate(messages[:-1]):
        arrays = _update(rng)
        metrics = {NUM_EXAMPLES: float(rng.integers(1, 500)), "train_loss": float(rng.random())}
        content = RecordDict({METRICS: MetricRecord(metrics)})
        if index == 0:
            replies.append(Message(Error(1, "ValueError: boom"), reply_to=message))
            continue
        if index == 1:
            arrays["bias"] = arrays["bias"][:3]  # wrong shape
        if index == 2:
            arrays["items"][0, 0] = np.nan
        if index == 3:
            content[METRICS] = MetricRecord({"train_loss": 1.0})  # no example count
        if index == 4:
            content[METRICS] = MetricRecord({PRIVACY_EXHAUSTED: 1.0, EPSILON: 3.0})
            replies.append(Message(content, reply_to=message))
            continue
        content[ARRAYS] = ArrayRecord({key: Array(value) for key, value in arrays.items()})
        if row_weighting:
            counts = rng.integers(0, 4, size=ROWS).astype(np.int64)
            counts[:3] = 0  # rows no node saw keep the FedAvg aggregate
            content[ROW_COUNTS] = ArrayRecord({"items": Array(counts)})
        replies.append(Message(content, reply_to=message))
    return replies


def _strategy(row_weighting: bool, uniform: bool) -> tuple[SRMStrategy, list[Message]]:
    strategy = SRMStrategy(
        seed=0,
        row_weighting=row_weighting,
        uniform_weights=uniform,
        min_train_replies=2,
        server_optimizer=ServerOptimizer("momentum", lr=0.5),
    )
    messages = list(strategy.configure_train(1, _global(), ConfigRecord(), ListGrid()))
    for message in messages:  # the ids a grid gives the instructions it sends
        message.metadata.__dict__["_message_id"] = f"ins-{message.metadata.dst_node_id}"
    return strategy, messages


def _run(path: str, order: list[int], row_weighting: bool, uniform: bool) -> tuple:
    strategy, messages = _strategy(row_weighting, uniform)
    replies = _replies(messages, row_weighting)
    arrived = [replies[i] for i in order]
    if path == "whole-round":
        arrays, metrics = strategy.aggregate_train(1, arrived)
    else:
        fold = train_fold(strategy, 1)
        assert isinstance(fold, TrainFold)
        kept = [fold.add(reply) for reply in arrived]
        assert all(r.has_error() or ARRAYS not in r.content for r in kept), "folded updates are dropped"
        arrays, metrics = fold.finish()
    assert arrays is not None and metrics is not None
    return arrays.to_torch_state_dict(), dict(metrics), [vars(f) for f in strategy.failures]


@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("row_weighting", [False, True])
def test_the_streaming_fold_gives_the_whole_round_bits_in_any_arrival_order(
    row_weighting: bool, uniform: bool
) -> None:
    count = len(NODES) - 1
    first = None
    for seed in range(4):
        order = list(range(count))
        random.Random(seed).shuffle(order)
        whole = _run("whole-round", order, row_weighting, uniform)
        folded = _run("streaming", order, row_weighting, uniform)
        assert whole[0].keys() == folded[0].keys()
        for key in whole[0]:
            assert torch.equal(whole[0][key], folded[0][key]), key
        assert whole[1] == folded[1]
        assert whole[2] == folded[2]
        reasons = {f["node_id"]: f["reason"] for f in folded[2]}
        assert sorted(reasons) == [NODES[0], NODES[1], NODES[2], NODES[3], NODES[-1]]
        assert reasons[NODES[-1]] == "no reply before the round timeout"
        assert folded[1]["valid-replies"] == count - 5 and folded[1]["privacy-stopped"] == 1
        if first is None:
            first = folded
            continue
        # Another arrival order: the same model and metrics, the failures in arrival order.
        assert all(torch.equal(first[0][key], folded[0][key]) for key in first[0])
        assert first[1] == folded[1]
        key_of = lambda f: f["node_id"]  # noqa: E731
        assert sorted(first[2], key=key_of) == sorted(folded[2], key=key_of)


def test_the_aggregate_is_the_weighted_mean() -> None:
    strategy, messages = _strategy(False, False)
    strategy.server_optimizer = ServerOptimizer("none")
    replies = _replies(messages, False)
    valid = [
        r for r in replies if not r.has_error() and ARRAYS in r.content and strategy.check_update(r) is None
    ]
    weights = np.array([float(r.content[METRICS][NUM_EXAMPLES]) for r in valid])
    tables = np.stack([r.content[ARRAYS]["bias"].numpy().astype(np.float64) for r in valid])
    expected = (weights[:, None] * tables).sum(axis=0) / weights.sum()
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays["bias"].numpy(), expected, rtol=1e-6)


def test_rules_that_need_the_whole_round_do_not_stream() -> None:
    assert train_fold(SRMStrategy(rule="median"), 1) is None
    assert train_fold(SRMStrategy(rule="trimmed_mean"), 1) is None
    assert train_fold(SRMStrategy(max_example_ratio=3.0), 1) is None
    assert train_fold(SRMStrategy(update_norm_ratio=2.0), 1) is None
    assert train_fold(object(), 1) is None
    assert isinstance(train_fold(SRMStrategy(proximal_mu=0.1, row_weighting=True), 1), TrainFold)


def test_a_reproducible_sum_has_the_same_bits_in_any_order() -> None:
    rng = np.random.default_rng(0)
    terms = [rng.standard_normal((9, 4)) * 10.0 ** rng.integers(-200, 200, size=(9, 4)) for _ in range(30)]
    terms += [np.zeros((9, 4)), -terms[0]]
    totals = []
    for seed in range(5):
        order = list(range(len(terms)))
        random.Random(seed).shuffle(order)
        total = ReproducibleSum((9, 4))
        for index in order:
            total.add(terms[index], 3.0)
        totals.append(total.total(3.0))
    assert all(np.array_equal(totals[0], other) for other in totals[1:])
    plain = np.sum(terms, axis=0)
    np.testing.assert_allclose(totals[0], plain, rtol=1e-12, atol=0)


class ChunkGrid:
    """A grid whose replies become ready in a shuffled order over time; one node never answers."""

    def __init__(self, replies_of: Callable[[list[Message]], list[Message]], silent: int) -> None:
        self.replies_of, self.silent = replies_of, silent
        self.ready: dict[str, Message] = {}
        self.largest_pull = 0
        self.pushed: list[int] = []
        self.unanswered: set[str] = set()
        self.most_unanswered = 0

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        messages = list(messages)
        answered = [m for m in messages if m.metadata.dst_node_id != self.silent]
        replies = self.replies_of(answered)
        random.Random(3).shuffle(replies)
        self.ready.update({r.metadata.reply_to_message_id: r for r in replies})
        self.pushed += [m.metadata.dst_node_id for m in messages]
        self.unanswered |= {m.metadata.message_id for m in messages}
        self.most_unanswered = max(self.most_unanswered, len(self.unanswered))
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, ids: Iterable[str]) -> list[Message]:
        ids = list(ids)
        self.largest_pull = max(self.largest_pull, len(ids))
        ready = [i for i in ids if i in self.ready][:2]  # at most two replies ready per pull
        self.unanswered -= set(ready)
        return [self.ready.pop(i) for i in ready]


def test_streamed_replies_stop_at_the_deadline_and_the_silent_node_fails() -> None:
    strategy, messages = _strategy(True, False)

    def replies_of(answered: list[Message]) -> list[Message]:
        return [
            r
            for r in _replies(messages, True)
            if r.metadata.reply_to_message_id in {m.metadata.message_id for m in answered}
        ]

    grid = ChunkGrid(replies_of, silent=NODES[-1])
    fold = train_fold(strategy, 1)
    assert fold is not None
    start = time.monotonic()
    kept = stream_replies(grid, messages, 0.5, fold.add, chunk=4, interval=0.05)  # type: ignore[arg-type]
    assert 0.5 <= time.monotonic() - start < 5
    assert len(kept) == len(NODES) - 1 and grid.largest_pull <= 4
    arrays, metrics = fold.finish()
    assert arrays is not None
    whole, whole_messages = _strategy(True, False)
    expected, expected_metrics = whole.aggregate_train(1, _replies(whole_messages, True))
    assert expected is not None
    for key in expected:
        assert np.array_equal(arrays[key].numpy(), expected[key].numpy())
    assert dict(metrics) == dict(expected_metrics)
    assert [f.reason for f in strategy.failures if f.node_id == NODES[-1]] == [
        "no reply before the round timeout"
    ]


@pytest.mark.parametrize("window", [1, 3, None])
def test_a_window_keeps_that_many_unanswered_and_the_round_gives_the_same_bits(window: int | None) -> None:
    strategy, messages = _strategy(True, False)

    def replies_of(answered: list[Message]) -> list[Message]:
        ids = {m.metadata.message_id for m in answered}
        return [r for r in _replies(messages, True) if r.metadata.reply_to_message_id in ids]

    # The last node never answers: its instruction holds one place of the window until the deadline.
    grid = ChunkGrid(replies_of, silent=messages[-1].metadata.dst_node_id)
    fold = train_fold(strategy, 1)
    assert fold is not None
    kept = stream_replies(grid, messages, 1.0, fold.add, chunk=4, interval=0.01, window=window)  # type: ignore[arg-type]
    assert grid.most_unanswered == (window or len(NODES))
    assert sorted(grid.pushed) == NODES and len(kept) == len(NODES) - 1
    arrays, metrics = fold.finish()
    whole, whole_messages = _strategy(True, False)
    expected, expected_metrics = whole.aggregate_train(1, _replies(whole_messages, True))
    assert arrays is not None and expected is not None
    for key in expected:
        assert np.array_equal(arrays[key].numpy(), expected[key].numpy())
    assert dict(metrics) == dict(expected_metrics)


def test_instructions_still_unsent_at_the_deadline_are_never_sent() -> None:
    _, messages = _strategy(True, False)
    grid = ChunkGrid(lambda answered: [], silent=-1)  # nobody answers
    start = time.monotonic()
    kept = stream_replies(grid, messages, 0.3, lambda r: r, interval=0.05, window=2)  # type: ignore[arg-type]
    # Two hung nodes fill a window of two: the rest wait, and at the deadline they are nodes that did not
    # answer (a hung node is rare under the simulation runtime, which turns a node's crash into a reply).
    assert kept == [] and 0.3 <= time.monotonic() - start < 3
    assert grid.pushed == [m.metadata.dst_node_id for m in messages[:2]]


def test_a_message_the_grid_refuses_frees_its_place_in_the_window() -> None:
    _, messages = _strategy(True, False)
    refused = {messages[0].metadata.dst_node_id, messages[1].metadata.dst_node_id}

    class RefusingGrid(ChunkGrid):
        # As Flower's grid does with a message it cannot store: no id for it.
        def push_messages(self, batch: Iterable[Message]) -> list[str]:
            batch = list(batch)
            kept = [m for m in batch if m.metadata.dst_node_id not in refused]
            self.pushed += [m.metadata.dst_node_id for m in batch if m not in kept]
            return super().push_messages(kept)

    def replies_of(answered: list[Message]) -> list[Message]:
        ids = {m.metadata.message_id for m in answered}
        return [Message(RecordDict(), reply_to=m) for m in messages if m.metadata.message_id in ids]

    grid = RefusingGrid(replies_of, silent=-1)
    kept = stream_replies(grid, messages, 2.0, lambda r: r, interval=0.01, window=2)  # type: ignore[arg-type]
    assert len(kept) == len(NODES) - 2 and sorted(grid.pushed) == NODES


def test_the_window_is_chosen_for_flowers_simulation_grid_only() -> None:
    from flwr.superlink.grid import InMemoryGrid

    from lsc4rec.server.reply_stream import MIN_WINDOW, dispatch_window
    from lsc4rec.simulations.launch.inprocess import InProcessGrid

    simulation = InMemoryGrid.__new__(InMemoryGrid)  # only its type is read
    assert dispatch_window(simulation, None) >= MIN_WINDOW  # type: ignore[operator]
    assert dispatch_window(InProcessGrid(2, {}), None) is None
    assert dispatch_window(simulation, 0) is None and dispatch_window(InProcessGrid(2, {}), 5) == 5


def test_the_in_process_grid_runs_pushed_messages_when_they_are_pulled() -> None:
    from lsc4rec.simulations.launch.inprocess import InProcessGrid

    class Echo(InProcessGrid):
        def __init__(self, num_nodes: int, run_config: dict) -> None:
            super().__init__(num_nodes, run_config)
            self.ran: list[int] = []

        def _deliver(self, message: Message) -> Message:
            self.ran.append(message.metadata.dst_node_id)
            return Message(RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 1.0})}), reply_to=message)

    grid = Echo(3, {})
    messages = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (1, 2, 3)]
    ids = list(grid.push_messages(messages))
    assert grid.ran == [] and [m.metadata.message_id for m in messages] == ids
    replies = list(grid.pull_messages(ids[1:]))
    assert grid.ran == [2, 3] and [r.metadata.reply_to_message_id for r in replies] == ids[1:]
    assert list(grid.pull_messages(ids)) and list(grid.pull_messages(ids)) == []


def test_the_bins_read_from_the_float_bits_are_frexp_and_ldexp() -> None:
    # The sum reads exponents and builds its rounding constants from the float64 bits (3x faster than
    # np.frexp / np.ldexp per reply); they must be the same numbers wherever the sum uses them.
    from lsc4rec.strategies import exact_sum

    rng = np.random.default_rng(0)
    values = rng.standard_normal(50_000) * 10.0 ** rng.integers(-300, 300, 50_000)
    values = np.concatenate([values, [0.0, -0.0, 1e-310, -5e-324, np.inf, -np.inf, np.nan]])
    normal = (np.abs(values) >= np.finfo(np.float64).tiny) & np.isfinite(values) | (values == 0)
    exponents = exact_sum._frexp_exponent(values)
    np.testing.assert_array_equal(exponents[normal], np.frexp(values)[1][normal])
    # Subnormals fall below every bin, as with frexp's exponent.
    assert (exact_sum._top_bins(values[~normal & np.isfinite(values)]) == exact_sum._LOWEST_TOP).all()
    tops = np.arange(exact_sum._LOWEST_TOP, exact_sum._HIGHEST_TOP + 1)
    for k in range(exact_sum.BINS):
        exponent = exact_sum.BIN_BITS * tops + 52 - exact_sum.BIN_BITS * k
        magic = exact_sum._one_and_a_half_times_two_to(exponent)
        np.testing.assert_array_equal(magic, np.ldexp(1.5, exponent))


def test_the_configured_window_reaches_the_plan_and_a_negative_one_is_refused() -> None:
    from lsc4rec.server.federated_run import round_plan
    from lsc4rec.settings import SettingsError, federated_settings_from_overrides
    from lsc4rec.simulations.launch.inprocess import InProcessGrid

    run = federated_settings_from_overrides(["system=base", "federated.dispatch_window=4"])
    assert round_plan(run, InProcessGrid(2, {})).dispatch_window == 4
    default = federated_settings_from_overrides(["system=base"])
    assert round_plan(default, InProcessGrid(2, {})).dispatch_window is None
    with pytest.raises(SettingsError, match=r"federated\.dispatch_window must be >= 0"):
        federated_settings_from_overrides(["federated.dispatch_window=-1"])
