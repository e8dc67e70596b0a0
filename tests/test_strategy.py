"""Aggregation rules and the SRM strategy's handling of good, failed and malformed replies."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)

from lsc4rec.strategies import ServerOptimizer, SRMStrategy, aggregate_arrays, count_weighted_rows
from lsc4rec.strategies.srm import capped_example_counts, update_norm_scales


def test_fedavg_is_example_weighted() -> None:
    a = {"w": np.array([0.0, 10.0], dtype=np.float32), "n": np.array([2], dtype=np.int64)}
    b = {"w": np.array([4.0, 2.0], dtype=np.float32), "n": np.array([4], dtype=np.int64)}
    out = aggregate_arrays([a, b], [1, 3], "fedavg")
    np.testing.assert_allclose(out["w"], [3.0, 4.0])
    assert out["w"].dtype == np.float32 and out["n"].tolist() == [4] and out["n"].dtype == np.int64


def test_median_and_trimmed_mean_resist_an_outlier() -> None:
    updates = [{"w": np.array([v], dtype=np.float32)} for v in (1.0, 2.0, 3.0, 4.0, 1000.0)]
    assert aggregate_arrays(updates, [1] * 5, "median")["w"].tolist() == [3.0]
    # trim 20% of 5 -> drop 1 from each end: mean(2, 3, 4) = 3
    assert aggregate_arrays(updates, [1] * 5, "trimmed_mean", trim_fraction=0.2)["w"].tolist() == [3.0]
    assert aggregate_arrays(updates, [1] * 5, "fedavg")["w"][0] == pytest.approx(202.0)


def test_aggregation_errors() -> None:
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        aggregate_arrays([{"w": np.zeros(1)}], [1], "mean")
    with pytest.raises(ValueError, match="no updates"):
        aggregate_arrays([], [], "fedavg")
    with pytest.raises(ValueError, match="positive sum"):
        aggregate_arrays([{"w": np.zeros(1)}], [0], "fedavg")


class ListGrid:
    """Just enough of a Grid for configure_*: a fixed set of node ids."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return self.node_ids


pytestmark = pytest.mark.usefixtures("task_identity")


def reply(message: Message, arrays: ArrayRecord | None, examples: float = 10.0, **metrics: float) -> Message:
    content = RecordDict({"metrics": MetricRecord({"num-examples": examples, **metrics})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content, reply_to=message)


def test_strategy_aggregates_valid_replies_and_reports_each_failure(caplog: pytest.LogCaptureFixture) -> None:
    global_arrays = ArrayRecord(
        {"w": Array(np.zeros(3, dtype=np.float32)), "b": Array(np.zeros(1, dtype=np.float32))}
    )
    strategy = SRMStrategy(min_train_replies=2, seed=0)
    messages = list(
        strategy.configure_train(1, global_arrays, ConfigRecord(), ListGrid([11, 12, 13, 14, 15, 16]))
    )
    assert [m.metadata.dst_node_id for m in messages] == [11, 12, 13, 14, 15, 16]
    assert messages[0].content["config"]["server-round"] == 1
    good = [
        reply(
            messages[0],
            ArrayRecord({"w": Array(np.ones(3, dtype=np.float32)), "b": Array(np.ones(1, dtype=np.float32))}),
            10.0,
            train_loss=2.0,
        ),
        reply(
            messages[1],
            ArrayRecord(
                {"w": Array(np.full(3, 4.0, dtype=np.float32)), "b": Array(np.zeros(1, dtype=np.float32))}
            ),
            30.0,
            train_loss=1.0,
        ),
    ]
    crashed = Message(Error(1, "RuntimeError: boom"), reply_to=messages[2])
    wrong_shape = reply(
        messages[3],
        ArrayRecord({"w": Array(np.ones(4, dtype=np.float32)), "b": Array(np.ones(1, dtype=np.float32))}),
    )
    not_finite = reply(
        messages[4],
        ArrayRecord(
            {"w": Array(np.array([np.nan, 0, 0], dtype=np.float32)), "b": Array(np.ones(1, dtype=np.float32))}
        ),
    )
    # Node 16 never replies (timed out).
    with caplog.at_level("WARNING"):
        arrays, metrics = strategy.aggregate_train(1, [*good, crashed, wrong_shape, not_finite])
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), [3.25, 3.25, 3.25])  # (1*10 + 4*30) / 40
    np.testing.assert_allclose(arrays["b"].numpy(), [0.25])
    assert metrics["valid-replies"] == 2 and metrics["failures"] == 4 and metrics["nodes-sampled"] == 6
    assert metrics["train_loss"] == pytest.approx((2.0 * 10 + 1.0 * 30) / 40)
    assert metrics["bytes-sent"] == global_arrays.count_bytes() * 6 and metrics["bytes-received"] > 0
    reasons = {f.node_id: f.reason for f in strategy.failures}
    assert "RuntimeError: boom" in reasons[13]
    assert "expected float32(3,)" in reasons[14]
    assert "NaN" in reasons[15]
    assert "timeout" in reasons[16]
    assert "node 13 failed" in caplog.text and "node 16 failed" in caplog.text


def test_too_few_valid_replies_keep_the_global_model() -> None:
    global_arrays = ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})
    strategy = SRMStrategy(min_train_replies=2)
    messages = list(strategy.configure_train(3, global_arrays, ConfigRecord(), ListGrid([1, 2])))
    arrays, metrics = strategy.aggregate_train(
        3, [reply(messages[0], ArrayRecord({"w": Array(np.ones(2, dtype=np.float32))}))]
    )
    assert arrays is None and metrics["aggregated"] == 0 and metrics["failures"] == 1


def test_count_weighted_rows_average_only_over_nodes_that_saw_the_row() -> None:
    a = np.array([[1.0, 1.0], [5.0, 5.0], [9.0, 9.0]], dtype=np.float32)
    b = np.array([[3.0, 3.0], [7.0, 7.0], [0.0, 0.0]], dtype=np.float32)
    fallback = np.full((3, 2), -1.0, dtype=np.float32)
    out = count_weighted_rows([a, b], [np.array([1, 0, 0]), np.array([3, 2, 0])], fallback)
    # Row 0: (1*1 + 3*3) / 4; row 1: only b saw it; row 2: nobody did -> the fallback.
    np.testing.assert_allclose(out, [[2.5, 2.5], [7.0, 7.0], [-1.0, -1.0]])
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="do not match"):
        count_weighted_rows([a, b], [np.array([1, 0]), np.array([3, 2])], fallback)


def test_row_weighting_applies_to_tables_with_counts_and_checks_them() -> None:
    strategy = SRMStrategy(row_weighting=True)
    global_arrays = ArrayRecord(
        {"table": Array(np.zeros((2, 1), dtype=np.float32)), "w": Array(np.zeros(1, dtype=np.float32))}
    )
    messages = list(strategy.configure_train(1, global_arrays, ConfigRecord(), ListGrid([1, 2, 3])))

    def with_counts(message: Message, table: list[float], w: float, counts: list[int] | None) -> Message:
        arrays = ArrayRecord(
            {
                "table": Array(np.array(table, dtype=np.float32).reshape(2, 1)),
                "w": Array(np.array([w], dtype=np.float32)),
            }
        )
        out = reply(message, arrays, 10.0)
        if counts is not None:
            out.content["row-counts"] = ArrayRecord({"table": Array(np.array(counts, dtype=np.int64))})
        return out

    replies = [
        with_counts(messages[0], [4.0, 8.0], 1.0, [1, 0]),
        with_counts(messages[1], [0.0, 2.0], 3.0, [0, 1]),
        with_counts(messages[2], [9.0, 9.0], 5.0, [1, 2, 3]),  # counts of the wrong length: refused
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["valid-replies"] == 2
    assert "row counts 'table'" in strategy.failures[0].reason
    # Each row comes from the node that saw it; the dense array keeps FedAvg.
    np.testing.assert_allclose(arrays["table"].numpy().ravel(), [4.0, 2.0])
    np.testing.assert_allclose(arrays["w"].numpy(), [2.0])


def test_server_momentum_steps_from_the_global_weights_sent() -> None:
    strategy = SRMStrategy(server_optimizer=ServerOptimizer("momentum", lr=1.0, momentum=0.5))
    current = np.array([1.0, 1.0], dtype=np.float32)
    for server_round, expected in ((1, [2.0, 0.0]), (2, [3.5, -1.5])):
        arrays = ArrayRecord({"w": Array(current)})
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), ListGrid([1])))
        # The device moves the weights by (+1, -1) each round; momentum 0.5 turns round 2's step into 1.5x.
        update = ArrayRecord({"w": Array(current + np.array([1.0, -1.0], dtype=np.float32))})
        new, _ = strategy.aggregate_train(server_round, [reply(messages[0], update)])
        current = new["w"].numpy()
        np.testing.assert_allclose(current, expected)
    assert "server_optimizer" in strategy.state_dict()


def test_sampling_is_seeded_and_state_round_trips() -> None:
    arrays = ArrayRecord({"w": Array(np.zeros(1, dtype=np.float32))})
    grid = ListGrid(list(range(1, 21)))
    first = SRMStrategy(fraction_train=0.25, seed=5)
    picked = [m.metadata.dst_node_id for m in first.configure_train(1, arrays, ConfigRecord(), grid)]
    assert len(picked) == 5
    state = first.state_dict()
    after = [m.metadata.dst_node_id for m in first.configure_train(2, arrays, ConfigRecord(), grid)]
    second = SRMStrategy(fraction_train=0.25, seed=99)
    second.load_state_dict(state)
    assert [m.metadata.dst_node_id for m in second.configure_train(2, arrays, ConfigRecord(), grid)] == after


def test_fedprox_mu_is_sent_to_clients() -> None:
    arrays = ArrayRecord({"w": Array(np.zeros(1, dtype=np.float32))})
    strategy = SRMStrategy(proximal_mu=0.1)
    message = next(iter(strategy.configure_train(1, arrays, ConfigRecord({"x": 1}), ListGrid([7]))))
    assert message.content["config"]["proximal-mu"] == pytest.approx(0.1)
    assert message.content["config"]["x"] == 1


def test_evaluate_aggregation_is_example_weighted() -> None:
    arrays = ArrayRecord({"w": Array(np.zeros(1, dtype=np.float32))})
    strategy = SRMStrategy()
    messages = list(strategy.configure_evaluate(1, arrays, ConfigRecord(), ListGrid([1, 2])))
    metrics = strategy.aggregate_evaluate(
        1,
        [
            reply(messages[0], None, 1.0, **{"client-NDCG@10": 0.2}),
            reply(messages[1], None, 3.0, **{"client-NDCG@10": 0.6}),
        ],
    )
    assert metrics is not None and metrics["client-NDCG@10"] == pytest.approx(0.5)


@pytest.mark.parametrize("row_weighting", [False, True])
def test_aggregating_many_replies_holds_no_decoded_copy_of_each(row_weighting: bool) -> None:
    # 40 replies of a 4 MB table: the server holds what Flower delivered; aggregating adds a running sum
    # and one decoded reply at a time (a decoded copy per reply would add 160 MB).
    import tracemalloc

    rows, dim, nodes = 8192, 128, 40
    strategy = SRMStrategy(row_weighting=row_weighting)
    global_arrays = ArrayRecord({"table": Array(np.zeros((rows, dim), dtype=np.float32))})
    messages = list(strategy.configure_train(1, global_arrays, ConfigRecord(), ListGrid(list(range(nodes)))))
    replies = []
    for index, message in enumerate(messages):
        out = reply(message, ArrayRecord({"table": Array(np.full((rows, dim), index, dtype=np.float32))}))
        if row_weighting:
            out.content["row-counts"] = ArrayRecord({"table": Array(np.ones(rows, dtype=np.int64))})
        replies.append(out)
    tracemalloc.start()
    try:
        arrays, _ = strategy.aggregate_train(1, replies)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert arrays is not None
    np.testing.assert_allclose(arrays["table"].numpy(), (nodes - 1) / 2, rtol=1e-6)
    table_mb = rows * dim * 4 / 2**20
    # The running sum is order-independent (lsc4rec.strategies.exact_sum): three float64 bins per element.
    assert peak / 2**20 < 12 * table_mb, f"aggregation peaked at {peak / 2**20:.0f} MiB"


def _sent_through_a_grid(messages: list[Message]) -> None:
    """Give each message the id a grid gives it when it sends it (its content digest)."""
    for message in messages:
        message.metadata.__dict__["_message_id"] = message.object_id


def test_a_node_the_superlink_reports_offline_is_the_one_recorded_once() -> None:
    from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

    global_arrays = ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})
    strategy = SRMStrategy(seed=0)
    messages = list(strategy.configure_train(1, global_arrays, ConfigRecord(), ListGrid([21, 22, 23])))
    _sent_through_a_grid(messages)
    update = ArrayRecord({"w": Array(np.ones(2, dtype=np.float32))})
    # Node 22 stopped sending heartbeats: the SuperLink answers for it, with its own id as the sender.
    offline = create_message_error_unavailable_res_message(messages[1].metadata, "node_unavail")
    assert offline.metadata.src_node_id != 22
    _, metrics = strategy.aggregate_train(
        1, [reply(messages[0], update), offline, reply(messages[2], update)]
    )
    assert metrics["valid-replies"] == 2 and metrics["failures"] == 1
    assert [(f.node_id, f.stage) for f in strategy.failures] == [(22, "train")]
    assert "heartbeat" in strategy.failures[0].reason or "unavailable" in strategy.failures[0].reason.lower()


def test_the_aggregate_does_not_depend_on_the_order_replies_arrive_in() -> None:
    global_arrays = ArrayRecord({"w": Array(np.zeros(1000, dtype=np.float32))})
    results = []
    for order in ([0, 1, 2, 3, 4], [4, 2, 0, 3, 1], [3, 4, 1, 0, 2]):
        strategy = SRMStrategy(seed=0)
        messages = list(strategy.configure_train(1, global_arrays, ConfigRecord(), ListGrid([1, 2, 3, 4, 5])))
        values = np.random.default_rng(3).standard_normal((5, 1000)).astype(np.float32) * 1e3
        # Metrics such as seconds differ from run to run; the order must not follow them.
        replies = [
            reply(m, ArrayRecord({"w": Array(v)}), 10.0 + i, **{"train-seconds": float(order[i])})
            for i, (m, v) in enumerate(zip(messages, values, strict=True))
        ]
        arrays, _ = strategy.aggregate_train(1, [replies[i] for i in order])
        assert arrays is not None
        results.append(arrays["w"].numpy())
    # Bit for bit: float sums in a different order would differ in the last bits.
    assert all(np.array_equal(results[0], other) for other in results[1:])


def test_evaluation_metrics_do_not_depend_on_the_order_replies_arrive_in() -> None:
    arrays = ArrayRecord({"w": Array(np.zeros(1, dtype=np.float32))})
    values = np.random.default_rng(5).random(6)
    results = set()
    for order in ([0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 4, 2], [2, 0, 5, 4, 1, 3]):
        strategy = SRMStrategy()
        messages = list(strategy.configure_evaluate(1, arrays, ConfigRecord(), ListGrid([1, 2, 3, 4, 5, 6])))
        # Seconds differ from run to run (here: with the arrival order); the mean must not follow them.
        replies = [
            reply(m, None, 7.0 + i, **{"client-NDCG@10": float(v), "evaluate-seconds": float(order[i])})
            for i, (m, v) in enumerate(zip(messages, values, strict=True))
        ]
        metrics = strategy.aggregate_evaluate(1, [replies[i] for i in order])
        assert metrics is not None
        results.add(metrics["client-NDCG@10"])
    # One value, bit for bit: summed in arrival order, these orders give means differing in the last bits.
    assert len(results) == 1


def test_a_metric_some_nodes_do_not_report_is_averaged_over_those_that_do() -> None:
    global_arrays = ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})
    strategy = SRMStrategy(seed=0)
    messages = list(strategy.configure_train(1, global_arrays, ConfigRecord(), ListGrid([1, 2, 3])))
    update = ArrayRecord({"w": Array(np.ones(2, dtype=np.float32))})
    replies = [
        reply(messages[0], update, 10.0, **{"rerank-loss": 2.0}),
        reply(messages[1], update, 30.0, **{"rerank-loss": 4.0}),
        reply(messages[2], update, 60.0, **{"rerank-skipped": 1.0}),  # the cloud was unreachable
    ]
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["rerank-loss"] == pytest.approx((2.0 * 10 + 4.0 * 30) / 40)
    assert metrics["rerank-skipped"] == pytest.approx(1.0) and metrics["num-examples"] == 100.0


def _probe(strategy: SRMStrategy, hostile: str) -> np.ndarray:
    """Ten nodes, nine honest updates near 0, one hostile; the aggregate of the round."""
    size = 1000
    global_arrays = ArrayRecord({"w": Array(np.zeros(size, dtype=np.float32))})
    messages = list(strategy.configure_train(1, global_arrays, ConfigRecord(), ListGrid(list(range(1, 11)))))
    generator = np.random.default_rng(0)
    honest = [generator.normal(0, 0.01, size).astype(np.float32) for _ in range(9)]
    replies = [
        reply(m, ArrayRecord({"w": Array(u)}), examples=100.0)
        for m, u in zip(messages[:9], honest, strict=True)
    ]
    bad, examples = generator.normal(0, 0.01, size).astype(np.float32), 100.0
    if hostile == "claims 1e9 examples":
        bad, examples = np.full(size, 1.0, dtype=np.float32), 1e9
    elif hostile == "update x 1e6":
        bad = bad * 1e6
    elif hostile == "sign flipped x 10":
        bad = -10 * np.mean(honest, axis=0)
    replies.append(reply(messages[9], ArrayRecord({"w": Array(bad)}), examples=examples))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return arrays["w"].numpy()


@pytest.mark.parametrize("hostile", ["claims 1e9 examples", "update x 1e6"])
def test_plain_fedavg_is_taken_over_by_one_hostile_node(hostile: str) -> None:
    # What the bounds are for: with FedAvg as it was, one node makes the aggregate its own.
    aggregate = _probe(SRMStrategy(seed=0), hostile)
    assert np.abs(aggregate).mean() > 0.5


@pytest.mark.parametrize("hostile", ["claims 1e9 examples", "update x 1e6", "sign flipped x 10", "none"])
def test_bounded_fedavg_holds_against_one_hostile_node(hostile: str) -> None:
    strategy = SRMStrategy(seed=0, max_example_ratio=10.0, update_norm_ratio=3.0)
    aggregate = _probe(strategy, hostile)
    # Nine honest updates of spread 0.01 average to about 0.003 per coordinate; one bounded node adds at most
    # three median norms over ten nodes (about 0.01 per coordinate).
    assert np.abs(aggregate).mean() < 0.02, np.abs(aggregate).mean()
    clean = _probe(SRMStrategy(seed=0, max_example_ratio=10.0, update_norm_ratio=3.0), "none")
    assert np.linalg.norm(aggregate - clean) < 3 * 3 * np.linalg.norm(clean) + 1e-6


def test_the_bounds_change_nothing_among_honest_nodes() -> None:
    plain = _probe(SRMStrategy(seed=0), "none")
    bounded = _probe(SRMStrategy(seed=0, max_example_ratio=10.0, update_norm_ratio=3.0), "none")
    np.testing.assert_array_equal(plain, bounded)


def test_bound_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"strategy\.update_norm_ratio must be 0 \(off\) or >= 1"):
        SRMStrategy(update_norm_ratio=0.5)
    assert capped_example_counts([100, 120, 1e9], 10.0) == [100, 120, 1200.0]
    assert update_norm_scales([1.0, 1.0, 100.0], 3.0) == [1.0, 1.0, 0.03]


def test_with_two_nodes_the_bounds_hold_the_inflated_one_at_the_honest_ones_reference() -> None:
    # The plain median of two is their mean: an inflated claim or norm would raise its own bound halfway.
    assert capped_example_counts([5_000, 1e9], 3.0) == [5_000, 15_000.0]
    assert capped_example_counts([1e9, 5_000], 3.0) == [15_000.0, 5_000]
    assert update_norm_scales([1.0, 1e6], 3.0) == [1.0, pytest.approx(3e-6)]
    # Two honest nodes within the ratio of each other are left alone; odd counts keep the median.
    assert capped_example_counts([11_181, 11_182], 3.0) == [11_181, 11_182]
    assert update_norm_scales([1.0, 2.5], 3.0) == [1.0, 1.0]
    scales = update_norm_scales([1.0, 2.0, 40.0, 50.0], 3.0)
    assert scales == [1.0, 1.0, pytest.approx(0.15), pytest.approx(0.12)]
