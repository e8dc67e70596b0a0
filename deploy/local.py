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
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, suppress
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUIET_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
}


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def executable(name: str) -> str:
    """A Flower executable from this interpreter's environment (the project venv)."""
    candidate = Path(sys.executable).with_name(name)
    if not candidate.exists():
        raise SystemExit(
            f"{name} not found next to {sys.executable}: run with the project's .venv/bin/python"
        )
    return str(candidate)


def wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    """Block until something listens on ``port``; fail with the log tail if the process dies first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{log.stem} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{log.stem} did not listen on port {port} within {seconds:.0f} s")


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
    env = {**os.environ, **QUIET_ENV, "FLWR_HOME": str(home)}
    # SuperLink and SuperNodes start further Flower executables (flower-superexec, flwr-clientapp) by name.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    with ExitStack() as stack:
        superlink = start(
            [
                executable("flower-superlink"),
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
                    executable("flower-supernode"),
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
        command = [executable("flwr"), "run", str(REPO), "local-deployment", "--stream"]
        if run_config:
            command += ["--run-config", run_config]
        started = time.perf_counter()
        try:
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
            output = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            output = (
                exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            )
        (workdir / "flwr-run.log").write_text(output)
        match = re.search(r"run[ _-]?(?:id)?\D{0,3}(\d{3,})", output, flags=re.IGNORECASE)
        run_id = int(match.group(1)) if match else None
        status = "unknown (no run id in the flwr run output)"
        if run_id is not None:
            listing = subprocess.run(
                [executable("flwr"), "ls", "local-deployment", "--run-id", str(run_id), "--format", "json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            try:
                status = str(json.loads(listing.stdout)["runs"][0]["status"])
            except (json.JSONDecodeError, KeyError, IndexError):
                status = f"unreadable: {listing.stdout[-300:]} {listing.stderr[-300:]}"
        return {
            "run_id": run_id,
            "status": status,
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
