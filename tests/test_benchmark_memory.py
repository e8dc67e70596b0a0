"""The scaling benchmark's memory measures: shared pages counted once by the proportional sets."""

from __future__ import annotations

import mmap
import os
import sys
import time
from pathlib import Path

import pytest
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


def _scaling_module():
    return load_script(REPO / "benchmarks" / "federated_scaling.py")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_page_shared_by_two_processes_counts_twice_in_resident_sets_and_once_in_proportional_sets() -> None:
    scaling = _scaling_module()
    size = 256 * 2**20
    shared = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
    shared.write(b"\1" * size)  # the parent touches every page
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child process
        total = sum(shared[offset] for offset in range(0, size, mmap.PAGESIZE))  # touch every page too
        os.write(write, b"x" if total else b"0")
        time.sleep(30)
        os._exit(0)
    try:
        assert os.read(read, 1) == b"x"
        rss = scaling.tree_rss_mb(os.getpid())
        pss = scaling.tree_pss_mb(os.getpid())
        # The two processes' resident sets both hold the 256 MiB; their proportional sets split it.
        assert rss - pss >= 0.8 * 256
        assert pss > 256
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
        shared.close()
