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

from lsc4rec.argument_types import positive_float, positive_int
from lsc4rec.simulations.launch.flower import (
    FlowerRun,
    descendants,
    flower_env,
    flower_executable,
    free_port,
    submit_and_wait,
    wait_for_port,
)

REPO = Path(__file__).resolve().parents[1]

#: glibc gives each thread that allocates its own 64 MiB malloc arena; a SuperNode's gRPC threads pass every
#: round's messages and node context (tens of MB) through several, and their freed space stays resident
#: (the soak measured SuperNodes growing round after round in such arenas). Two arenas bound that; a value
#: already in the environment wins.
SUPERNODE_MALLOC_ARENAS = "2"


def start(command: list[str], log: Path, env: dict[str, str], stack: ExitStack) -> subprocess.Popen:
    """Start ``command`` in its own process group with output appended to ``log``; stop the group on exit."""
    handle = stack.enter_context(open(log, "a"))  # noqa: SIM115 - closed by the ExitStack
    process = subprocess.Popen(
        command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )

    def stop() -> None:
        if process.poll() is not None:
            return
        # Flower's executor starts a run's ServerApp / ClientApp in a session of its own: find them first.
        family = descendants(process.pid)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        for pid in family:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    stack.callback(stop)
    return process


class LocalDeployment:
    """A SuperLink and N SuperNodes on loopback whose processes can be killed and started again.

    Use as a context manager: leaving it stops every process it started. SuperNode ``i`` always hosts shard
    ``i`` of ``N``; a restarted SuperLink keeps its port and its state database, as after a host reboot.
    """

    def __init__(self, workdir: Path, supernodes: int) -> None:
        """Prepare ``workdir`` (logs, state database, a private ``FLWR_HOME``) for ``supernodes`` nodes."""
        self.workdir = workdir
        self.supernodes = supernodes
        workdir.mkdir(parents=True, exist_ok=True)
        home = workdir / "flwr-home"
        home.mkdir(exist_ok=True)
        self.port = free_port()
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "local-deployment"\n\n'
            f'[superlink.local-deployment]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        self.env = flower_env(home)
        self.superlink: subprocess.Popen | None = None
        self.nodes: dict[int, subprocess.Popen] = {}
        self._stack = ExitStack()

    def __enter__(self) -> LocalDeployment:
        self._stack.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(None, None, None)

    def start_superlink(self) -> None:
        """Start the SuperLink (insecure, loopback, runtime installs off) and wait until it listens."""
        log = self.workdir / "superlink.log"
        self.superlink = start(
            [
                flower_executable("flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--database",
                str(self.workdir / "state.db"),
            ],
            log,
            self.env,
            self._stack,
        )
        wait_for_port(self.port, self.superlink, log)

    def start_supernode(self, index: int) -> None:
        """Start the SuperNode hosting shard ``index`` and wait until it listens."""
        node_port = free_port()
        log = self.workdir / f"supernode-{index}.log"
        node = start(
            [
                flower_executable("flower-supernode"),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--port",
                str(node_port),
                "--node-config",
                f"partition-id={index} num-partitions={self.supernodes}",
            ],
            log,
            {"MALLOC_ARENA_MAX": SUPERNODE_MALLOC_ARENAS, **self.env},
            self._stack,
        )
        wait_for_port(node_port, node, log)
        self.nodes[index] = node

    def start_all(self) -> None:
        """Start the SuperLink, then every SuperNode."""
        self.start_superlink()
        for index in range(self.supernodes):
            self.start_supernode(index)

    def kill_supernode(self, index: int) -> None:
        """SIGKILL SuperNode ``index`` and the ClientApp it runs (its process group), as a power cut would."""
        kill_group(self.nodes.pop(index))

    def kill_superlink(self) -> None:
        """SIGKILL the SuperLink and everything it started (ServerApp included), as a host crash would."""
        assert self.superlink is not None, "the SuperLink is not running"
        kill_group(self.superlink)
        self.superlink = None

    def run(self, run_config: str, timeout: float) -> FlowerRun:
        """Submit this repository's app with ``flwr run --stream``; wait for it; return its final status."""
        return submit_and_wait(
            REPO, "local-deployment", self.env, timeout, ["--run-config", run_config] if run_config else []
        )


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL ``process`` with its process group and every descendant that left the group; reap it."""
    family = descendants(process.pid)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in family:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)


def deploy(supernodes: int, run_config: str, workdir: Path, timeout: float) -> dict:
    """Run the app on a fresh local deployment; return ``{"run_id", "status", ...}``."""
    with LocalDeployment(workdir, supernodes) as deployment:
        deployment.start_all()
        started = time.perf_counter()
        run = deployment.run(run_config, timeout)
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
    parser.add_argument("--supernodes", type=positive_int, default=2)
    parser.add_argument("--run-config", default="", help="passed to flwr run --run-config")
    parser.add_argument("--workdir", type=Path, default=None, help="logs and state (default: a new temp dir)")
    parser.add_argument(
        "--timeout", type=positive_float, default=1200.0, help="seconds before the run counts as hung"
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lsc4rec-deploy-"))
    result = deploy(args.supernodes, args.run_config, workdir, args.timeout)
    print("RESULT " + json.dumps(result), flush=True)
    sys.exit(0 if result["status"] == "finished:completed" else 1)


if __name__ == "__main__":
    main()
