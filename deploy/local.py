"""Real local deployment: one ``flower-superlink`` and N ``flower-supernode`` processes on loopback.

    python deploy/local.py --supernodes 2 --run-config 'overrides="federated.rounds=2"'

Starts a SuperLink (insecure, loopback only, runtime dependency installation off) and N SuperNodes, each
hosting shard ``i`` of ``N`` (``--node-config "partition-id=i num-partitions=N"``), runs this repository's app
with ``flwr run``, waits for the run's final status, stops every process it started (also on Ctrl-C or error)
and exits 0 only when the run completed. Logs of every process land in ``--workdir``. Loopback only and
insecure: real devices need TLS and SuperNode authentication.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, suppress
from pathlib import Path

from lsc4rec.simulations.launch.flower import (
    flower_env,
    flower_executable,
    free_port,
    submit_and_wait,
    wait_for_port,
)

REPO = Path(__file__).resolve().parents[1]


def start(command: list[str], log: Path, env: dict[str, str], stack: ExitStack) -> subprocess.Popen:
    """Start ``command`` in its own process group with output to ``log``; stop the group on exit."""
    handle = stack.enter_context(open(log, "w"))  # noqa: SIM115 - closed by the ExitStack
    process = subprocess.Popen(
        command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )

    def stop() -> None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    stack.callback(stop)
    return process


def deploy(supernodes: int, run_config: str, workdir: Path, timeout: float) -> dict:
    """Run the app on a fresh local deployment; return ``{"run_id", "status", ...}``."""
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "flwr-home"
    home.mkdir(exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local-deployment"\n\n'
        f'[superlink.local-deployment]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = flower_env(home)
    with ExitStack() as stack:
        superlink = start(
            [
                flower_executable("flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--database",
                str(workdir / "state.db"),
            ],
            workdir / "superlink.log",
            env,
            stack,
        )
        wait_for_port(port, superlink, workdir / "superlink.log")
        for index in range(supernodes):
            node_port = free_port()
            node = start(
                [
                    flower_executable("flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--port",
                    str(node_port),
                    "--node-config",
                    f"partition-id={index} num-partitions={supernodes}",
                ],
                workdir / f"supernode-{index}.log",
                env,
                stack,
            )
            wait_for_port(node_port, node, workdir / f"supernode-{index}.log")
        started = time.perf_counter()
        run = submit_and_wait(
            REPO, "local-deployment", env, timeout, ["--run-config", run_config] if run_config else []
        )
        (workdir / "flwr-run.log").write_text(run.log)
        return {
            "run_id": run.run_id,
            "status": run.status,
            "supernodes": supernodes,
            "seconds": round(time.perf_counter() - started, 1),
            "workdir": str(workdir),
        }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--supernodes", type=int, default=2)
    parser.add_argument("--run-config", default="", help="passed to flwr run --run-config")
    parser.add_argument("--workdir", type=Path, default=None, help="logs and state (default: a new temp dir)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds before the run counts as hung")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lsc4rec-deploy-"))
    result = deploy(args.supernodes, args.run_config, workdir, args.timeout)
    print("RESULT " + json.dumps(result), flush=True)
    sys.exit(0 if result["status"] == "finished:completed" else 1)


if __name__ == "__main__":
    main()
