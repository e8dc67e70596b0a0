"""The real-process fault drills of ``deploy/drills.py`` that fit in CI (the federated ones are scripted runs
whose output the README shows)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
