"""A node's ONNX folder: one per run and node, removed after the test phase; folders of dead runs swept."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from lsc4rec.client import onnx_folders
from lsc4rec.client.onnx_folders import STALE_SECONDS, onnx_dir, remove_onnx_dir


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "lsc4rec-onnx"
    monkeypatch.setattr(onnx_folders, "onnx_root", lambda: folder)
    return folder


def _context(run_id: int, node_id: int) -> Context:
    return Context(run_id=run_id, node_id=node_id, node_config={}, state=RecordDict(), run_config={})


def test_a_run_and_node_get_their_own_folder_which_the_test_phase_removes(root: Path) -> None:
    first, other = onnx_dir(_context(7, 1)), onnx_dir(_context(7, 2))
    assert first == root / "run7-node1" and first.is_dir() and other.is_dir()
    (first / "srm-all.onnx").write_bytes(b"graph")
    assert onnx_dir(_context(7, 1)) == first and (first / "srm-all.onnx").is_file()  # reused every round
    remove_onnx_dir(_context(7, 1))
    assert not first.exists() and other.is_dir()
    remove_onnx_dir(_context(7, 1))  # twice is harmless (a retried test phase)


def test_folders_of_runs_that_died_are_swept_once_a_day_old(root: Path) -> None:
    dead, recent = onnx_dir(_context(1, 1)), onnx_dir(_context(2, 1))
    old = time.time() - STALE_SECONDS - 60
    os.utime(dead, (old, old))
    onnx_dir(_context(3, 1))
    assert not dead.exists() and recent.is_dir() and (root / "run3-node1").is_dir()
