"""The round loop and its extension interface: hook order, what an extension may change, the simple
extensions on their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import pattern_overrides, write_pattern_dataset
from flwr.app import ArrayRecord

from lsc4rec.data import leave_one_out, load_dataset
from lsc4rec.server.components import LoopExtension, LoopState, PrivacyAccounting, ProgressFile
from lsc4rec.server.federated_run import round_plan
from lsc4rec.server.loop import run_rounds
from lsc4rec.server.strategy_config import build_strategy
from lsc4rec.settings import federated_settings_from_run_config
from lsc4rec.simulations.launch.inprocess import InProcessGrid
from lsc4rec.training import build_eval_sets, build_model_from_config


class Recorder(LoopExtension):
    """Records every hook call; zeroes the global model it sends in ``zero_round``."""

    name = "recorder"

    def __init__(self, zero_round: int = 0) -> None:
        self.calls: list[str] = []
        self.zero_round = zero_round
        self.snapshots = 0

    def restore(self, state: LoopState) -> None:
        self.calls.append("restore")

    def start(self, state: LoopState) -> None:
        self.calls.append(f"start@{state.next_round}")

    def outgoing(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        self.calls.append(f"outgoing@{server_round}")
        if server_round != self.zero_round:
            return arrays
        return ArrayRecord({k: torch.zeros_like(v) for k, v in arrays.to_torch_state_dict().items()})

    def attach(self, messages, phase: str) -> None:
        self.calls.append(f"attach-{phase}:{len(messages)}")

    def after_train(self, server_round, replies, arrays) -> None:
        self.calls.append(f"after_train:{len(replies)}:{arrays is not None}")

    def evaluate_config(self) -> dict:
        return {"recorder-flag": 7}

    def after_evaluate(self, replies) -> None:
        self.calls.append(f"after_evaluate:{len(replies)}")

    def before_server_eval(self, model, snapshot=None) -> None:
        self.calls.append("before_server_eval")

    def snapshot(self) -> int:
        self.snapshots += 1
        return self.snapshots

    def round_row(self) -> dict:
        return {"calls": len(self.calls)}

    def round_end(self, server_round, state, extensions) -> None:
        self.calls.append(f"round_end@{server_round}:{len(state.history)}")

    def commit(self, server_round, state, extensions) -> None:
        self.calls.append(f"commit@{server_round}")


@pytest.fixture()
def loop_parts(tmp_path: Path):
    """A factory of fresh loop inputs (grid, strategy, initial model, validation set, plan): 2 rounds on 2
    in-process nodes, the server evaluating every 2nd round."""
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=60, num_items=60)
    run_config = {
        "overrides": pattern_overrides(data, "federated.rounds=2", "federated.server_eval_every=2"),
        "output-dir": str(tmp_path),
    }
    run = federated_settings_from_run_config(run_config)
    split = leave_one_out(load_dataset("pattern", data))

    def make():
        torch.manual_seed(0)
        model = build_model_from_config(run.model, split.num_items, run.data.max_len)
        valid, _ = build_eval_sets(split, run.eval, run.data.max_len)
        return InProcessGrid(2, run_config), build_strategy(run), model, valid, round_plan(run)

    return make


def test_hooks_run_in_order_and_rows_carry_the_extension_section(loop_parts) -> None:
    recorder = Recorder()
    state = run_rounds(*loop_parts(), [recorder])
    assert recorder.calls == [
        "restore",
        "start@1",
        "outgoing@1",
        "attach-train:2",
        "after_train:2:True",
        "attach-evaluate:2",
        "after_evaluate:2",
        "round_end@1:1",
        "commit@1",
        "outgoing@2",
        "attach-train:2",
        "after_train:2:True",
        "attach-evaluate:2",
        "after_evaluate:2",
        "before_server_eval",  # the server evaluates every 2nd round only
        "round_end@2:2",
        "commit@2",
    ]
    assert [row["recorder"]["calls"] for row in state.history] == [7, 15]
    assert "server_valid" not in state.history[0] and "server_valid" in state.history[1]
    assert state.best.round == 2 and state.best.snapshots == {"recorder": 1}


@pytest.mark.slow
def test_what_an_extension_sends_is_what_the_nodes_train_from(loop_parts) -> None:
    plain = run_rounds(*loop_parts(), [Recorder()]).arrays.to_torch_state_dict()
    again = run_rounds(*loop_parts(), [Recorder()]).arrays.to_torch_state_dict()
    zeroed = run_rounds(*loop_parts(), [Recorder(zero_round=1)]).arrays.to_torch_state_dict()
    assert all(torch.equal(plain[k], again[k]) for k in plain), "the loop is deterministic"
    assert any(not torch.equal(plain[k], zeroed[k]) for k in plain)


def test_progress_file_and_privacy_summary(tmp_path: Path) -> None:
    state = LoopState.initial(torch.nn.Linear(2, 1))  # type: ignore[arg-type]
    state.history = [{"round": 1, "train": {"epsilon": 1.5, "delta": 1e-3, "noise-multiplier": 0.8}}]
    ProgressFile(tmp_path / "metrics.json", {"seed": 1}).round_end(1, state, [])
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == {"status": "running", "config": {"seed": 1}, "rounds": state.history}
    summary = PrivacyAccounting("central", 1.0).summary([*state.history, {"round": 2, "train": {}}])
    assert summary == {
        "mode": "central",
        "clipping_norm": 1.0,
        "epsilon": 1.5,
        "delta": 1e-3,
        "noise_multiplier": 0.8,
    }


class Counter(LoopExtension):
    """An extension with state: how many rounds it has seen (restored on resume)."""

    name = "counter"

    def __init__(self) -> None:
        self.rounds = 0

    def start(self, state: LoopState) -> None:
        if state.restored is not None:
            self.rounds = state.restored["extensions"][self.name]["rounds"]

    def round_end(self, server_round, state, extensions) -> None:
        self.rounds += 1

    def state_dict(self) -> dict:
        return {"rounds": self.rounds}

    def snapshot(self) -> str:
        return f"after {self.rounds} rounds"


def test_checkpoints_restore_the_loop_and_every_extension(tmp_path: Path) -> None:
    from lsc4rec.models.srm import build_srm
    from lsc4rec.server.components import Best, Checkpoints
    from lsc4rec.strategies import SRMStrategy

    model = build_srm("sasrec", 20, hidden_size=8, max_len=5)
    strategy = SRMStrategy(seed=3)
    counter, path = Counter(), tmp_path / "checkpoint.pt"
    saver = Checkpoints(path, strategy, model.state_dict(), save=True)
    state = LoopState.initial(model)
    counter.round_end(1, state, [])
    state.history.append({"round": 1, "train": {}})
    state.best = Best(1, 0.25, state.best.arrays, {"counter": counter.snapshot()})
    saver.commit(1, state, [saver, counter])

    resumed_counter = Counter()
    resumed = LoopState.initial(build_srm("sasrec", 20, hidden_size=8, max_len=5))
    Checkpoints(path, SRMStrategy(seed=3), model.state_dict(), resume=True).restore(resumed)
    resumed_counter.start(resumed)
    assert resumed.next_round == 2 and resumed.history == [{"round": 1, "train": {}}]
    assert resumed.best.round == 1 and resumed.best.snapshots == {"counter": "after 1 rounds"}
    assert resumed_counter.rounds == 1
    saved, restored = state.arrays.to_torch_state_dict(), resumed.arrays.to_torch_state_dict()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    # Without resume the checkpoint is left alone and the loop starts at round 1.
    fresh = LoopState.initial(model)
    Checkpoints(path, strategy, model.state_dict(), save=False).restore(fresh)
    assert fresh.next_round == 1 and fresh.restored is None


def test_a_checkpoint_holds_what_every_extension_recorded_of_its_round(loop_parts, tmp_path: Path) -> None:
    # The checkpoint stands first among the extensions, the counter records its round after it: the saved
    # state must still hold the counter's last round (saving in round_end, in list order, lost it).
    from lsc4rec.server.components import Checkpoints
    from lsc4rec.server.components.checkpoint_files import load_checkpoint

    grid, strategy, model, valid, plan = loop_parts()
    path = tmp_path / "ordered" / "checkpoint.pt"
    path.parent.mkdir()
    counter = Counter()
    state = run_rounds(
        grid, strategy, model, valid, plan, [Checkpoints(path, strategy, model.state_dict()), counter]
    )
    saved = load_checkpoint(path)
    assert counter.rounds == len(state.history) == 2
    assert saved["extensions"]["counter"] == {"rounds": 2} and saved["round"] == 2
