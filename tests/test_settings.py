"""Typed settings at the entry point: every variant types cleanly, bad values and unknown or ignored keys are
refused naming the key, and the Flower run config and the command line give the same settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from lsc4rec.settings import (
    FEDERATED_IGNORES,
    FederatedRunSettings,
    SettingsError,
    federated_settings_from_overrides,
    federated_settings_from_run_config,
    typed_section,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["system=sasrec"],
        ["system=base", "model=gru4rec"],
        ["system=base", "model=din", "eval.full_ranking=false"],
        ["model=ttt4rec"],
        ["system=base", "model=solid", "strategy=fedadam"],
        ["system=base", "strategy=fedavgm", "privacy.mode=central", "privacy.noise_multiplier=0.5"],
        ["system=base", "collab.enabled=true", "mergenet.every_rounds=2"],
        ["system=cross_device"],
        ["system=base", "federated.ray_address=10.0.0.5:6379"],
    ],
)
def test_every_variant_types_cleanly(overrides: list[str]) -> None:
    run = federated_settings_from_overrides(overrides)
    assert isinstance(run, FederatedRunSettings)
    assert isinstance(run.federated.rounds, int) and isinstance(run.strategy.server_optimizer.lr, float)
    assert run.eval.ks == (5, 10, 20) and run.record["experiment"] in ("federated", "whole-system")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("federated.rounds=abc", r"federated\.rounds must be an integer, got 'abc'"),
        ("federated.rounds=0", r"federated\.rounds must be >= 1, got 0"),
        ("federated.fraction_evaluate=1.5", r"federated\.fraction_evaluate must be in \[0, 1\]"),
        ("federated.runtime=ray", r"federated\.runtime must be flower or inprocess"),
        ("strategy.server_optimizer.lr=fast", r"strategy\.server_optimizer\.lr must be a number"),
        ("eval.ks=[5,ten]", r"eval\.ks\[1\] must be an integer"),
        ("collab.alpha=1.5", r"collab\.alpha must be in \[0, 1\]"),
        ("collab.alpha=maybe", r"collab\.alpha must be a number in \[0, 1\] or auto"),
        ("request.target_ratio=2", r"request\.target_ratio must be in \[0, 1\]"),
        ("runtime=tensorrt", r"runtime must be torch or onnx"),
        ("federated.checkpoint=maybe", r"federated\.checkpoint must be true or false"),
        ("+federated.nosuchkey=1", r"unknown key federated\.nosuchkey"),
        ("+nosuchgroup=1", r"unknown key nosuchgroup"),
        ("collab.service_runtime=tensorrt", r"collab\.service_runtime must be auto, onnx or torch"),
        ("collab.service_batch_delay_ms=-1", r"collab\.service_batch_delay_ms must be >= 0 or null"),
        ("collab.service_max_queue=0", r"collab\.service_max_queue must be >= 1"),
        ("federated.ray_address=head-without-port", r"federated\.ray_address must be host:port"),
    ],
)
def test_bad_values_are_refused_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        federated_settings_from_overrides([override])


@pytest.mark.parametrize("key", sorted(FEDERATED_IGNORES))
def test_a_key_the_federated_run_cannot_honour_is_refused(key: str) -> None:
    default = federated_settings_from_overrides([])
    group, name = key.split(".")
    value = getattr(getattr(default, group), name)
    if isinstance(value, bool):
        changed = str(not value).lower()
    elif isinstance(value, int):
        changed = str(value + 1)
    elif isinstance(value, float):
        changed = str(value / 2 + 0.1)
    elif isinstance(value, tuple):
        changed = "[1]"
    else:
        changed = "/some/where"
    # The default run warm-starts, whose early stopping reads train.patience: refused only without one.
    no_warm_start = ["federated.warm_start_epochs=0"] if key == "train.patience" else []
    with pytest.raises(SettingsError, match=rf"cannot honour: {key}="):
        federated_settings_from_overrides([*no_warm_start, f"{key}={changed}"])


def test_refusal_follows_group_defaults_not_the_root_defaults() -> None:
    # model=gru4rec sets train.lr=0.003 in its own YAML: a group choice, not a user's change.
    run = federated_settings_from_overrides(["model=gru4rec"])
    assert run.train.lr == pytest.approx(0.003)


def test_auto_alpha_is_refused_when_devices_fuse() -> None:
    assert federated_settings_from_overrides(["system=base", "collab.alpha=auto"]).collab.alpha == "auto"
    with pytest.raises(SettingsError, match=r"collab\.alpha=auto"):
        federated_settings_from_overrides(["system=base", "collab.alpha=auto", "collab.enabled=true"])
    # The whole system (the default job) chooses it on the interactions that arrive during the run.
    assert federated_settings_from_overrides([]).collab.alpha == "auto"
    with pytest.raises(SettingsError, match=r"needs federated\.replay_interactions > 0"):
        federated_settings_from_overrides(["federated.replay_interactions=0"])


def test_a_closing_round_needs_two_rounds() -> None:
    with pytest.raises(SettingsError, match=r"rounds >= 2 .* set federated\.replay_closing_round=false"):
        federated_settings_from_overrides(["federated.replay_closing_round=true", "federated.rounds=1"])


def test_collaborative_training_needs_the_cloud_and_no_local_dp() -> None:
    assert federated_settings_from_overrides([]).collab.srm_training == "collaborative"
    with pytest.raises(SettingsError, match=r"needs collab\.enabled=true"):
        federated_settings_from_overrides(["collab.enabled=false"])
    assert federated_settings_from_overrides(["collab.enabled=false", "collab.srm_training=standard"])
    # The whole system runs under local DP (the pass over the cloud's lists is part of the DP-SGD round),
    # but the pass's distillation term is not.
    local = ["privacy.mode=local", "privacy.noise_multiplier=1.0"]
    assert federated_settings_from_overrides(local).collab.srm_training == "collaborative"
    with pytest.raises(SettingsError, match=r"distill_weight > 0 with privacy\.mode=local"):
        federated_settings_from_overrides([*local, "collab.distill_weight=1"])


def test_flower_run_config_and_command_line_agree() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    run_config = dict(pyproject["tool"]["flwr"]["app"]["config"])
    from_flower = federated_settings_from_run_config(run_config)
    from_cli = federated_settings_from_overrides([])
    assert from_flower.federated == from_cli.federated and from_flower.train == from_cli.train
    assert from_flower.collab == from_cli.collab and from_flower.strategy == from_cli.strategy
    assert from_flower.collab.enabled and from_flower.federated.replay_interactions > 0


@dataclass(frozen=True)
class _Inner:
    size: int


@dataclass(frozen=True)
class _Outer:
    name: str
    inner: _Inner
    scale: float = 1.0
    path: str | None = None


def test_typed_section_names_missing_and_nested_keys() -> None:
    built = typed_section({"name": "a", "inner": {"size": 3}, "scale": 2}, _Outer, "top")
    assert built == _Outer("a", _Inner(3), 2.0) and isinstance(built.scale, float)
    with pytest.raises(SettingsError, match=r"missing key top\.inner"):
        typed_section({"name": "a"}, _Outer, "top")
    with pytest.raises(SettingsError, match=r"top\.inner\.size must be an integer, got True"):
        typed_section({"name": "a", "inner": {"size": True}}, _Outer, "top")
    with pytest.raises(SettingsError, match=r"top\.path must be a string"):
        typed_section({"name": "a", "inner": {"size": 1}, "path": [1]}, _Outer, "top")


@pytest.mark.parametrize(
    ("module", "override", "named"),
    [
        ("centralized", "federated.rounds=3", r"the centralized baseline cannot honour: federated\.rounds=3"),
        ("request_curve", "strategy.proximal_mu=0.1", r"cannot honour: strategy\.proximal_mu=0\.1"),
        ("solid", "llm.hidden_size=16", r"the SOLID study cannot honour: llm\.hidden_size=16"),
        ("mergenet", "collab.alpha=0.3", r"the MergeNet study cannot honour: collab\.alpha=0\.3"),
        ("federated", "train.epochs=7", r"a federated run cannot honour: train\.epochs=7"),
    ],
)
@pytest.mark.slow
def test_entry_points_refuse_keys_they_do_not_read(
    module: str, override: str, named: str, tmp_path: Path
) -> None:
    # Refused before any data is read or any model built: the command fails at once, naming the key.
    done = subprocess.run(
        [sys.executable, "-m", f"lsc4rec.simulations.{module}", override, f"output_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "1"},
    )
    assert done.returncode != 0 and re.search(named, done.stderr), done.stderr[-2000:]


def test_ray_address_needs_the_flower_runtime() -> None:
    with pytest.raises(SettingsError, match=r"federated\.ray_address: only federated\.runtime=flower"):
        federated_settings_from_overrides(
            ["federated.runtime=inprocess", "federated.ray_address=127.0.0.1:6379"]
        )


def test_privacy_refusals_come_before_any_work() -> None:
    # Refused where the settings are built (the launcher, before Flower starts), not on a node mid-round.
    base = ["system=base", "privacy.mode=local", "privacy.noise_multiplier=1"]
    # The moments come from noised gradients only (post-processing): kept across rounds under DP too.
    assert federated_settings_from_overrides([*base, "federated.keep_optimizer_state=true"])
    with pytest.raises(SettingsError, match="FedProx"):
        federated_settings_from_overrides([*base, "strategy=fedprox", "strategy.proximal_mu=0.1"])
    with pytest.raises(SettingsError, match=r"strategy\.rule must be fedavg, not trimmed_mean"):
        federated_settings_from_overrides(
            ["system=base", "strategy=trimmed_mean", "privacy.mode=central", "privacy.noise_multiplier=0.5"]
        )


def test_component_rules_are_checked_before_any_work() -> None:
    from lsc4rec.server.components.registry import COMPONENTS, check_components

    # One registry lists every component in hook order; the checkpoint's place there does not matter.
    names = [component.name for component in COMPONENTS]
    assert names[:2] == ["checkpoint", "mergenet"] and len(set(names)) == len(names) == 9
    run = federated_settings_from_overrides(["system=base", "mergenet.every_rounds=2"])
    with pytest.raises(SettingsError, match=r"mergenet\.every_rounds > 0 .* needs collab\.enabled=true"):
        check_components(run)
    check_components(federated_settings_from_overrides(["system=whole"]))
