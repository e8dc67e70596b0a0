"""``python -m lsc4rec.compare``: the table of differing config keys and metrics, the plot, the errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lsc4rec.compare import Run, differing_config, flatten, main


def scores(ndcg10: float) -> dict[str, float]:
    """A metrics block whose NDCG@10 is ``ndcg10`` (the others derived from it)."""
    return {"HR@5": ndcg10 * 1.5, "NDCG@5": ndcg10 * 0.8, "HR@10": ndcg10 * 2, "NDCG@10": ndcg10}


def federated(name: str, rounds: int, lr: float, ndcg: float) -> dict[str, Any]:
    """A federated run's metrics.json (the whole system's shape, shortened)."""
    return {
        "status": "completed",
        "config": {
            "seed": 42,
            "run_name": name,
            "data": {"name": "beauty", "path": None},
            "federated": {"rounds": rounds, "local_epochs": 2},
            "train": {"lr": lr, "ks": [5, 10]},
        },
        "rounds": [{"round": r, "server_valid": scores(ndcg * r / rounds)} for r in range(1, rounds + 1)],
        "final": {
            "best_round": rounds,
            "test": {"full": scores(ndcg)},
            "bytes_sent": 3 * 2**20,
            "bytes_received": 5 * 2**20,
            "round_0_valid": scores(ndcg / 4),
            "final_table": [
                {"setting": "device alone", "NDCG@10": ndcg, "HR@10": 2 * ndcg},
                {"setting": "collaborative, no requests", "NDCG@10": ndcg + 0.004, "HR@10": 2 * ndcg + 0.01},
            ],
        },
        "wall_seconds": 100.0 * rounds,
    }


def centralized(name: str, lr: float, ndcg: float) -> dict[str, Any]:
    """A centralized run's metrics.json."""
    return {
        "status": "completed",
        "config": {
            "seed": 42,
            "run_name": name,
            "data": {"name": "beauty", "path": None},
            "train": {"lr": lr},
        },
        "epochs": [
            {"epoch": e, "train_loss": 9 - e, "valid": {"full": scores(ndcg * e / 3)}} for e in (1, 2, 3)
        ],
        "final": {"best_epoch": 3, "test": {"full": scores(ndcg)}},
        "wall_seconds": 42.5,
    }


def run_folder(root: Path, name: str, metrics: dict[str, Any] | str | None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    if metrics is not None:
        text = metrics if isinstance(metrics, str) else json.dumps(metrics)
        (folder / "metrics.json").write_text(text)
    return folder


def table(out: str) -> dict[str, list[str]]:
    """The printed Markdown table as ``{first cell: other cells}`` (header row under the key ``""``)."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def result(out: str) -> dict[str, Any]:
    (line,) = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert out.rstrip().endswith(line)
    return json.loads(line.removeprefix("RESULT "))


def test_two_federated_runs_print_exactly_the_differing_keys_and_the_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = run_folder(tmp_path, "A", federated("A", rounds=2, lr=0.001, ndcg=0.04))
    b = run_folder(tmp_path, "B", federated("B", rounds=3, lr=0.002, ndcg=0.05))
    plot = tmp_path / "cmp" / "compare.png"
    assert main([str(a), str(b), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    rows = table(out)
    keys = list(rows)
    assert rows[""] == ["A", "B"]
    # run_name differs too, but the columns already name the runs.
    assert keys[1 : keys.index("kind")] == ["federated.rounds", "train.lr"]
    assert rows["federated.rounds"] == ["2", "3"] and rows["train.lr"] == ["0.001", "0.002"]
    assert rows["test NDCG@10"] == ["0.0400", "0.0500"]
    assert rows["test HR@10"] == ["0.0800", "0.1000"]
    assert rows["best round / epoch"] == ["2", "3"]
    assert rows["final table: device alone (NDCG@10 / HR@10)"] == ["0.0400 / 0.0800", "0.0500 / 0.1000"]
    assert rows["final table: collaborative, no requests (NDCG@10 / HR@10)"][1] == "0.0540 / 0.1100"
    assert rows["wall seconds"] == ["200.0", "300.0"]
    assert rows["MiB sent"] == ["3.0", "3.0"] and rows["MiB received"] == ["5.0", "5.0"]
    assert plot.is_file() and plot.stat().st_size > 1000
    summary = result(out)
    assert summary["differing_config"] == {
        "federated.rounds": {"A": 2, "B": 3},
        "train.lr": {"A": 0.001, "B": 0.002},
    }
    curve = summary["metrics"]["B"]["valid_curve"]  # round 0: the warm start
    assert [step for step, _ in curve] == [0, 1, 2, 3]
    assert [value for _, value in curve] == pytest.approx([0.0125, 0.05 / 3, 0.1 / 3, 0.05])
    assert json.loads(plot.with_suffix(".json").read_text()) == summary


def test_federated_and_centralized_runs_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = run_folder(tmp_path, "fed", federated("fed", rounds=2, lr=0.001, ndcg=0.04))
    c = run_folder(tmp_path, "cen", centralized("cen", lr=0.001, ndcg=0.055))
    plot = tmp_path / "both.png"
    assert main([str(a), str(c), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    rows = table(out)
    keys = list(rows)
    # The centralized run has no federated section: each of its keys differs (shown as '-').
    assert keys[1 : keys.index("kind")] == ["federated.local_epochs", "federated.rounds", "train.ks"]
    assert rows["federated.rounds"] == ["2", "-"]
    assert rows["kind"] == ["federated", "centralized"]
    assert rows["test NDCG@10"] == ["0.0400", "0.0550"]
    assert rows["best round / epoch"] == ["2", "3"]
    assert rows["final table: device alone (NDCG@10 / HR@10)"] == ["0.0400 / 0.0800", "-"]
    assert rows["wall seconds"] == ["200.0", "42.5"]
    assert rows["MiB sent"] == ["3.0", "-"]
    assert plot.is_file()
    summary = result(out)
    assert summary["differing_config"]["federated.rounds"] == {"fed": 2}  # absent in "cen"
    curve = summary["metrics"]["cen"]["valid_curve"]
    assert [step for step, _ in curve] == [1, 2, 3] and curve[-1][1] == pytest.approx(0.055)


def test_a_run_missing_parts_still_compares(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = run_folder(tmp_path, "full", federated("full", rounds=2, lr=0.001, ndcg=0.04))
    bare = run_folder(tmp_path, "bare", {"status": "running"})
    assert main([str(a), str(bare), "--plot", str(tmp_path / "p.png")]) == 0
    rows = table(capsys.readouterr().out)
    assert rows["kind"] == ["federated", "unknown"]
    assert rows["status"] == ["completed", "running"]
    assert rows["test NDCG@10"] == ["0.0400", "-"] and rows["wall seconds"] == ["200.0", "-"]
    assert "seed" in rows and rows["seed"] == ["42", "-"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no metrics.json"),
        ("{not json", "metrics.json: not valid JSON"),
        ("[1, 2]", "metrics.json: expected a JSON object, got list"),
    ],
)
def test_an_unreadable_run_folder_is_a_one_line_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    good = run_folder(tmp_path, "good", federated("good", rounds=1, lr=0.001, ndcg=0.04))
    bad = run_folder(tmp_path, "bad", content)
    assert main([str(good), str(bad), "--plot", str(tmp_path / "x.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("python -m lsc4rec.compare: error: " + str(bad)) and message in line
    assert not (tmp_path / "x.png").exists()


def test_command_line_errors_exit_with_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    good = run_folder(tmp_path, "good", federated("good", rounds=1, lr=0.001, ndcg=0.04))
    with pytest.raises(SystemExit) as exit_info:
        main([str(good), "--plot", str(tmp_path / "x.svg")])
    assert exit_info.value.code == 2
    assert "argument --plot: " in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere: not a folder" in capsys.readouterr().err


def test_the_module_runs_from_the_command_line(tmp_path: Path) -> None:
    missing = tmp_path / "empty-run"
    missing.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "lsc4rec.compare", str(missing)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"python -m lsc4rec.compare: error: {missing}: no metrics.json " + (
        "(not a run folder, or the run wrote nothing yet)"
    )


def test_flatten_and_differing_config() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": None}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": {},
        "f": None,
    }
    runs = [
        Run("x", Path("x"), "federated", config={"a": 1, "b": [1, 2], "run_name": "x"}),
        Run("y", Path("y"), "federated", config={"a": 1, "b": [1, 3], "c": None, "run_name": "y"}),
    ]
    assert differing_config(runs) == ["b", "c"]
