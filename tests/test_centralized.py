"""End-to-end centralized baseline on a small synthetic dataset with a learnable sequential pattern."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_pattern_dataset
from omegaconf import DictConfig

from lsc4rec.config import compose_config
from lsc4rec.simulations.centralized import run_centralized

REPO = Path(__file__).resolve().parents[1]
NUM_ITEMS = 60


@pytest.fixture()
def pattern_file(tmp_path: Path) -> Path:
    return write_pattern_dataset(tmp_path / "pattern.txt", num_users=300, num_items=NUM_ITEMS)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["sasrec", "gru4rec"])
def test_centralized_learns_the_pattern_and_writes_outputs(
    model: str, pattern_file: Path, tmp_path: Path
) -> None:
    cfg = compose_config(
        [
            f"model={model}",
            "dataset=beauty",
            "data.name=pattern",
            f"data.path={pattern_file}",
            "data.max_len=10",
            "train.epochs=15",
            "train.batch_size=64",
            "train.lr=0.005",
            "train.patience=3",
            "train.progress=false",
            "model.dropout=0.1",
            "eval.sampled_negatives=20",
        ]
    )
    summary = run_centralized(cfg, tmp_path / "run")
    full = summary["test"]["full"]
    # Random ranking over 60 items gives HR@10 ~ 0.17 and NDCG@10 ~ 0.07; the pattern is fully predictable.
    assert full["HR@10"] > 0.9, full
    assert full["NDCG@10"] > 0.7, full
    assert summary["test"]["sampled"]["HR@10"] >= full["HR@10"] - 1e-9
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["config"]["model"]["name"] == model
    assert metrics["dataset_report"]["users_evaluated"] == 300
    assert 1 <= metrics["final"]["best_epoch"] <= len(metrics["epochs"]) <= 15
    assert all("valid" in row and "train_loss" in row for row in metrics["epochs"])
    assert metrics["peak_memory_mb"] > 0 and metrics["wall_seconds"] > 0
    assert (tmp_path / "run" / "learning_curve.png").stat().st_size > 1000
    assert (tmp_path / "run" / "model.pt").is_file()


@pytest.mark.slow
def test_command_line_prints_result_line_last(pattern_file: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lsc4rec.simulations.centralized",
            "data.name=pattern",
            f"data.path={pattern_file}",
            "data.max_len=10",
            "train.epochs=2",
            "eval.sampled_negatives=20",
            "train.progress=false",
            f"output_dir={tmp_path}",
            "run_name=cli",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    result = json.loads(last[len("RESULT ") :])
    assert result["model"] == "sasrec" and result["dataset"] == "pattern"
    assert set(result["test"]["full"]) >= {"HR@5", "NDCG@10", "MRR@20"}
    assert (tmp_path / "cli" / "metrics.json").is_file()


def test_missing_dataset_path_is_a_clear_error(tmp_path: Path) -> None:
    cfg = compose_config(["data.name=nothing", f"data.path={tmp_path / 'nope.txt'}", "train.progress=false"])
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        run_centralized(cfg, tmp_path / "run")


def transition_only_in_validation_config(tmp_path: Path, *overrides: str) -> DictConfig:
    """A run on 200 users where the transition 1 -> 2 exists only as validation interactions.

    Half of the users end with [1, 2] (validation 1, test 2); the other half with [1, 2, r] (validation 2),
    so only a model that trains on validation interactions can predict the first half's test item.
    """
    rng = np.random.default_rng(0)
    lines = []
    for user in range(1, 201):
        prefix = [int(i) for i in rng.choice(np.arange(3, 41), size=4, replace=False)]
        tail = [1, 2] if user % 2 else [1, 2, int(rng.integers(3, 41))]
        lines.append(" ".join(str(x) for x in [user, *prefix, *tail]))
    data = tmp_path / "refit.txt"
    data.write_text("\n".join(lines) + "\n")
    return compose_config(
        [
            "data.name=refit",
            f"data.path={data}",
            "data.max_len=10",
            "model.hidden_size=16",
            "model.dropout=0.1",
            "train.epochs=6",
            "train.patience=6",
            "train.lr=0.01",
            "train.batch_size=32",
            "train.progress=false",
            "eval.sampled_negatives=20",
            *overrides,
        ]
    )


def test_refit_trains_on_the_validation_interactions(tmp_path: Path) -> None:
    # The early-stopped model never trains on 1 -> 2; the refit model does.
    cfg = transition_only_in_validation_config(tmp_path, "train.refit=true")
    summary = run_centralized(cfg, tmp_path / "run")
    plain, refit = summary["test"]["full"], summary["refit"]["test"]["full"]
    assert summary["refit"]["epochs"] == summary["best_epoch"]
    assert plain["HR@10"] < 0.4, plain  # item 2 was never a training target
    assert refit["HR@10"] > plain["HR@10"] + 0.3, (plain, refit)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["refit_epochs"]) == summary["best_epoch"]
    assert all(row["epoch_lr"] == pytest.approx(0.01) for row in metrics["epochs"])
    assert (tmp_path / "run" / "model_refit.pt").is_file()


def test_validation_users_train_on_everyone_elses_validation_item(tmp_path: Path) -> None:
    # With 20 of 200 users held out for validation, the other 180 train on their validation interaction, so
    # the early-stopped model itself learns 1 -> 2; model selection reads the 20 held-out users only.
    cfg = transition_only_in_validation_config(tmp_path, "eval.validation_users=20")
    summary = run_centralized(cfg, tmp_path / "run")
    # Without the sample the same run stays below 0.4 (test above); ~0.63 is the ceiling here, since the
    # other half's test item is random.
    assert summary["test"]["full"]["HR@10"] > 0.55, summary["test"]["full"]
    assert "validation on 20 seeded users" in summary["protocol"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["eval"]["validation_users"] == 20
