"""The app under real Flower runtimes: `flwr run` on a simulation SuperLink, and a loopback deployment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_pattern_dataset

REPO = Path(__file__).resolve().parents[1]


SMALL = (
    "system=base data.name=pattern data.max_len=10 eval.sampled_negatives=20 train.lr=0.005 "
    "federated.rounds=2"
)


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    # Small, so each Flower round costs a few seconds of compute.
    return write_pattern_dataset(
        tmp_path / "pattern.txt", num_users=120, num_items=40, seed=1, lengths=(5, 10)
    )


@pytest.mark.slow
def test_flwr_run_simulation_completes_and_reports(data: Path, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "lsc4rec.simulations.federated",
        *SMALL.split(),
        f"data.path={data}",
        "federated.num_supernodes=3",
        "federated.faults.crash=2",
        # One instruction in flight at a time: the windowed dispatch under the real simulation runtime,
        # a crashing node's error reply freeing its place like any reply.
        "federated.dispatch_window=1",
        "federated.launch_timeout=480",
        f"output_dir={tmp_path}",
        "run_name=sim",
    ]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["rounds"] == 2 and result["failures"] >= 2  # partition 2 crashes in both rounds
    metrics = json.loads((tmp_path / "sim" / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert all(row["train"]["valid-replies"] == 2 for row in metrics["rounds"])
    assert all(row["train"]["bytes-received"] > 0 for row in metrics["rounds"])


@pytest.mark.slow
def test_a_failing_run_exits_non_zero(data: Path, tmp_path: Path) -> None:
    # The ServerApp cannot load its initial weights and raises: `flwr run --stream` itself exits 0 on such a
    # run, the launcher must read the run's status and fail loudly. (A missing data file is refused before
    # Flower starts: the launcher reads the data to see whether it has item text.)
    command = [
        sys.executable,
        "-m",
        "lsc4rec.simulations.federated",
        *SMALL.split(),
        f"data.path={data}",
        f"federated.initial_weights={tmp_path / 'missing.pt'}",
        "federated.num_supernodes=2",
        "federated.launch_timeout=300",
        f"output_dir={tmp_path}",
        "run_name=broken",
    ]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 1
    assert "ended with status 'finished:failed'" in proc.stderr, proc.stderr[-3000:]
    # The Flower log above says why; the command itself ends on one error line, not a traceback of its own.
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: flwr run"), proc.stderr[-1000:]
    assert not (tmp_path / "broken" / "metrics.json").exists()
    # A missing data file: refused with its name before any Flower process starts, no traceback.
    missing_data = f"data.path={tmp_path / 'missing.txt'}"
    missing = [*command[:3], *SMALL.split(), missing_data, f"output_dir={tmp_path}"]
    refused = subprocess.run(missing, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "missing.txt: not found" in refused.stderr
    assert "Traceback" not in refused.stderr and "launching" not in refused.stdout + refused.stderr


@pytest.mark.slow
def test_local_deployment_with_two_supernodes(data: Path, tmp_path: Path) -> None:
    run_config = f'output-dir="{tmp_path}" overrides="{SMALL} data.path={data} run_name=deployed"'
    proc = subprocess.run(
        [
            sys.executable,
            "deploy/local.py",
            "--supernodes",
            "2",
            "--workdir",
            str(tmp_path / "deploy"),
            "--timeout",
            "500",
            "--run-config",
            run_config,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:] + (
        tmp_path / "deploy" / "flwr-run.log"
    ).read_text()[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["status"] == "finished:completed" and result["supernodes"] == 2
    metrics = json.loads((tmp_path / "deployed" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["rounds"]) == 2
    assert all(row["train"]["valid-replies"] == 2 for row in metrics["rounds"])
    # Everything the script started is gone: no SuperNode or SuperLink of this deployment is left running.
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "deploy")], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""


def test_streamed_run_shows_progress_lines_live_and_keeps_the_whole_log(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from lsc4rec.simulations.launch.flower import is_progress_line, stream_command

    lines = [
        "Successfully installed lsc4rec to /tmp/x/apps/lsc4rec.lsc4rec.0.1.0.c84f515e.",
        "INFO flwr: starting",
        "INFO lsc4rec.server.loop: round 1/2: 4/4 valid updates",
        'RESULT {"experiment": "federated"}',
    ]
    script = "".join(f"print({line!r}); " for line in lines)
    finished, output = stream_command([sys.executable, "-c", script], {}, 60, is_progress_line)
    assert finished and output.splitlines() == lines
    assert capfd.readouterr().err == "INFO lsc4rec.server.loop: round 1/2: 4/4 valid updates\n"


def test_a_streamed_command_past_its_time_is_killed() -> None:
    from lsc4rec.simulations.launch.flower import stream_command

    finished, output = stream_command(
        [sys.executable, "-c", "import time; print('waiting', flush=True); time.sleep(60)"],
        {},
        2,
        lambda line: False,
    )
    assert not finished and output == "waiting\n"


@pytest.mark.parametrize(("ray_address", "expected"), [(None, "local"), ("10.1.2.3:6379", "10.1.2.3:6379")])
def test_the_simulation_joins_a_ray_cluster_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ray_address: str | None, expected: str
) -> None:
    # Flower's Ray backend calls ray.init(), which joins RAY_ADDRESS, or else any cluster `ray start` left on
    # the machine: the launcher always says which ("local" = start its own).
    from contextlib import contextmanager

    from lsc4rec.simulations.launch import flower

    seen: dict[str, dict[str, str]] = {}

    @contextmanager
    def fake_superlink(home: Path, env: dict[str, str]):  # type: ignore[no-untyped-def]
        seen["superlink"] = env
        yield "lsc4rec"

    def fake_submit(app_dir, connection, env, timeout, extra):  # type: ignore[no-untyped-def]
        return flower.FlowerRun(1, "finished:completed", "")

    monkeypatch.setenv("RAY_ADDRESS", "left.over.cluster:6379")
    monkeypatch.setattr(flower, "simulation_superlink", fake_superlink)
    monkeypatch.setattr(flower, "submit_and_wait", fake_submit)
    assert flower.flwr_run(REPO, {}, 2, timeout=1.0, flwr_home=tmp_path, ray_address=ray_address).ok
    assert seen["superlink"]["RAY_ADDRESS"] == expected


def running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped has stopped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_stopping_reaches_descendants_that_left_the_process_group(tmp_path: Path) -> None:
    # As flwr-simulation and Ray do: a grandchild in a session of its own. Stopping the group would miss it.
    import time

    from lsc4rec.simulations.launch.flower import descendants, stop_processes

    pid_file = tmp_path / "grandchild.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], "
            "start_new_session=True)\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(600)\n",
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the grandchild did not start"
            time.sleep(0.05)
        grandchild = int(pid_file.read_text())
        family = descendants(parent.pid)
        assert grandchild in family
        stop_processes([parent.pid, *family], grace=5.0)
        parent.wait(timeout=10)
        assert not running(grandchild)
    finally:
        parent.kill()


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_its_superlink(tmp_path: Path) -> None:
    import signal
    import time

    script = (
        "import sys, time, pathlib\n"
        "from lsc4rec.simulations.launch.flower import flower_env, simulation_superlink\n"
        "home = pathlib.Path(sys.argv[1])\n"
        "with simulation_superlink(home, flower_env(home)):\n"
        "    print('READY', flush=True)\n"
        "    time.sleep(600)\n"
    )
    launcher = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "flwr")], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert launcher.stdout is not None and launcher.stdout.readline().strip() == "READY"
    from lsc4rec.simulations.launch.flower import descendants

    family = descendants(launcher.pid)
    assert family, "the SuperLink did not start"
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 30
    while any(running(pid) for pid in family) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in family if running(pid)]
    assert not left, f"processes left running after SIGTERM: {left}"


@pytest.mark.slow
def test_the_whole_system_runs_under_real_flower(tmp_path: Path) -> None:
    # `make run`'s job (conf/system/whole.yaml) at tiny size through the real path: `flwr run` on a simulation
    # SuperLink, Ray SuperNodes, the candidate service over gRPC between them.
    from conftest import PATTERN_RUN, WHOLE_TINY, write_pattern_text

    data = write_pattern_dataset(tmp_path / "pattern.txt", num_users=160, num_items=40, seed=2)
    write_pattern_text(data, 40)
    command = [
        sys.executable,
        "-m",
        "lsc4rec.simulations.federated",
        "system=whole",
        *PATTERN_RUN,
        *WHOLE_TINY,
        f"data.path={data}",
        "federated.rounds=2",
        "federated.replay_interactions=2",
        "llm.train.epochs=2",
        "federated.num_supernodes=2",
        "federated.launch_timeout=540",
        f"output_dir={tmp_path}",
        "run_name=whole",
    ]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    rows = json.loads((tmp_path / "whole" / "metrics.json").read_text())["rounds"]
    assert result["failures"] == 0 and len(rows) == 2
    # Every part acted across real processes: the service answered the nodes over gRPC, the nodes trained on
    # its lists, the codebook moved, the catalogue's text reached both nodes once.
    for row in rows:
        service = row["collaboration"]["service"]
        assert service["PositionCandidatesForUsers"]["calls"] > 0
        assert service["RecommendForUsers"]["calls"] > 0
        assert row["train"]["rerank-positions"] > 0 and row["train"]["valid-replies"] == 2
    assert result["codebook"]["version"] >= 1
    assert result["item_text"]["bytes_sent"] == 2 * result["item_text"]["record_bytes"] > 0
    assert len(result["final_table"]) == 6
    # Learned: a random ranking of 40 items gives NDCG@10 about 0.13.
    assert result["test"]["full"]["NDCG@10"] > 0.3, result["test"]


def test_a_kill_during_the_superlinks_cleanup_waits_until_the_cleanup_ends(tmp_path: Path) -> None:
    # A second kill (or Ctrl-C) while the launcher stops the SuperLink, its simulation and Ray would end the
    # process half way, leaving the simulation running on every core: the cleanup holds the signal.
    import signal

    marker = tmp_path / "cleanup-finished"
    script = (
        "import os, signal, sys, time, pathlib\n"
        "from lsc4rec.simulations.launch.flower import _signals_held\n"
        "with _signals_held():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.3)\n"
        "    pathlib.Path(sys.argv[1]).write_text('done')\n"
        "print('survived the signal', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(marker)], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert marker.read_text() == "done"  # the block ran to its end
    assert done.returncode == -signal.SIGTERM  # then the held signal ended the process, as asked
    assert "survived" not in done.stdout
