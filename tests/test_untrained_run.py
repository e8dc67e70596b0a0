"""A run in which no round aggregated an update is a failed run, whatever Flower's status says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_pattern_dataset

from lsc4rec.simulations.federated import untrained_reason

REPO = Path(__file__).resolve().parents[1]

OOM = "client error 0: <class 'ray.exceptions.OutOfMemoryError'>: 1 worker(s) were\nkilled" + " x" * 400


def _metrics(folder: Path, rounds: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"status": "completed", "rounds": rounds}))
    return folder


def test_a_run_whose_every_node_failed_names_the_first_failure(tmp_path: Path) -> None:
    failed = [{"round": 1, "stage": "train", "node_id": 7, "reason": OOM}]
    rounds = [
        {"round": 1, "train": {"aggregated": 0, "failures": 2}, "failed_nodes": failed},
        {"round": 2, "train": {"aggregated": 0, "failures": 2}, "failed_nodes": failed * 2},
    ]
    reason = untrained_reason(_metrics(tmp_path / "run", rounds))
    assert reason is not None
    assert reason.startswith("no round aggregated an update: 3 node failures over 2 rounds")
    assert "(round 1, train): client error 0: <class 'ray.exceptions.OutOfMemoryError'>" in reason
    assert reason.endswith(" ...") and len(reason) < 500  # the cause is cut, not the whole Ray report
    assert "\n" not in reason and "were killed" in reason  # one line


def test_one_aggregated_round_or_no_rounds_is_a_run_that_trained(tmp_path: Path) -> None:
    rounds = [
        {"round": 1, "train": {"aggregated": 0}, "failed_nodes": [{"round": 1, "stage": "train"}]},
        {"round": 2, "train": {"aggregated": 2}, "failed_nodes": []},
    ]
    assert untrained_reason(_metrics(tmp_path / "some", rounds)) is None
    assert untrained_reason(_metrics(tmp_path / "none", [])) is None
    assert untrained_reason(tmp_path / "missing") is None


def test_nodes_that_all_stopped_without_failing_are_named_as_such(tmp_path: Path) -> None:
    rounds = [{"round": r, "train": {"aggregated": 0, "privacy-stopped": 2}} for r in (1, 2, 3)]
    reason = untrained_reason(_metrics(tmp_path / "spent", rounds))
    assert reason is not None and "in 3 rounds (no node failed" in reason and "privacy budget" in reason


@pytest.mark.slow
def test_the_launcher_exits_non_zero_when_every_node_crashed_in_every_round(tmp_path: Path) -> None:
    """Both nodes crash in both rounds (a drill whose value, '0,1', reaches the nodes as one string)."""
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=60, num_items=30, lengths=(5, 10))
    command = [
        sys.executable, "-m", "lsc4rec.simulations.federated", "system=base", "data.name=pattern",
        f"data.path={data}", "data.max_len=10", "eval.sampled_negatives=20", "federated.rounds=2",
        "federated.runtime=inprocess", "federated.num_supernodes=2", "federated.faults.crash='0,1'",
        f"output_dir={tmp_path}", "run_name=crashed", "threads=1",
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: no round aggregated an update: 4 node failures over 2 rounds"), last
    assert "partition 0: injected crash (federated.faults.crash)" in last, last
    assert "RESULT" not in proc.stdout
    assert (tmp_path / "crashed" / "metrics.json").is_file()  # what happened stays on disk
