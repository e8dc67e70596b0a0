"""Launch the Flower app with ``flwr run`` on a simulation SuperLink this process owns, and report honestly.

``flwr run --stream`` exits 0 even when the run fails, and the managed ``:local:`` SuperLink outlives the
command. So this starts its own ``flower-superlink --simulation`` (known PID, private ``FLWR_HOME``, runtime
dependency installation off), submits the run, waits for it under a timeout, reads the run's status with
``flwr ls --format json`` and stops everything it started.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

QUIET_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
}


@dataclass
class FlowerRun:
    """Outcome of one ``flwr run``: its id, final status and combined log."""

    run_id: int | None
    status: str
    log: str

    @property
    def ok(self) -> bool:
        """True when the SuperLink reports the run as completed."""
        return self.status == "finished:completed"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bin(name: str) -> str:
    # Prefer the executables of this interpreter's environment (the venv), then PATH.
    candidate = Path(sys.executable).with_name(name)
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH; is flwr installed?")
    return found


def run_config_string(values: Mapping[str, object]) -> str:
    """Render a run config for ``--run-config`` (TOML values: strings quoted, booleans lower-case)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            rendered = str(value).lower()
        elif isinstance(value, int | float):
            rendered = repr(value)
        else:
            rendered = json.dumps(str(value))
        parts.append(f"{key}={rendered}")
    return " ".join(parts)


@contextmanager
def simulation_superlink(flwr_home: Path, env: dict[str, str]) -> Iterator[str]:
    """Run a private simulation SuperLink; yield the connection name configured for it in ``flwr_home``."""
    port = _free_port()
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "lsc4rec"\n\n'
        f'[superlink.lsc4rec]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    log_path = flwr_home / "superlink.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [
                _bin("flower-superlink"),
                "--insecure",
                "--simulation",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"flower-superlink exited with {process.returncode}: {log_path.read_text()[-2000:]}"
                )
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            raise TimeoutError(
                f"flower-superlink did not listen on port {port} within 60 s (log: {log_path})"
            )
        yield "lsc4rec"
    finally:
        # The SuperLink's children (SuperExec, simulation, Ray) share its session: stop the whole group.
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def flwr_run(
    app_dir: Path,
    run_config: Mapping[str, object],
    num_supernodes: int,
    timeout: float,
    flwr_home: Path | None = None,
) -> FlowerRun:
    """``flwr run`` the app in ``app_dir`` on a private simulation SuperLink; return its final status."""
    home = flwr_home or Path(tempfile.mkdtemp(prefix="lsc4rec-flwr-"))
    env = {**os.environ, **QUIET_ENV, "FLWR_HOME": str(home)}
    # SuperLink and SuperNodes start further Flower executables (flower-superexec, flwr-clientapp) by name.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    with simulation_superlink(home, env) as connection:
        command = [
            _bin("flwr"),
            "run",
            str(app_dir),
            connection,
            "--stream",
            "--run-config",
            run_config_string(run_config),
            "--federation-config",
            f"num-supernodes={num_supernodes} client-resources-num-cpus=1",
        ]
        logger.info("launching: %s", " ".join(command))
        try:
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
            output = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            output = (
                (exc.stdout or b"").decode(errors="replace")
                if isinstance(exc.stdout, bytes)
                else (exc.stdout or "")
            )
            return FlowerRun(None, f"timed out after {timeout:.0f} s", output)
        match = re.search(r"run[ _-]?(?:id)?\D{0,3}(\d{3,})", output, flags=re.IGNORECASE)
        run_id = int(match.group(1)) if match else None
        status = "unknown"
        if run_id is not None:
            listing = subprocess.run(
                [_bin("flwr"), "ls", connection, "--run-id", str(run_id), "--format", "json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            try:
                status = str(json.loads(listing.stdout)["runs"][0]["status"])
            except (json.JSONDecodeError, KeyError, IndexError):
                status = f"unreadable status: {listing.stdout[-500:]} {listing.stderr[-500:]}"
        return FlowerRun(run_id, status, output)
