"""Tracked runs: TensorBoard event files written and read back, live per-epoch and per-round logging from the
entry points, the ``tracking.*`` switches, and MLflow / W&B through fake modules (neither is installed)."""

from __future__ import annotations

import json
import logging
import sys
import types
from collections import namedtuple
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from conftest import pattern_overrides, run_inprocess, write_pattern_dataset
from flwr.app import ArrayRecord
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from lsc4rec.config import compose_config
from lsc4rec.data import leave_one_out, load_dataset
from lsc4rec.server.components import LoopExtension, RoundTracking
from lsc4rec.server.federated_run import round_plan
from lsc4rec.server.loop import run_rounds
from lsc4rec.server.strategy_config import build_strategy
from lsc4rec.settings import (
    CENTRALIZED_IGNORES,
    CentralizedSettings,
    SettingsError,
    federated_settings_from_overrides,
    federated_settings_from_run_config,
    typed_run,
)
from lsc4rec.simulations.centralized import run_centralized
from lsc4rec.simulations.launch.inprocess import InProcessGrid
from lsc4rec.tracking import (
    TENSORBOARD_DIR,
    RunTracker,
    TrackingSettings,
    active_backends,
    flat_config,
    flat_scalars,
    summary_markdown,
)
from lsc4rec.training import build_eval_sets, build_model_from_config

TENSORBOARD_ONLY = TrackingSettings(tensorboard=True, mlflow=False, wandb=False)
CONFIG = {"seed": 7, "train": {"lr": 0.001, "epochs": 3}, "eval": {"ks": [5, 10]}, "data": {"path": None}}


def events(folder: Path) -> EventAccumulator:
    """Every event under ``folder/tensorboard`` (no sampling), loaded."""
    accumulator = EventAccumulator(str(folder / TENSORBOARD_DIR), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every event of ``tag``."""
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def text(accumulator: EventAccumulator, tag: str) -> str:
    """The text logged under ``tag`` (add_text stores it as a string tensor)."""
    return accumulator.Tensors(f"{tag}/text_summary")[0].tensor_proto.string_val[0].decode()


@pytest.fixture()
def no_third_party(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow and W&B neither importable nor keyed, whatever this machine has installed."""
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    for name in ("MLFLOW_TRACKING_URI", "WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)


# ----------------------------------------------------------------------------------- settings, backends
def test_tracking_keys_are_typed_and_bad_values_name_the_key() -> None:
    run = typed_run(compose_config([]), CentralizedSettings, CENTRALIZED_IGNORES)
    assert run.tracking == TrackingSettings(tensorboard=True, mlflow="auto", wandb="auto")
    off = typed_run(
        compose_config(["tracking.tensorboard=false", "tracking.mlflow=false"]),
        CentralizedSettings,
        CENTRALIZED_IGNORES,
    )
    assert off.tracking == TrackingSettings(tensorboard=False, mlflow=False, wandb="auto")
    assert federated_settings_from_overrides(["system=base"]).tracking == run.tracking
    for override, message in (
        ("tracking.mlflow=yes", r"tracking\.mlflow must be auto, true or false, got 'yes'"),
        ("tracking.wandb=on", r"tracking\.wandb must be auto, true or false, got 'on'"),
        ("tracking.tensorboard=auto", r"tracking\.tensorboard must be true or false, got 'auto'"),
    ):
        with pytest.raises(SettingsError, match=message):
            typed_run(compose_config([override]), CentralizedSettings, CENTRALIZED_IGNORES)


def test_which_backends_a_run_logs_to(no_third_party: None, monkeypatch: pytest.MonkeyPatch) -> None:
    keyed = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "WANDB_MODE": "offline"}
    # Not installed: auto is off, true is refused naming the key and the package.
    assert active_backends(TrackingSettings(), keyed) == ("tensorboard",)
    with pytest.raises(ValueError, match=r"tracking\.mlflow=true but the mlflow package is not installed"):
        active_backends(TrackingSettings(mlflow=True), keyed)
    monkeypatch.setitem(sys.modules, "mlflow", types.ModuleType("mlflow"))
    monkeypatch.setitem(sys.modules, "wandb", types.ModuleType("wandb"))
    # Installed: auto follows the key; true without it is refused; false is off whatever is there.
    assert active_backends(TrackingSettings(), keyed) == ("tensorboard", "mlflow", "wandb")
    assert active_backends(TrackingSettings(), {}) == ("tensorboard",)
    assert active_backends(TrackingSettings(), {"WANDB_API_KEY": "k"}) == ("tensorboard", "wandb")
    assert active_backends(TrackingSettings(wandb=True), {"WANDB_MODE": "online", "WANDB_API_KEY": "k"}) == (
        "tensorboard",
        "wandb",
    )
    with pytest.raises(ValueError, match=r"tracking\.wandb=true but WANDB_API_KEY \(or WANDB_MODE=offline\)"):
        active_backends(TrackingSettings(wandb=True), {"WANDB_MODE": "online"})
    with pytest.raises(ValueError, match=r"tracking\.mlflow=true but MLFLOW_TRACKING_URI is not set"):
        active_backends(TrackingSettings(mlflow=True), {})
    off = TrackingSettings(tensorboard=False, mlflow=False, wandb=False)
    assert active_backends(off, keyed) == ()


def test_flattening_keeps_numbers_labelled_rows_and_config_leaves() -> None:
    summary = {
        "test": {"full": {"NDCG@10": np.float32(0.25), "HR@10": 1}},
        "done": True,
        "model": "sasrec",
        "history": [1.0, 2.0],
        "final_table": [{"setting": "device alone", "NDCG@10": 0.1}, {"setting": "cloud", "NDCG@10": None}],
    }
    assert flat_scalars(summary, "final") == {
        "final/test/full/NDCG@10": 0.25,
        "final/test/full/HR@10": 1.0,
        "final/final_table/device alone/NDCG@10": pytest.approx(0.1),
    }
    assert flat_config(CONFIG) == {
        "seed": 7,
        "train.lr": 0.001,
        "train.epochs": 3,
        "eval.ks": "[5, 10]",
        "data.path": "null",
    }
    markdown = summary_markdown(summary)
    assert "| setting | NDCG@10 |\n| --- | --- |\n| device alone | 0.1 |\n| cloud | None |" in markdown
    assert "| test/full/NDCG@10 | 0.25 |" in markdown and "| model | sasrec |" in markdown
    assert "history" not in markdown


# --------------------------------------------------------------------------------------- TensorBoard
def test_event_files_hold_config_scalars_and_final_table(tmp_path: Path, no_third_party: None) -> None:
    tracker = RunTracker(tmp_path, TrackingSettings(), CONFIG)
    assert tracker.backends == ("tensorboard",)
    # Nothing is written before the first log: a run refused for its input leaves no tracker files.
    assert not (tmp_path / TENSORBOARD_DIR).exists()
    for epoch, loss in ((1, 2.5), (2, 1.5)):
        tracker.log_epoch({"epoch": epoch, "train_loss": loss, "valid": {"full": {"NDCG@10": epoch / 10}}})
    tracker.log_round({"round": 3, "train": {"train_loss": 0.75, "ok": True}, "failed_nodes": [{"id": 1}]})
    tracker.log_history("refit", [{"epoch": 1, "train_loss": 4.0}, {"epoch": 2, "train_loss": 3.0}], "epoch")
    tracker.finish({"test": {"full": {"NDCG@10": 0.5}}, "dataset": "pattern"})
    tracker.log_epoch({"epoch": 9, "train_loss": 0.0})  # after finish: ignored, no error

    logged = events(tmp_path)
    assert sorted(logged.Tags()["scalars"]) == [
        "epoch/train_loss",
        "epoch/valid/full/NDCG@10",
        "final/test/full/NDCG@10",
        "refit/train_loss",
        "round/train/train_loss",
    ]
    assert scalars(logged, "epoch/train_loss") == [(1, 2.5), (2, 1.5)]
    assert scalars(logged, "epoch/valid/full/NDCG@10") == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2))]
    assert scalars(logged, "round/train/train_loss") == [(3, 0.75)]
    assert scalars(logged, "refit/train_loss") == [(1, 4.0), (2, 3.0)]
    assert scalars(logged, "final/test/full/NDCG@10") == [(0, 0.5)]
    assert "    train:\n      lr: 0.001\n" in text(logged, "config")
    assert "| test/full/NDCG@10 | 0.5 |" in text(logged, "final_table")
    assert "| dataset | pattern |" in text(logged, "final_table")
    # The config as hparams, against the final numbers (TensorBoard's HParams view).
    content = logged.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["train.lr"].number_value == 0.001
    assert start.session_start_info.hparams["eval.ks"].string_value == "[5, 10]"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [info.name.tag for info in experiment.metric_infos] == ["final/test/full/NDCG@10"]


def test_switched_off_the_tracker_writes_nothing(tmp_path: Path) -> None:
    tracker = RunTracker(tmp_path, TrackingSettings(tensorboard=False, mlflow=False, wandb=False), CONFIG)
    tracker.log_epoch({"epoch": 1, "train_loss": 1.0})
    tracker.finish({"test": 1.0})
    assert tracker.backends == () and list(tmp_path.iterdir()) == []


def test_a_tracker_closed_by_a_failure_keeps_what_it_logged(tmp_path: Path, no_third_party: None) -> None:
    with pytest.raises(RuntimeError, match="the run broke"), RunTracker(tmp_path, TENSORBOARD_ONLY, {}) as t:
        t.log_epoch({"epoch": 1, "train_loss": 1.0})
        raise RuntimeError("the run broke")
    logged = events(tmp_path)
    assert scalars(logged, "epoch/train_loss") == [(1, 1.0)]
    assert "final_table/text_summary" not in logged.Tags()["tensors"]


# ------------------------------------------------------------------------------------- entry points
PATTERN_CENTRALIZED = (
    "data.name=pattern",
    "data.max_len=8",
    "train.epochs=3",
    "train.patience=10",
    "train.batch_size=64",
    "train.progress=false",
    "model.hidden_size=16",
    "eval.sampled_negatives=10",
)


def test_the_centralized_run_logs_every_epoch(tmp_path: Path, no_third_party: None) -> None:
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=60, num_items=30)
    out = tmp_path / "run"
    summary = run_centralized(compose_config([f"data.path={data}", *PATTERN_CENTRALIZED]), out)
    metrics = json.loads((out / "metrics.json").read_text())
    logged = events(out)
    # One point per epoch, at the epoch's number, holding what metrics.json holds (float32 in the file).
    assert scalars(logged, "epoch/train_loss") == [
        (row["epoch"], pytest.approx(row["train_loss"], rel=1e-6)) for row in metrics["epochs"]
    ]
    assert [step for step, _ in scalars(logged, "epoch/train_loss")] == [1, 2, 3]
    assert scalars(logged, "epoch/valid/full/NDCG@10") == [
        (row["epoch"], pytest.approx(row["valid"]["full"]["NDCG@10"], rel=1e-6)) for row in metrics["epochs"]
    ]
    final = summary["test"]["full"]["NDCG@10"]
    assert scalars(logged, "final/test/full/NDCG@10") == [(0, pytest.approx(final, rel=1e-6))]
    assert scalars(logged, "final/best_epoch") == [(0, summary["best_epoch"])]
    assert f"    run_name: {metrics['config']['run_name']}\n" in text(logged, "config")
    assert "| model | sasrec |" in text(logged, "final_table")


def test_the_centralized_run_honours_the_switch(tmp_path: Path, no_third_party: None) -> None:
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=40, num_items=30)
    overrides = [f"data.path={data}", *PATTERN_CENTRALIZED, "train.epochs=1"]
    run_centralized(compose_config([*overrides, "tracking.tensorboard=false"]), tmp_path / "off")
    assert (tmp_path / "off" / "metrics.json").is_file() and not (tmp_path / "off" / TENSORBOARD_DIR).exists()
    # A tracker the user requires but this machine lacks is refused before any work.
    with pytest.raises(ValueError, match=r"tracking\.mlflow=true but the mlflow package is not installed"):
        run_centralized(compose_config([*overrides, "tracking.mlflow=true"]), tmp_path / "refused")
    assert not (tmp_path / "refused" / "metrics.json").exists()


class Peek(LoopExtension):
    """At the start of every round, reads which rounds the event file already holds (what a watching
    ``tensorboard`` would show)."""

    name = "peek"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: dict[int, list[int]] = {}

    def outgoing(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        folder = self.folder / TENSORBOARD_DIR
        steps = [s for s, _ in scalars(events(self.folder), "round/round_seconds")] if folder.exists() else []
        self.seen[server_round] = steps
        return arrays


def test_the_round_loop_logs_each_round_as_it_ends(tmp_path: Path, no_third_party: None) -> None:
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=60, num_items=60)
    run_config = {"overrides": pattern_overrides(data, "federated.rounds=2", "federated.server_eval_every=2")}
    run = federated_settings_from_run_config(run_config)
    split = leave_one_out(load_dataset("pattern", data))
    torch.manual_seed(0)
    model = build_model_from_config(run.model, split.num_items, run.data.max_len)
    valid, _ = build_eval_sets(split, run.eval, run.data.max_len)
    out = tmp_path / "run"
    peek = Peek(out)
    with RunTracker(out, run.tracking, run.record) as tracker:
        state = run_rounds(
            InProcessGrid(2, run_config),
            build_strategy(run),
            model,
            valid,
            round_plan(run),
            [RoundTracking(tracker), peek],
        )
    # Live: each round is in the event file before the next one starts.
    assert peek.seen == {1: [], 2: [1]}
    logged = events(out)
    history = state.history
    assert scalars(logged, "round/train/train_loss") == [
        (row["round"], pytest.approx(row["train"]["train_loss"], rel=1e-6)) for row in history
    ]
    assert scalars(logged, "round/train/bytes-sent") == [
        (row["round"], row["train"]["bytes-sent"]) for row in history
    ]
    # The server evaluates every 2nd round: its metric is logged at those rounds only.
    assert scalars(logged, "round/server_valid/NDCG@10") == [
        (r["round"], pytest.approx(r["server_valid"]["NDCG@10"], rel=1e-6))
        for r in history
        if "server_valid" in r
    ]
    assert [step for step, _ in scalars(logged, "round/server_valid/NDCG@10")] == [2]


@pytest.mark.slow
def test_the_federated_run_logs_rounds_and_its_final_table(tmp_path: Path, no_third_party: None) -> None:
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=60, num_items=60)
    out = tmp_path / "run"
    summary = run_inprocess(data, out, 2, "federated.rounds=2")
    metrics = json.loads((out / "metrics.json").read_text())
    logged = events(out)
    # Round 0 is what round 1 starts from; then every round the server evaluates.
    assert scalars(logged, "round/server_valid/NDCG@10") == [
        (0, pytest.approx(metrics["final"]["round_0_valid"]["NDCG@10"], rel=1e-6)),
        *[(r["round"], pytest.approx(r["server_valid"]["NDCG@10"], rel=1e-6)) for r in metrics["rounds"]],
    ]
    assert scalars(logged, "final/test/full/NDCG@10") == [
        (0, pytest.approx(summary["test"]["full"]["NDCG@10"]))
    ]
    assert scalars(logged, "final/best_round") == [(0, summary["best_round"])]
    assert "| strategy | fedavg |" in text(logged, "final_table")


def test_the_federated_run_refuses_a_tracker_it_cannot_reach(no_third_party: None) -> None:
    from lsc4rec.server.components.registry import check_components

    run = federated_settings_from_overrides(["system=base", "tracking.wandb=true"])
    with pytest.raises(SettingsError, match=r"tracking\.wandb=true but the wandb package is not installed"):
        check_components(run)


# ------------------------------------------------------------------------------ MLflow and W&B (fakes)
Param = namedtuple("Param", "key value")
Metric = namedtuple("Metric", "key value timestamp step")


class FakeMlflowClient:
    """Records what the tracker asks of MLflow; ``fail_on`` names a call that raises (``metrics``: logging
    metrics, after the run was created and its params logged)."""

    calls: ClassVar[list[tuple[str, Any]]] = []
    fail_on: str = ""

    def _record(self, name: str, *args: Any, kind: str = "") -> None:
        if FakeMlflowClient.fail_on and FakeMlflowClient.fail_on in (name, kind):
            raise ConnectionError("tracking server unreachable")
        FakeMlflowClient.calls.append((name, args))

    def get_experiment_by_name(self, name: str) -> None:
        self._record("get_experiment_by_name", name)

    def create_experiment(self, name: str) -> str:
        self._record("create_experiment", name)
        return "exp-1"

    def create_run(self, experiment_id: str, run_name: str, tags: dict) -> Any:
        self._record("create_run", experiment_id, run_name, tags)
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id="run-1"))

    def log_batch(self, run_id: str, metrics: tuple = (), params: tuple = ()) -> None:
        self._record(
            "log_batch", run_id, list(metrics), list(params), kind="metrics" if metrics else "params"
        )

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._record("log_text", run_id, text, artifact_file)

    def set_terminated(self, run_id: str, status: str) -> None:
        self._record("set_terminated", run_id, status)


@pytest.fixture()
def fake_mlflow(monkeypatch: pytest.MonkeyPatch, no_third_party: None) -> type[FakeMlflowClient]:
    """A fake ``mlflow`` package (client and entities) in ``sys.modules``, keyed by MLFLOW_TRACKING_URI."""
    mlflow = types.ModuleType("mlflow")
    entities = types.ModuleType("mlflow.entities")
    entities.Param, entities.Metric = Param, Metric  # type: ignore[attr-defined]
    mlflow.MlflowClient = FakeMlflowClient  # type: ignore[attr-defined]
    mlflow.entities = entities  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    monkeypatch.setitem(sys.modules, "mlflow.entities", entities)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.invalid:5000")
    monkeypatch.setattr(FakeMlflowClient, "calls", [])
    monkeypatch.setattr(FakeMlflowClient, "fail_on", "")
    return FakeMlflowClient


def test_mlflow_receives_params_metrics_and_the_final_table(
    tmp_path: Path, fake_mlflow: type[FakeMlflowClient]
) -> None:
    folder = tmp_path / "centralized-pattern-sasrec"
    tracker = RunTracker(folder, TrackingSettings(tensorboard=False), CONFIG)
    assert tracker.backends == ("mlflow",)
    tracker.log_epoch({"epoch": 2, "train_loss": 1.5, "valid": {"full": {"NDCG@10": 0.25}}})
    tracker.finish({"test": {"full": {"NDCG@10": 0.5}}})
    calls = fake_mlflow.calls
    assert [name for name, _ in calls] == [
        "get_experiment_by_name",
        "create_experiment",
        "create_run",
        "log_batch",  # params
        "log_batch",  # the epoch
        "log_batch",  # the final numbers
        "log_text",
        "set_terminated",
    ]
    assert calls[0][1] == ("lsc4rec",) and calls[1][1] == ("lsc4rec",)
    assert calls[2][1] == ("exp-1", folder.name, {"lsc4rec.run_folder": str(folder)})
    assert calls[3][1] == (
        "run-1",
        [],
        [
            Param("seed", "7"),
            Param("train.lr", "0.001"),
            Param("train.epochs", "3"),
            Param("eval.ks", "[5, 10]"),
            Param("data.path", "null"),
        ],
    )
    # MLflow refuses '@' in a metric name: NDCG@10 becomes NDCG_at_10; the step is the epoch.
    _, epoch_metrics, _ = calls[4][1]
    assert [(m.key, m.value, m.step) for m in epoch_metrics] == [
        ("epoch/train_loss", 1.5, 2),
        ("epoch/valid/full/NDCG_at_10", 0.25, 2),
    ]
    _, final_metrics, _ = calls[5][1]
    assert [(m.key, m.value, m.step) for m in final_metrics] == [("final/test/full/NDCG_at_10", 0.5, 0)]
    run_id, table, artifact = calls[6][1]
    assert (run_id, artifact) == ("run-1", "final_table.md") and "| test/full/NDCG@10 | 0.5 |" in table
    assert calls[7][1] == ("run-1", "FINISHED")


def test_a_run_that_fails_ends_its_mlflow_run_as_failed(
    tmp_path: Path, fake_mlflow: type[FakeMlflowClient]
) -> None:
    with pytest.raises(KeyError), RunTracker(tmp_path, TrackingSettings(tensorboard=False), {}) as tracker:
        tracker.log_epoch({"epoch": 1, "train_loss": 1.0})
        raise KeyError("boom")
    assert fake_mlflow.calls[-1] == ("set_terminated", ("run-1", "FAILED"))


@pytest.mark.parametrize("failing", ["create_run", "metrics"])
def test_a_failing_mlflow_warns_once_and_never_stops_the_run(
    tmp_path: Path,
    fake_mlflow: type[FakeMlflowClient],
    caplog: pytest.LogCaptureFixture,
    failing: str,
) -> None:
    fake_mlflow.fail_on = failing
    tracker = RunTracker(tmp_path, TrackingSettings(), CONFIG)
    with caplog.at_level(logging.WARNING, logger="lsc4rec.tracking"):
        for epoch in (1, 2, 3):
            tracker.log_epoch({"epoch": epoch, "train_loss": 1.0 / epoch})
        tracker.finish({"test": {"NDCG@10": 0.5}})
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert message.startswith("tracking: mlflow failed to ") and "ConnectionError" in message
    assert "the run goes on without mlflow" in message
    assert tracker.backends == ("tensorboard",)
    if failing == "metrics":
        # The MLflow run it had created is still marked failed, quietly.
        assert fake_mlflow.calls[-1] == ("set_terminated", ("run-1", "FAILED"))
    # TensorBoard kept every epoch and the final numbers.
    logged = events(tmp_path)
    assert [step for step, _ in scalars(logged, "epoch/train_loss")] == [1, 2, 3]
    assert scalars(logged, "final/test/NDCG@10") == [(0, 0.5)]


class FakeWandbRun:
    """Records what the tracker asks of a W&B run."""

    def __init__(self, calls: list) -> None:
        self.calls = calls
        self.summary: dict[str, float] = {}

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        self.calls.append(("define_metric", name, step_metric))

    def log(self, values: dict) -> None:
        self.calls.append(("log", values))

    def finish(self, exit_code: int) -> None:
        self.calls.append(("finish", exit_code))


def test_wandb_gets_one_step_axis_per_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_third_party: None
) -> None:
    calls: list = []
    run = FakeWandbRun(calls)
    wandb = types.ModuleType("wandb")
    wandb.init = lambda **kwargs: calls.append(("init", kwargs)) or run  # type: ignore[attr-defined]
    wandb.Table = lambda columns, data: ("table", columns, data)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = RunTracker(tmp_path / "run-a", TrackingSettings(tensorboard=False), CONFIG)
    assert tracker.backends == ("wandb",)
    tracker.log_epoch({"epoch": 1, "train_loss": 2.0})
    tracker.log_epoch({"epoch": 2, "train_loss": 1.0})
    tracker.log_round({"round": 1, "server_valid": {"NDCG@10": 0.3}})
    tracker.finish({"test": {"NDCG@10": 0.5}})
    assert calls == [
        ("init", {"project": "lsc4rec", "name": "run-a", "dir": str(tmp_path / "run-a"), "config": CONFIG}),
        ("define_metric", "epoch/step", None),
        ("define_metric", "epoch/*", "epoch/step"),
        ("log", {"epoch/step": 1, "epoch/train_loss": 2.0}),
        ("log", {"epoch/step": 2, "epoch/train_loss": 1.0}),
        ("define_metric", "round/step", None),
        ("define_metric", "round/*", "round/step"),
        ("log", {"round/step": 1, "round/server_valid/NDCG@10": 0.3}),
        ("log", {"final_table": ("table", ["metric", "value"], [["final/test/NDCG@10", 0.5]])}),
        ("finish", 0),
    ]
    assert run.summary == {"final/test/NDCG@10": 0.5}


def test_every_epoch_is_written_once_in_order(tmp_path: Path, no_third_party: None) -> None:
    record = {
        "epoch": 0,
        "train_loss": 1.0,
        "train_seconds": 2.0,
        "valid": {
            p: {f"{m}@{k}": 0.1 for m in ("HR", "NDCG", "MRR") for k in (5, 10, 20)} for p in ("full",)
        },
    }
    tracker = RunTracker(tmp_path, TENSORBOARD_ONLY, CONFIG)
    tracker.log_epoch({**record, "epoch": 1})  # opens the writer
    for epoch in range(2, 52):
        tracker.log_epoch({**record, "epoch": epoch})
    tracker.close()
    # (What logging costs per epoch is measured in docs/tracking.md, not asserted here.)
    assert [step for step, _ in scalars(events(tmp_path), "epoch/valid/full/NDCG@10")] == list(range(1, 52))
