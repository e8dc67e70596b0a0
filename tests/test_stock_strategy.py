"""A stock Flower strategy in the round loop's seat (``strategy=flower``): it learns, keeps its own state
across a resume, sees only what it can aggregate, and the keys it would ignore are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_inprocess, write_pattern_dataset
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdagrad

from lsc4rec.messages import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, ROW_COUNTS, SERVER_ROUND
from lsc4rec.server.components.checkpoint_files import load_checkpoint
from lsc4rec.settings import SettingsError, federated_settings_from_overrides
from lsc4rec.strategies.stock import StockStrategy, load_strategy_class

FEDAVGM = ("strategy=flower", "strategy.flower_class=flwr.serverapp.strategy.FedAvgM")


@pytest.mark.slow
def test_flower_fedavgm_trains_the_srm_and_checkpoints_its_momentum(tmp_path: Path) -> None:
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=240, num_items=60)
    kwargs = ("+strategy.flower_kwargs.server_momentum=0.3",)
    summary = run_inprocess(data, tmp_path / "run", 3, *FEDAVGM, *kwargs, "federated.rounds=3")
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
    # Random ranking of 60 items gives NDCG@10 about 0.07; the pattern is learnable.
    assert summary["test"]["full"]["NDCG@10"] > 0.3, summary["test"]
    assert rows[-1]["server_valid"]["NDCG@10"] > rows[0]["server_valid"]["NDCG@10"]
    assert all(row["train"]["valid-replies"] == 3 for row in rows)
    # The checkpoint keeps FedAvgM's own state (its momentum and current weights) for a resume.
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["strategy"]["attributes"]
    assert saved["momentum_vector"] is not None and saved["current_arrays"] is not None


def _reply(node: int, value: float, examples: int, extra: bool) -> Message:
    content = RecordDict(
        {
            ARRAYS: ArrayRecord({"w": Array(np.array([value], dtype=np.float32))}),
            METRICS: MetricRecord({NUM_EXAMPLES: examples, "train_loss": 1.0}),
        }
    )
    if extra:
        # What lsc4rec's nodes may add (row counts, SOLID statistics): a Flower strategy refuses more than
        # one ArrayRecord, so it must not see them.
        content[ROW_COUNTS] = ArrayRecord({"w": Array(np.array([1.0], dtype=np.float32))})
    instruction = Message(RecordDict({CONFIG: ConfigRecord()}), dst_node_id=node, message_type="train")
    return Message(content, reply_to=instruction)


def test_the_stock_strategy_sees_arrays_and_metrics_only() -> None:
    from flwr.serverapp.strategy import FedAvg

    stock = StockStrategy(FedAvg())
    arrays, metrics = stock.aggregate_train(1, [_reply(1, 0.0, 1, True), _reply(2, 4.0, 3, False)])
    assert arrays is not None and arrays["w"].numpy().tolist() == [3.0]
    assert metrics["valid-replies"] == 2 and stock.failures == []


def test_each_node_gets_its_own_message_content() -> None:
    class TwoNodes:
        def get_node_ids(self):
            return [1, 2]

    stock = StockStrategy(FedAdagrad(fraction_train=1.0, min_available_nodes=2, min_train_nodes=2))
    arrays = ArrayRecord({"w": Array(np.zeros(1, dtype=np.float32))})
    messages = stock.configure_train(4, arrays, ConfigRecord(), TwoNodes())
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2]
    messages[0].content[CONFIG]["only-node-1"] = 1
    assert "only-node-1" not in messages[1].content[CONFIG]
    assert all(m.content[CONFIG][SERVER_ROUND] == 4 for m in messages)


def test_settings_refuse_what_a_flower_strategy_would_ignore() -> None:
    with pytest.raises(SettingsError, match=r"strategy\.row_weighting=True has no effect"):
        federated_settings_from_overrides([*FEDAVGM, "strategy.row_weighting=true"])
    with pytest.raises(SettingsError, match=r"strategy\.server_optimizer\.name=adam has no effect"):
        federated_settings_from_overrides([*FEDAVGM, "strategy.server_optimizer.name=adam"])
    # Central DP's noise is calibrated to an equally weighted mean, which a Flower strategy does not promise.
    with pytest.raises(SettingsError, match=r"strategy\.flower_class: DP is wired around lsc4rec's own"):
        federated_settings_from_overrides(
            ["system=base", *FEDAVGM, "privacy.mode=central", "privacy.noise_multiplier=1.0"]
        )
    with pytest.raises(ValueError, match=r"is not a flwr\.serverapp\.strategy\.Strategy"):
        load_strategy_class("collections.OrderedDict")
    with pytest.raises(ValueError, match="cannot be imported"):
        load_strategy_class("flwr.serverapp.strategy.NoSuchStrategy")
    with pytest.raises(ValueError, match="do not fit"):
        StockStrategy.from_settings("flwr.serverapp.strategy.FedAvg", {"no_such_argument": 1})


def test_a_flower_strategy_replaces_the_default_jobs_bounded_fedavg() -> None:
    # The whole system's bounds belong to its strategy option (fedavg_bounded): choosing a Flower strategy
    # replaces them, instead of failing on keys the Flower strategy would ignore.
    strategy = federated_settings_from_overrides(["system=whole", *FEDAVGM]).strategy
    assert strategy.flower_class == "flwr.serverapp.strategy.FedAvgM"
    assert (strategy.max_example_ratio, strategy.update_norm_ratio) == (0.0, 0.0)
