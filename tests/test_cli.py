"""Bad input at the command line: the clear message, exit code 2, no traceback, no empty run folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lsc4rec.cli import USAGE_ERROR, clean_failed_run, exit_on_bad_input


def test_a_refused_input_exits_2_with_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    @exit_on_bad_input
    def main() -> None:
        raise ValueError("data.path=/nowhere: not found")

    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == USAGE_ERROR
    assert capsys.readouterr().err == "error: data.path=/nowhere: not found\n"


def test_a_bug_is_not_dressed_as_bad_input() -> None:
    @exit_on_bad_input
    def main() -> None:
        raise ZeroDivisionError("a bug keeps its traceback")

    with pytest.raises(ZeroDivisionError):
        main()


def test_only_a_run_folder_with_nothing_of_the_run_is_removed(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / ".hydra").mkdir(parents=True)
    (empty / "centralized.log").write_text("")
    assert clean_failed_run(empty) and not empty.exists()
    kept = tmp_path / "kept"
    (kept / ".hydra").mkdir(parents=True)
    (kept / "metrics.json").write_text("{}")
    assert not clean_failed_run(kept) and (kept / "metrics.json").exists()


@pytest.mark.slow
def test_the_command_line_refuses_a_missing_and_a_garbage_dataset(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("1 2 three\n\x00\x01 not a sequence\n")
    for path, message in ((tmp_path / "nope.txt", "nope.txt"), (garbage, "garbage.txt")):
        out = tmp_path / f"out-{path.stem}"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "lsc4rec.simulations.centralized",
                f"data.path={path}",
                f"output_dir={out}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert done.returncode == USAGE_ERROR, done.stderr[-2000:]
        assert done.stderr.startswith("error: ") and message in done.stderr and "Traceback" not in done.stderr
        assert not out.exists() or not any(out.iterdir()), "a failed run left its folder behind"
