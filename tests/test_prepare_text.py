"""``python -m lsc4rec.simulations.prepare_text``: a run's item text is encoded into the cache ahead of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_pattern_dataset, write_pattern_text

from lsc4rec.simulations.prepare_text import main, prepare_text_vectors

NUM_ITEMS = 24


def _cached_texts(folder: Path) -> int:
    files = list(folder.glob("*.npz"))
    assert len(files) == 1, files
    with np.load(files[0]) as data:
        return int(data["keys"].shape[0])


def test_the_runs_vectors_are_cached_once_and_a_second_call_encodes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=40, num_items=NUM_ITEMS)
    write_pattern_text(data, NUM_ITEMS)
    cache = tmp_path / "cache"
    overrides = ["data.name=pattern", f"data.path={data}", f"text.cache_dir={cache}"]
    overrides.append(f"output_dir={tmp_path}")
    first = prepare_text_vectors(overrides)
    assert first["items_with_vectors"] == NUM_ITEMS and first["cache_dir"] == str(cache)
    # One vector per distinct text the whole system reads (the pattern's items share a text in blocks of 4).
    assert _cached_texts(cache) == NUM_ITEMS // 4
    before = (cache / next(cache.glob("*.npz")).name).stat().st_mtime_ns
    main(overrides)
    assert (cache / next(cache.glob("*.npz")).name).stat().st_mtime_ns == before  # nothing new was written
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["items_with_vectors"] == NUM_ITEMS
    saved = json.loads((tmp_path / "text-prepare" / "text_prepare.json").read_text())
    assert saved == result


def test_a_dataset_without_text_has_nothing_to_prepare_and_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_pattern_dataset(tmp_path / "plain.txt", num_users=20, num_items=NUM_ITEMS)
    summary = prepare_text_vectors(["data.name=plain", f"data.path={data}"])
    assert summary["items_with_vectors"] == 0 and "no item text" in summary["note"]
    with pytest.raises(SystemExit) as exited:
        main(["data.name=nowhere"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown dataset 'nowhere'")
