"""Where a node keeps its exported ONNX graphs, and their removal: a run's folder goes when its test phase
ends, and folders of runs that died before theirs go once they are a day old (a long soak would otherwise
fill the disk with one copy of the graphs per run and node)."""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import suppress
from pathlib import Path

from flwr.app import Context

__all__ = ["STALE_SECONDS", "onnx_dir", "onnx_root", "remove_onnx_dir"]

#: A run's folder untouched this long belongs to a run that ended without its test phase (killed, failed).
STALE_SECONDS = 24 * 3600.0


def onnx_root() -> Path:
    """The folder holding every node's ONNX folders on this machine."""
    return Path(tempfile.gettempdir()) / "lsc4rec-onnx"


def onnx_dir(context: Context) -> Path:
    """This node's ONNX folder for this run (created; reused every round), after removing stale ones."""
    root = onnx_root()
    folder = root / f"run{context.run_id}-node{context.node_id}"
    if not folder.is_dir():
        _remove_stale(root, time.time() - STALE_SECONDS)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def remove_onnx_dir(context: Context) -> None:
    """Remove this node's ONNX folder of this run (its test phase is over; nothing reads it again)."""
    shutil.rmtree(onnx_root() / f"run{context.run_id}-node{context.node_id}", ignore_errors=True)


def _remove_stale(root: Path, before: float) -> None:
    with suppress(OSError):
        for folder in root.iterdir():
            with suppress(OSError):  # another node may remove it at the same moment
                if folder.is_dir() and folder.stat().st_mtime < before:
                    shutil.rmtree(folder, ignore_errors=True)
