"""One source of truth: the Flower run config maps onto the Hydra configs the centralized runs use."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from flwr.common.config import flatten_dict

from lsc4rec.config import compose_config, config_from_run_config, overrides_from_run_config
from lsc4rec.settings import model_config
from lsc4rec.training import build_model_from_config

REPO = Path(__file__).resolve().parents[1]


def test_run_config_keys_become_hydra_overrides() -> None:
    run_config = {
        "system": "base",
        "dataset": "beauty",
        "model": "gru4rec",
        "strategy": "",
        "federated.rounds": 7,
        "federated.resume": True,
        "federated.faults.crash": "1,3",
        "output-dir": "/tmp/out",
        "overrides": "train.lr=0.002 'model.dropout=0.25'",
    }
    assert overrides_from_run_config(run_config) == [
        "system=base",
        "dataset=beauty",
        "model=gru4rec",
        "federated.rounds=7",
        "federated.resume=true",
        "federated.faults.crash='1,3'",
        "train.lr=0.002",
        "model.dropout=0.25",
    ]
    cfg = config_from_run_config(run_config)
    assert cfg.model.name == "gru4rec" and cfg.strategy.rule == "fedavg"
    assert cfg.federated.rounds == 7 and cfg.federated.resume is True
    assert cfg.federated.faults.crash == "1,3"  # one string, not a Hydra list
    assert cfg.train.lr == 0.002 and cfg.model.dropout == 0.25
    assert cfg.experiment == "federated"


def test_pyproject_defaults_compose_to_the_same_config_as_the_command_line() -> None:
    # `flwr run .` (the pyproject's run config) runs exactly what `make run` runs (conf/federated_run.yaml).
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    run_config = flatten_dict(pyproject["tool"]["flwr"]["app"]["config"])
    from_flower = config_from_run_config(run_config)
    from_cli = compose_config([], config_name="federated_run")
    for key in (
        "data",
        "model",
        "train",
        "eval",
        "strategy",
        "collab",
        "federated",
        "solid",
        "mergenet",
        "llm",
    ):
        assert from_flower[key] == from_cli[key], key
    assert from_flower.runtime == from_cli.runtime == "onnx"
    # The plain federated SASRec is one group key away.
    plain = config_from_run_config({**run_config, "system": "sasrec"})
    assert plain.model.name == "sasrec" and not plain.collab.enabled


def test_unknown_keys_fail_with_the_key_named() -> None:
    with pytest.raises(Exception, match="nosuchkey"):
        config_from_run_config({"federated.nosuchkey": 1})
    with pytest.raises(Exception, match="nosuchmodel"):
        config_from_run_config({"model": "nosuchmodel"})


def test_device_sasrec_preset_is_the_papers_small_reranker() -> None:
    cfg = compose_config(["model=sasrec_device"])
    assert (cfg.data.max_len, cfg.train.loss, cfg.train.num_negatives, cfg.train.epochs) == (10, "bce", 4, 10)
    model = build_model_from_config(model_config(cfg.model), 12101, int(cfg.data.max_len))
    parameters = sum(p.numel() for p in model.parameters())
    default = build_model_from_config(model_config(compose_config([]).model), 12101, 50)
    assert 380_000 < parameters < 420_000, parameters
    assert sum(p.numel() for p in default.parameters()) > 4 * parameters
