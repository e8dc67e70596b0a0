"""The real-process fault drills of ``deploy/drills.py`` that fit in CI (the federated ones are scripted runs
whose output the README shows)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def drills_module() -> ModuleType:
    """``deploy/drills.py`` as a module (it imports its sibling ``local`` from its own folder)."""
    sys.path.insert(0, str(REPO / "deploy"))
    try:
        import drills
    finally:
        sys.path.remove(str(REPO / "deploy"))
    return drills


@pytest.mark.slow
def test_devices_ride_out_a_killed_and_restarted_candidate_service(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "deploy/drills.py",
            "candidate-service",
            "--workdir",
            str(tmp_path),
            "--service-seconds",
            "20",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    checks = {c["check"]: c for c in result["drills"]["candidate-service"]["checks"]}
    assert len(checks) == 5 and all(c["passed"] for c in checks.values())
    assert "UNAVAILABLE" in checks["while it is down the devices serve on and count the failures"]["observed"]
    # The service process was really killed and started again: two start-ups in its log.
    assert (tmp_path / "candidate-service" / "candidate-service.log").exists()


def test_the_soak_tells_the_deployment_parts_apart() -> None:
    """The soak's per-part memory: a process is counted under the executable its command line names."""
    drills = drills_module()
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)", "flwr-serverapp"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sleeper.stdout is not None and sleeper.stdout.readline() == "up\n"  # started, not mid-exec
        assert drills._role(sleeper.pid) == "serverapp"
        parts = drills._rss_by_role([sleeper.pid, *([] if sleeper.pid == 1 else [1])])
        assert parts["rss_serverapp_mib"] > 1.0  # a Python interpreter's resident memory
        assert set(parts) <= {"rss_serverapp_mib", "rss_other_mib"}
    finally:
        sleeper.kill()
        sleeper.wait()
        if sleeper.stdout is not None:
            sleeper.stdout.close()
    assert drills._role(sleeper.pid) == "other"  # gone: nothing to attribute


def test_a_trend_is_measured_over_the_rounds_a_part_was_seen_in() -> None:
    drills = drills_module()
    assert drills._slope([1.0, 3.0, 5.0]) == pytest.approx(2.0)
    # A part seen in rounds 0, 3 and 4 at a level of 100: flat, where counting the absent rounds as 0 would
    # make a trend of it.
    assert drills._slope([100.0, 100.0, 100.0], [0, 3, 4]) == pytest.approx(0.0)
    assert drills._slope([100.0, 0.0, 0.0, 100.0, 100.0]) == pytest.approx(10.0)
    assert drills._slope([7.0]) == 0.0 and drills._slope([2.0, 4.0], [1, 1]) == 0.0


def test_the_soak_draws_its_curves_with_parts_seen_in_some_rounds(tmp_path: Path) -> None:
    drills = drills_module()
    rounds = [
        {"rss_mib": 100.0 + i, "open_files": 20.0, "threads": 9.0, "disk_mib": 5.0, "rss_superlink_mib": 30.0}
        for i in range(4)
    ]
    rounds[2]["rss_clientapps_mib"] = 40.0  # a ClientApp alive in round 3 only
    path = drills.plot_soak(rounds, tmp_path / "soak.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_the_soaks_disk_counts_a_file_with_two_names_once(tmp_path: Path) -> None:
    drills = drills_module()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "record").write_bytes(b"x" * 2**20)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "record").hardlink_to(tmp_path / "a" / "record")
    (tmp_path / "b" / "own").write_bytes(b"y" * 2**19)
    assert drills._folder_mib([tmp_path]) == 1.5
    assert drills._folder_mib([tmp_path / "a", tmp_path / "b"]) == 1.5
