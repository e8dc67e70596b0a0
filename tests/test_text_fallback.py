"""A dataset without item text in the whole system: its text parts fall back to ids, or the run is refused."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import WHOLE_TINY, write_pattern_dataset

from lsc4rec.cli import USAGE_ERROR
from lsc4rec.settings import SettingsError, federated_settings_from_overrides
from lsc4rec.simulations.launch.text_fallback import text_fallback

TEXT_RUN = ["model.item_text=projected", "collab.content_weight=0.2"]


def test_preset_parts_fall_back_to_ids_with_a_line_each(caplog: pytest.LogCaptureFixture) -> None:
    run = federated_settings_from_overrides(TEXT_RUN)
    assert text_fallback(run, [], has_text=True, dataset="shop") == []
    with caplog.at_level(logging.WARNING):
        extra = text_fallback(run, [], has_text=False, dataset="lastfm")
    assert extra == ["solid.features=[embedding]", "model.item_text=none", "collab.content_weight=0"]
    assert sum("dataset 'lastfm' has no item text" in r.getMessage() for r in caplog.records) == 3
    # The fallback overrides compose into a run that reads no text at all.
    fallen = federated_settings_from_overrides([*TEXT_RUN, *extra])
    assert text_fallback(fallen, [], has_text=False, dataset="lastfm") == []


def test_a_text_part_the_user_asked_for_is_refused_with_the_override_to_drop() -> None:
    run = federated_settings_from_overrides(TEXT_RUN)
    with pytest.raises(SettingsError, match=r"model\.item_text=projected needs it: drop that override"):
        text_fallback(run, ["model.item_text=projected"], has_text=False, dataset="lastfm")
    # A plain federated SASRec reads no text: nothing to do.
    plain = federated_settings_from_overrides(["system=sasrec"])
    assert text_fallback(plain, [], has_text=False, dataset="lastfm") == []


COMMAND_LINE = [
    *WHOLE_TINY,
    "federated.runtime=inprocess",
    "federated.num_supernodes=2",
    "federated.rounds=1",
    # One round: it serves the arrivals, so there is no closing round to train on them.
    "federated.replay_closing_round=false",
    "data.max_len=10",
    "llm.train.epochs=1",
    "train.progress=false",
    "eval.sampled_negatives=20",
]


def _make_run(tmp_path: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    """`make run`'s entry point on ``data`` (the whole system at tiny size, in-process)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "lsc4rec.simulations.federated",
            *COMMAND_LINE,
            "data.name=pattern",
            f"data.path={data}",
            f"output_dir={tmp_path / 'out'}",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.slow
def test_the_whole_system_runs_on_a_dataset_without_text_and_refuses_a_text_part_asked_for(
    tmp_path: Path,
) -> None:
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=160, num_items=40)
    done = _make_run(tmp_path, data)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr  # Hydra's log lines go to the console
    assert "Traceback" not in printed
    assert printed.count("dataset 'pattern' has no item text") >= 3, printed[-3000:]
    for part in ("SOLID's codebook", "learned id rows only", "without the content term"):
        assert part in printed
    result = json.loads(done.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert len(result["final_table"]) >= 5 and "item_text" not in result
    refused = _make_run(tmp_path, data, "model.item_text=projected")
    assert refused.returncode == USAGE_ERROR and "Traceback" not in refused.stderr
    assert "model.item_text=projected needs it: drop that override" in refused.stderr
