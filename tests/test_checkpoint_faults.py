"""A checkpoint that cannot be written (disk full, a file-size limit): the error names the file, the previous
checkpoint stays valid, and no temporary file is left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Writes a small checkpoint, then under ``limit`` (RLIMIT_FSIZE bytes, or none) a large one; prints what
#: happened as JSON.
SCRIPT = """
import json, resource, signal, sys
from pathlib import Path
import torch
from lsc4rec.server.components.checkpoint_files import CheckpointError, load_checkpoint, save_checkpoint

path = Path(sys.argv[1])
limit = int(sys.argv[2])
small = {"arrays": {"w": torch.ones(4)}, "round": 1}
save_checkpoint(path, small)
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
large = {"arrays": {"w": torch.ones(200_000)}, "round": 2}
try:
    save_checkpoint(path, large)
    outcome = {"error": None}
except CheckpointError as error:
    outcome = {"error": str(error)}
kept = load_checkpoint(path)
outcome["round_kept"] = kept["round"]
outcome["files"] = sorted(p.name for p in path.parent.iterdir())
print(json.dumps(outcome))
"""


def run_script(path: Path, limit: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), str(limit)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_file_size_limit_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoint.pt"
    outcome = run_script(path, limit=64 * 1024)
    assert outcome["error"] is not None
    assert outcome["error"].startswith(f"{path}: could not write the checkpoint (File too large")
    assert "the previous checkpoint is unchanged" in outcome["error"]
    assert outcome["round_kept"] == 1
    assert outcome["files"] == ["checkpoint.pt"]  # no temporary file left behind


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    # A real ENOSPC on a 256 KiB tmpfs; needs the right to mount (root in a container), else skipped.
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mountpoint = tmp_path / f"tiny-{uuid.uuid4().hex[:8]}"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        path = mountpoint / "checkpoint.pt"
        outcome = run_script(path, limit=0)
        assert outcome["error"] is not None
        assert outcome["error"].startswith(f"{path}: could not write the checkpoint (No space left on device")
        assert outcome["round_kept"] == 1 and outcome["files"] == ["checkpoint.pt"]
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)
