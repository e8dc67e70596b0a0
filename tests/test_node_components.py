"""The node side of the run's components: one registry under the server's names, and the train and evaluate
handlers calling each active component's hooks (a component defined here is plugged in for one run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import pattern_overrides, run_inprocess, write_pattern_dataset
from flwr.app import RecordDict

from lsc4rec.client import node_registry
from lsc4rec.client.node_component import NodeComponent, NodeStep
from lsc4rec.config import config_from_run_config
from lsc4rec.messages import METRICS, NUM_EXAMPLES, TRAIN_LOSS
from lsc4rec.server.components.checkpoint_files import load_checkpoint
from lsc4rec.server.components.registry import COMPONENTS
from lsc4rec.settings import federated_settings_from_run_config, model_config
from lsc4rec.training import TrainSettings, build_model_from_config

NUM_ITEMS = 40


def test_every_node_component_is_named_as_a_server_component() -> None:
    server = {component.name for component in COMPONENTS}
    names = [component.name for component in node_registry.NODE_COMPONENTS]
    assert len(set(names)) == len(names) and set(names) <= server, (names, sorted(server))


def test_a_run_uses_only_the_components_its_settings_turn_on(tmp_path: Path) -> None:
    data = write_pattern_dataset(tmp_path / "p.txt", num_users=20, num_items=NUM_ITEMS)
    base = federated_settings_from_run_config({"overrides": pattern_overrides(data)})
    # Without the cloud or local DP, the node has only the always-on ones (their hooks check what came).
    assert [c.name for c in node_registry.active_node_components(base)] == ["item_text", "codebook"]
    private = federated_settings_from_run_config(
        {"overrides": pattern_overrides(data, "privacy.mode=local", "privacy.noise_multiplier=1.3")}
    )
    assert "privacy" in [c.name for c in node_registry.active_node_components(private)]


class Recording(NodeComponent):
    """Counts every hook and answers the round's local epochs itself without training (``skip``)."""

    name = "recording"

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.calls: list[tuple[str, bool, int | None]] = []

    def prepare(self, step: NodeStep) -> None:
        self.calls.append(("prepare", step.training, step.server_round))

    def before_update(self, step: NodeStep, settings: TrainSettings) -> dict[str, float]:
        self.calls.append(("before_update", step.training, step.server_round))
        return {"recording-before": 1.0}

    def local_update(self, step: NodeStep, settings: TrainSettings, mu: float) -> dict[str, float] | None:
        self.calls.append(("local_update", step.training, step.server_round))
        if not self.skip:
            return None
        return {NUM_EXAMPLES: float(step.shard.num_devices), TRAIN_LOSS: 0.0}

    def reply(self, step: NodeStep, content: RecordDict) -> None:
        self.calls.append(("reply", step.training, step.server_round))
        content[METRICS]["recording-reply"] = 2.0


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return write_pattern_dataset(tmp_path / "pattern.txt", num_users=80, num_items=NUM_ITEMS)


def _plug(monkeypatch: pytest.MonkeyPatch, component: NodeComponent) -> None:
    monkeypatch.setattr(node_registry, "NODE_COMPONENTS", (*node_registry.NODE_COMPONENTS, component))


@pytest.mark.slow
def test_the_handlers_call_each_hook_and_the_reply_carries_what_it_adds(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recording = Recording(skip=False)
    _plug(monkeypatch, recording)
    run_inprocess(data, tmp_path / "run", 2, "federated.rounds=2")
    # Per node and round: prepare, the pass before the update, the update, the reply; then the round's
    # evaluation (prepare, reply).
    train = [c for c in recording.calls if c[1]]
    assert [name for name, _, _ in train[:4]] == ["prepare", "before_update", "local_update", "reply"]
    assert sorted({r for _, _, r in train}) == [1, 2] and len(train) == 2 * 2 * 4
    evaluate = [c for c in recording.calls if not c[1]]
    assert {name for name, _, _ in evaluate} == {"prepare", "reply"}
    assert sorted({r for _, _, r in evaluate}) == [1, 2] and len(evaluate) == 2 * 2 * 2
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
    assert all(
        row["train"]["recording-before"] == 1.0 and row["train"]["recording-reply"] == 2.0 for row in rows
    )


@pytest.mark.slow
def test_a_component_that_runs_the_local_epochs_replaces_the_standard_update(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plug(monkeypatch, Recording(skip=True))
    run_inprocess(data, tmp_path / "run", 2, "federated.rounds=1")
    # No node trained: the average of two unchanged copies is the initial model, bit for bit.
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    torch.manual_seed(42)
    cfg = config_from_run_config({"overrides": pattern_overrides(data)})
    initial = build_model_from_config(model_config(cfg.model), NUM_ITEMS, 10).state_dict()
    assert all(torch.equal(torch.as_tensor(state["arrays"][k]), initial[k]) for k in initial)
