"""Warm start of the global SRM on the cloud's stale data, and starting from given initial weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import write_pattern_dataset

from lsc4rec.data import leave_one_out, load_dataset
from lsc4rec.models.srm import build_srm
from lsc4rec.server.warm_start import load_initial_weights, warm_start_on_cloud
from lsc4rec.settings import federated_settings_from_run_config
from lsc4rec.training import build_eval_sets, build_model_from_config, evaluate


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return write_pattern_dataset(tmp_path / "pattern.txt", num_users=240, num_items=60)


def config(data: Path, *extra: str):
    base = f"system=base data.name=pattern data.path={data} data.max_len=10 train.lr=0.005"
    base += " train.progress=false"
    return federated_settings_from_run_config({"overrides": " ".join([base, *extra])})


def test_warm_start_learns_from_the_cloud_view_only(data: Path) -> None:
    cfg = config(data, "federated.warm_start_epochs=4", "collab.cloud_lag=2", "eval.sampled_negatives=20")
    split = leave_one_out(load_dataset(cfg.data.name, cfg.data.path, cfg.data.format))
    torch.manual_seed(0)
    model = build_model_from_config(cfg.model, split.num_items, int(cfg.data.max_len))
    valid, _ = build_eval_sets(split, cfg.eval, int(cfg.data.max_len))
    before = evaluate(model, valid)["full"]["NDCG@10"]
    report = warm_start_on_cloud(model, cfg, split)
    after = evaluate(model, valid)["full"]["NDCG@10"]
    assert report["epochs"] == 4 and 1 <= report["best_epoch"] <= 4 and report["cloud_lag"] == 2
    assert report["cloud_valid_NDCG@10"] > 0.5 and after > before + 0.3
    with pytest.raises(ValueError, match="leaves no user with a validation item"):
        warm_start_on_cloud(
            model, config(data, "federated.warm_start_epochs=1", "collab.cloud_lag=500"), split
        )


def test_initial_weights_load_or_fail_naming_the_file(tmp_path: Path) -> None:
    source = build_srm("sasrec", 30, hidden_size=8)
    path = tmp_path / "init.pt"
    torch.save(source.state_dict(), path)
    target = build_srm("sasrec", 30, hidden_size=8)
    load_initial_weights(target, path)
    assert all(
        torch.equal(a, b)
        for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True)
    )
    with pytest.raises(FileNotFoundError, match=r"missing\.pt does not exist"):
        load_initial_weights(target, tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"bad.pt is not a readable state dict"):
        load_initial_weights(target, tmp_path / "bad.pt")
    with pytest.raises(
        ValueError,
        match=r"initial_weights\['item_embedding.weight'\] has shape \(41, 8\), the model needs \(31, 8\)",
    ):
        wider = build_srm("sasrec", 40, hidden_size=8)
        torch.save(wider.state_dict(), tmp_path / "wider.pt")
        load_initial_weights(target, tmp_path / "wider.pt")
    with pytest.raises(
        ValueError, match=r"init\.pt: federated.initial_weights do not fit the model \(missing \['dense.bias'"
    ):
        load_initial_weights(build_srm("gru4rec", 30, hidden_size=8), path)


def test_train_patience_is_honoured_only_with_a_warm_start() -> None:
    from lsc4rec.settings import SettingsError, federated_settings_from_overrides

    run = federated_settings_from_overrides(
        ["system=base", "federated.warm_start_epochs=5", "train.patience=30"]
    )
    assert run.train.patience == 30
    with pytest.raises(SettingsError, match=r"cannot honour: train\.patience=30 .*only the warm start"):
        federated_settings_from_overrides(["system=base", "train.patience=30"])
